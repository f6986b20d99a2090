"""Do the fine-tuning defaults carry over to molecules the foundation never saw?

    python benchmarks/transfer.py                  # train every run (two side by side), then report
    python benchmarks/transfer.py --reuse          # keep the finished runs, train the missing ones, report
    python benchmarks/transfer.py --report_only    # report the finished runs, train nothing
    python benchmarks/transfer.py --datasets acac --variants mmea mmea-reference --seeds 123 124

MMEA's defaults that differ from the reference code's (the ``1 + s`` gates, the small
normal start of the scalar branch, the stage-two optimiser reset and warm-up) were chosen
on the aspirin validation set of protocol cpu100. This benchmark runs the same command,
the anchors' (``benchmarks/protocols.py``: 100 epochs, stage two from epoch 80, one thread
per run), on two molecules outside the shared foundation's pretraining set (nine rMD17
molecules), in the shape of the aspirin protocol: 100 frames, half of them for validation.

- ``acac``: acetylacetone (H, C, O), every 5th frame of the BOTNet ``train_300K.xyz``;
  scored on ``test_MD_300K.xyz`` and, further from the training data, ``test_MD_600K.xyz``
  (650 frames each).
- ``3bpa``: 3-(benzyloxy)pyridin-2-amine (H, C, N, O), every 5th frame of ``train_300K.xyz``;
  the published 3BPA test files are not in the shared data, so it is scored on the frames
  of ``train_mixedT.xyz`` (300, 600 and 1200 K) that ``train_300K.xyz`` does not hold.

Variants (``VARIANTS``): MMEA with this package's defaults, MMEA with the reference code's
settings (``exp`` gates, torch's init of the scalar branch, no stage-two reset or
warm-up), ELoRA and full fine-tuning with this package's defaults. The derived data files
and the work folders go to ``benchmarks/results/transfer/`` (ignored by git); the report,
``TRANSFER.md`` and ``results.json``, is committed.
"""
import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import ase.io
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare_methods import (  # noqa: E402
    DEFAULT_FOUNDATION,
    PROTOCOLS,
    ErrorMetrics,
    RunFiles,
    RunRecord,
    absolute_path,
    child_environment,
    default_data_path,
    error_metrics,
    format_spread,
    markdown_grid,
    predictions_of,
    read_trainable_parameters,
    reference_labels,
    results_lines,
    run_training,
    split_reusable,
    spread,
    train_side_by_side,
)
from benchmarks.protocols import ANCHOR_COMMAND, changed, command_flags  # noqa: E402
from mace.core.torch_setup import keep_freed_memory  # noqa: E402
from mace.data.configuration import Configuration, load_from_xyz  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "transfer"
KEYS = {"energy_key": "energy", "forces_key": "forces"}  # the BOTNet files' keys
STRIDE = 5  # every 5th frame of a 500-frame training file: 100 frames, as rMD17's train.xyz
CPU100 = PROTOCOLS["cpu100"]  # the anchors' run: a stage two (two models), one thread, two runs at a time


@dataclass(frozen=True)
class Dataset:
    """A molecule outside the pretraining set: where its frames come from and what scores it."""

    label: str
    train_source: str
    test_sources: Tuple[Tuple[str, str], ...]  # (test set name, file below the data root)
    exclude_train_frames: bool = False  # drop test frames that are also in the training source


DATASETS: Dict[str, Dataset] = {
    "acac": Dataset(
        "acetylacetone", "dataset/dataset_acac/train_300K.xyz",
        (("MD 300 K", "dataset/dataset_acac/test_MD_300K.xyz"), ("MD 600 K", "dataset/dataset_acac/test_MD_600K.xyz")),
    ),
    "3bpa": Dataset(
        "3BPA", "dataset/dataset_3BPA/train_300K.xyz",
        (("mixed T, not in train_300K", "dataset/dataset_3BPA/train_mixedT.xyz"),), exclude_train_frames=True,
    ),
}


@dataclass(frozen=True)
class Variant:
    """What a run fine-tunes with: the adapter and the flags that differ from this package's defaults."""

    label: str
    adapter: str
    flags: Tuple[str, ...] = ()


VARIANTS: Dict[str, Variant] = {
    "mmea": Variant("MMEA, this package's defaults", "mmea"),
    "mmea-reference": Variant(
        "MMEA, the reference code's settings", "mmea",
        ("--mmea_phi=exp", "--mmea_init=default", "--mmea_input_norm=none", "--swa_reset_optimizer=False",
         "--swa_warmup_epochs=0"),
    ),
    "elora": Variant("ELoRA, this package's defaults", "elora"),
    "none": Variant("full fine-tuning, this package's defaults", "none"),
}


def positions_key(atoms: ase.Atoms) -> bytes:
    """Identifies a frame by its rounded positions, to find the same frame in two files."""
    return np.round(atoms.positions, 6).tobytes()


