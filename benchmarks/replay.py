"""What replaying pretraining data still buys MMEA: forgetting against accuracy on new data.

    python benchmarks/replay.py                 # train both runs (side by side), then report
    python benchmarks/replay.py --reuse         # report again from the finished runs

Two MMEA fine-tunes of the shared foundation on the aspirin data of protocol cpu100 (the
anchors' command, shortened to ``--epochs`` with stage two over the last fifth), which
differ only in replay:

- ``kept``: no replay, ``--keep_foundation_head True``: its file carries the unchanged
  foundation as head ``foundation`` beside the fine-tuned ``Default``;
- ``replay``: ``--multiheads_finetuning True`` with a replay file of the first frames of
  each pretraining molecule's ``train.xyz`` (frames the foundation was trained on), and
  ``--force_mh_ft_lr True``, so that both runs share the learning rate and EMA.

Both use ``--E0s estimated`` and ``--loss universal`` (replay fine-tuning requires the first
and sets the second) and ``--atomic_numbers [1, 6, 7, 8]``, the foundation's elements, so
every head predicts every molecule. Each head is then scored on the aspirin test set and on
held-out frames of the nine pretraining molecules (``test.xyz`` frames the pretraining never
used, see the foundation's README). Forgetting is the pretraining-molecule error of a head
against the foundation's own. The report goes to ``benchmarks/results/replay/REPLAY.md``.
"""
import argparse
import dataclasses
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import ase.io
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare_methods import (  # noqa: E402
    ErrorMetrics,
    PROTOCOLS,
    _below_repro_data,
    absolute_path,
    child_environment,
    default_data_path,
    error_metrics,
    markdown_grid,
    run_training,
    train_side_by_side,
)
from benchmarks.protocols import ANCHOR_COMMAND, SHARED_FOUNDATION, changed, command_flags  # noqa: E402
from mace.data.configuration import Configuration, load_from_xyz  # noqa: E402
from mace.modules.loading import load_model  # noqa: E402
from mace.modules.predict import predict  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "replay"
PRETRAINING_MOLECULES = (
    "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene", "paracetamol", "salicylic", "toluene", "uracil",
)
RMD17 = "dataset/dataset_rmd17"
# test.xyz frames of each pretraining molecule that pretraining used neither to train (the
# first 450) nor to validate (900-919).
HELD_OUT = slice(920, 940)
KEYS = {"energy_key": "REF_energy", "forces_key": "REF_forces"}
# (label, run folder, head) of each scored model; run None: the foundation file itself.
SCORED: Tuple[Tuple[str, Optional[str], Optional[str]], ...] = (
    ("foundation file (zero-shot)", None, None),
    ("no replay: head foundation (--keep_foundation_head)", "kept", "foundation"),
    ("no replay: fine-tuned head", "kept", "Default"),
    ("replay: head pt_head", "replay", "pt_head"),
    ("replay: fine-tuned head", "replay", "Default"),
)


def data_file(command_path: str) -> Path:
    """A file the reference command names (``repro_data/...``), where the data is here."""
    return default_data_path(_below_repro_data(command_path))


def molecule_file(molecule: str, split: str) -> Path:
    return default_data_path(f"{RMD17}/revised_{molecule}/{split}.xyz")


def write_replay_file(path: Path, frames_per_molecule: int) -> int:
    """The replay set: the first frames of each pretraining molecule's train.xyz."""
    frames = [atoms for molecule in PRETRAINING_MOLECULES
              for atoms in ase.io.read(molecule_file(molecule, "train"), index=f":{frames_per_molecule}")]
    ase.io.write(path, frames)
    return len(frames)