class DataFiles(NamedTuple):
    """One molecule's derived files: training frames and (name, file) of each test set, and their sizes."""

    train: Path
    tests: List[Tuple[str, Path]]
    counts: Dict[str, int]


def write_data_files(name: str, dataset: Dataset) -> DataFiles:
    """The 100-frame training file and the test files of ``dataset``, in RESULTS/data/ (ignored by git)."""
    folder = RESULTS / "data"
    folder.mkdir(parents=True, exist_ok=True)
    source = ase.io.read(default_data_path(dataset.train_source), index=":")
    train = folder / f"{name}_train.xyz"
    ase.io.write(train, source[::STRIDE])
    counts = {"train": len(source[::STRIDE])}
    in_train = {positions_key(atoms) for atoms in source} if dataset.exclude_train_frames else set()
    tests = []
    for index, (test_name, relative) in enumerate(dataset.test_sources):
        frames = [atoms for atoms in ase.io.read(default_data_path(relative), index=":")
                  if positions_key(atoms) not in in_train]
        tests.append((test_name, folder / f"{name}_test_{index}.xyz"))
        ase.io.write(tests[-1][1], frames)
        counts[test_name] = len(frames)
    return DataFiles(train, tests, counts)


def run_command(name: str, variant: Variant, seed: int, train: Path, test: Path) -> List[str]:
    """The anchors' command on this molecule's files, with ``variant``'s adapter and flags."""
    flags = changed(
        ANCHOR_COMMAND, name=name, seed=str(seed), train_file=absolute_path(train), test_file=absolute_path(test),
        foundation_model=absolute_path(default_data_path(DEFAULT_FOUNDATION)), **KEYS,
    )
    return [sys.executable, "-m", "mace.cli.run_train", *command_flags(flags), f"--adapter={variant.adapter}",
            *variant.flags]


class Run(NamedTuple):
    """One training run: a variant fine-tuned on one molecule with one seed."""

    dataset: str
    variant: str
    seed: int

    @property
    def files(self) -> RunFiles:
        """run_train's outputs, in RESULTS/<dataset>/<variant>/seed-<seed>/."""
        return RunFiles(RESULTS / self.dataset / self.variant / f"seed-{self.seed}", self.dataset, self.seed)

    def __str__(self) -> str:
        return f"[{self.dataset} {self.variant} seed {self.seed}]"


def train_runs(runs: Sequence[Run], data: Mapping[str, DataFiles], reuse: bool, report_only: bool) -> Dict[Run, RunRecord]:
    """Every run's record: with ``reuse`` the finished runs are kept, the others train two at a time;
    with ``report_only`` only the finished runs are returned and nothing trains."""
    records, to_train = split_reusable(runs, lambda run: run.files, CPU100, reuse or report_only)
    if report_only:
        return records
    environment = child_environment(CPU100)

    def train(run: Run) -> RunRecord:
        files = data[run.dataset]
        command = run_command(run.dataset, VARIANTS[run.variant], run.seed, files.train, files.tests[0][1])
        print(f"{run} training in {run.files.work_dir}", flush=True)
        record = run_training(run.variant, command, run.files.work_dir, environment)
        print(f"{run} exit status {record.returncode} after {record.wall_s / 60:.1f} min", flush=True)
        return record

    records.update(train_side_by_side(to_train, train, CPU100.jobs))
    return {run: records[run] for run in runs}


def stored_errors(model: Path, test_name: str, configs: Sequence[Configuration]) -> ErrorMetrics:
    """Test errors of ``model`` on one test set, kept beside it until the model file changes."""
    cache = model.with_name(f"{model.stem}_transfer_errors.json")
    stamp = model.stat().st_mtime_ns
    stored = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    if stored.get("model_mtime_ns") != stamp:
        stored = {"model_mtime_ns": stamp, "errors": {}}
    if test_name not in stored["errors"]:
        energies, forces = predictions_of(model, configs, "cpu")
        reference_energies, reference_forces = reference_labels(configs)
        stored["errors"][test_name] = asdict(error_metrics(energies, reference_energies, forces, reference_forces))
        cache.write_text(json.dumps(stored, indent=1) + "\n", encoding="utf-8")
    return ErrorMetrics(**stored["errors"][test_name])


def score_runs(
    records: Mapping[Run, RunRecord], data: Mapping[str, DataFiles]
) -> List[Dict[str, object]]:
    """One entry per run: costs, trainable count and the final model's errors on every test set."""
    configs = {
        (name, test_name): load_from_xyz(str(path), **KEYS)[1]
        for name in {run.dataset for run in records} for test_name, path in data[name].tests
    }
    scores = []
    for run, record in records.items():
        entry: Dict[str, object] = {**run._asdict(), **asdict(record), "errors": {}}
        if record.returncode == 0:
            entry["trainable"] = read_trainable_parameters(results_lines(run.files))
            model = run.files.swa_model
            entry["errors"] = {test_name: asdict(stored_errors(model, test_name, configs[(run.dataset, test_name)]))
                               for test_name, _ in data[run.dataset].tests}
            print(f"{run} scored", flush=True)
        scores.append(entry)
    return scores


def summary_rows(scores: Sequence[Dict[str, object]], dataset: str, test_names: Sequence[str]) -> List[List[str]]:
    """Per variant: the mean ± half-range over its finished seeds of MAE E and F on each test set."""
    rows = []
    for variant, spec in VARIANTS.items():
        finished = [s for s in scores if s["dataset"] == dataset and s["variant"] == variant and s["errors"]]
        if not finished:
            continue
        cells = [spec.label, " / ".join(sorted({f"{s['trainable']:,}" for s in finished})), str(len(finished))]
        for test_name in test_names:
            for metric in ("mae_e", "mae_f"):
                cells.append(format_spread(spread([s["errors"][test_name][metric] for s in finished]), 1))
        cells.append(format_spread(spread([s["wall_s"] / 60.0 for s in finished]), 1))
        rows.append(cells)
    return rows


def per_run_rows(scores: Sequence[Dict[str, object]], test_names: Mapping[str, Sequence[str]]) -> List[List[str]]:
    """One row per run, failed ones included: its test MAE E / F on each test set and its costs."""
    rows = []
    for s in scores:
        errors = "; ".join(f"{name}: {s['errors'][name]['mae_e']:.1f} / {s['errors'][name]['mae_f']:.1f}"
                           for name in test_names[s["dataset"]]) if s["errors"] else f"failed (exit {s['returncode']})"
        rows.append([str(s["dataset"]), VARIANTS[s["variant"]].label, str(s["seed"]), errors,
                     f"{s['wall_s'] / 60:.1f}", f"{s['peak_rss_mb']:.0f}"])
    return rows


def report(scores: Sequence[Dict[str, object]], data: Mapping[str, DataFiles], command_line: str) -> str:
    """TRANSFER.md: one table per molecule, then every run."""
    test_names = {name: [test_name for test_name, _ in files.tests] for name, files in data.items()}
    lines = [
        "# Fine-tuning defaults on molecules outside the pretraining set (benchmarks/transfer.py)",
        "",
        f"Command: `{command_line}`. Every run is the anchors' cpu100 command (100 epochs, stage two "
        "from epoch 80, batches of 5, one thread, float64) with the molecule's files and the "
        "variant's flags; the stage-two model is scored. Test MAE E in meV, F in meV/A, as "
        "mean ± half-range over the seeds.",
        "",
        markdown_grid(["variant", "run_train flags added"],
                      [[spec.label, " ".join([f"`--adapter={spec.adapter}`", *(f"`{flag}`" for flag in spec.flags)])]
                       for spec in VARIANTS.values()]),
    ]
    for name, files in data.items():
        dataset = DATASETS[name]
        header = ["variant", "trainable", "seeds"]
        for test_name in test_names[name]:
            header += [f"{test_name}: E", f"{test_name}: F"]
        header.append("wall (min)")
        counts = ", ".join(f"{test_name} ({files.counts[test_name]} frames)" for test_name in test_names[name])
        lines += [
            "", f"## {dataset.label} (`{name}`)", "",
            f"Training: every {STRIDE}th frame of `{dataset.train_source}` ({files.counts['train']} frames, "
            f"half for validation); test: {counts}.", "",
            markdown_grid(header, summary_rows(scores, name, test_names[name])),
        ]
    lines += ["", "## Every run", "",
              markdown_grid(["molecule", "variant", "seed", "test MAE E / F", "wall (min)", "peak RSS (MB)"],
                            per_run_rows(scores, test_names)), ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python benchmarks/transfer.py", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[123, 124, 125])
    parser.add_argument("--reuse", action="store_true",
                        help="keep the finished runs in the work folders; train only the missing ones")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: report the finished runs found in the work folders")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    keep_freed_memory()  # scoring allocates the same edge tensors batch after batch
    data = {name: write_data_files(name, DATASETS[name]) for name in args.datasets}
    runs = [Run(name, variant, seed) for name in args.datasets for seed in args.seeds for variant in args.variants]
    records = train_runs(runs, data, args.reuse, args.report_only)
    if not records:
        raise SystemExit("no finished run to report")
    scores = score_runs(records, data)
    command_line = " ".join(["python", "benchmarks/transfer.py", *argv])
    text = report(scores, data, command_line)
    (RESULTS / "TRANSFER.md").write_text(text, encoding="utf-8")
    (RESULTS / "results.json").write_text(json.dumps({"command": command_line, "runs": scores}, indent=1) + "\n",
                                          encoding="utf-8")
    print(text)
    failed = [str(run) for run, record in records.items() if record.returncode != 0]
    if failed:
        print(f"failed: {', '.join(failed)}; see stdout.txt in their work folders", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