def run_command(epochs: int, replay_file: Optional[Path]) -> List[str]:
    """The anchors' command for ``epochs`` epochs, stage two over the last fifth, with replay or the kept foundation head."""
    flags = changed(
        ANCHOR_COMMAND, name="replay" if replay_file else "kept", E0s="estimated", loss="universal",
        max_num_epochs=str(epochs), start_swa=str(epochs - epochs // 5),
        train_file=absolute_path(data_file(ANCHOR_COMMAND["train_file"])),
        test_file=absolute_path(data_file(ANCHOR_COMMAND["test_file"])),
        foundation_model=absolute_path(data_file(SHARED_FOUNDATION)),
    )
    extra = ["--adapter=mmea", "--atomic_numbers=[1, 6, 7, 8]"]
    if replay_file is None:
        extra.append("--keep_foundation_head=True")
    else:
        extra += ["--multiheads_finetuning=True", f"--pt_train_file={absolute_path(replay_file)}", "--force_mh_ft_lr=True"]
    return [sys.executable, "-m", "mace.cli.run_train", *command_flags(flags), *extra]


def train_both(epochs: int, frames_per_molecule: int) -> Dict[str, dict]:
    """Both runs side by side, one thread each; their records (return code, wall, peak memory)."""
    replay_file = RESULTS / "data" / "replay_frames.xyz"  # derived from the shared data: in an ignored folder
    replay_file.parent.mkdir(parents=True, exist_ok=True)
    count = write_replay_file(replay_file, frames_per_molecule)
    print(f"replay set: {count} configurations in {replay_file}", flush=True)
    cpu100 = PROTOCOLS["cpu100"]
    environment = child_environment(cpu100)
    commands = {"kept": run_command(epochs, None), "replay": run_command(epochs, replay_file)}
    records = train_side_by_side(
        list(commands), lambda name: run_training(name, commands[name], RESULTS / name, environment), cpu100.jobs
    )
    return {name: asdict(record) for name, record in records.items()}


def held_out_configurations() -> List[Configuration]:
    """The held-out frames of every pretraining molecule, with the molecule as config_type."""
    configs: List[Configuration] = []
    for molecule in PRETRAINING_MOLECULES:
        _, frames = load_from_xyz(str(molecule_file(molecule, "test")), **KEYS)
        configs.extend(dataclasses.replace(frame, config_type=molecule) for frame in frames[HELD_OUT])
    return configs


def aspirin_test_configurations() -> List[Configuration]:
    _, configs = load_from_xyz(str(data_file(ANCHOR_COMMAND["test_file"])), **KEYS)
    return configs


def head_errors(
    model: torch.nn.Module, head: Optional[str], configs: Sequence[Configuration], offset_per_molecule: bool = False
) -> ErrorMetrics:
    """MAE/RMSE of ``head`` on ``configs``; ``offset_per_molecule``: each molecule's (config_type's)
    mean energy error removed first, as E0s refitted to that molecule would."""
    predictions = predict(model, configs, head=head)
    energies = np.array([p.energy for p in predictions])
    references = np.array([c.energy for c in configs])
    if offset_per_molecule:
        molecules = np.array([c.config_type for c in configs])
        for molecule in set(molecules):
            chosen = molecules == molecule
            energies[chosen] -= (energies[chosen] - references[chosen]).mean()
    return error_metrics(energies, references, np.concatenate([p.forces for p in predictions]), np.concatenate([c.forces for c in configs]))


def scored_model(run: Optional[str]) -> torch.nn.Module:
    path = data_file(SHARED_FOUNDATION) if run is None else RESULTS / run / f"{run}_swa.model"
    return load_model(path, dtype=torch.float64)


def score_all() -> List[Dict[str, object]]:
    """Errors of every scored head on aspirin and on the held-out pretraining frames."""
    aspirin, pretraining = aspirin_test_configurations(), held_out_configurations()
    rows = []
    for label, run, head in SCORED:
        model = scored_model(run)
        rows.append({"model": label, "aspirin": asdict(head_errors(model, head, aspirin)),
                     "pretraining": asdict(head_errors(model, head, pretraining, offset_per_molecule=True))})
        print(f"scored {label}", flush=True)
    return rows


def report(rows: Sequence[Dict[str, object]], runs: Dict[str, dict], epochs: int, frames_per_molecule: int) -> str:
    foundation_f = rows[0]["pretraining"]["mae_f"]
    table = markdown_grid(
        ["model / head", "aspirin test MAE E (meV)", "aspirin test MAE F (meV/A)",
         "pretraining molecules MAE E, offset per molecule removed (meV)", "pretraining molecules MAE F (meV/A)",
         "F forgetting vs foundation"],
        [[str(row["model"]), f"{row['aspirin']['mae_e']:.1f}", f"{row['aspirin']['mae_f']:.1f}",
          f"{row['pretraining']['mae_e']:.1f}", f"{row['pretraining']['mae_f']:.1f}",
          f"{row['pretraining']['mae_f'] - foundation_f:+.1f}"] for row in rows],
    )
    walls = ", ".join(f"{name} {record['wall_s'] / 60:.1f} min, {record['peak_rss_mb']:.0f} MB"
                      for name, record in runs.items())
    return (
        "# What replay buys MMEA (benchmarks/replay.py)\n\n"
        f"MMEA on rMD17 aspirin (50 training frames), {epochs} epochs, stage two from epoch "
        f"{epochs - epochs // 5}; replay set: the first {frames_per_molecule} frames of each of the nine "
        "pretraining molecules' train.xyz. Scored: the stage-two models on aspirin test.xyz "
        f"(1000 frames) and on held-out frames {HELD_OUT.start}-{HELD_OUT.stop - 1} of each pretraining "
        "molecule's test.xyz (180 frames, never used in pretraining). On the pretraining molecules "
        "each molecule's mean energy error is removed first: the fine-tuned heads carry E0s fitted to "
        "aspirin alone (one composition), which say nothing about other compositions; forces do not "
        "depend on E0s.\n\n"
        f"{table}\n\nRuns (one thread each, side by side): {walls}.\n"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/replay.py", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="epochs per run (stage two over the last fifth)")
    parser.add_argument("--frames_per_molecule", type=int, default=5, help="replayed frames per pretraining molecule")
    parser.add_argument("--reuse", action="store_true", help="score the finished runs again, train nothing")
    args = parser.parse_args(argv)
    runs_file = RESULTS / "runs.json"
    if args.reuse:
        runs = json.loads(runs_file.read_text())
    else:
        runs = train_both(args.epochs, args.frames_per_molecule)
        runs_file.write_text(json.dumps(runs, indent=1) + "\n")
    failed = [name for name, record in runs.items() if record["returncode"] != 0]
    if failed:
        print(f"run(s) failed: {failed}; see {RESULTS}/<run>/stdout.txt", file=sys.stderr)
        return 1
    rows = score_all()
    (RESULTS / "results.json").write_text(json.dumps({"runs": runs, "rows": rows}, indent=1) + "\n")
    text = report(rows, runs, args.epochs, args.frames_per_molecule)
    (RESULTS / "REPLAY.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
