"""End-to-end tests of ``python -m mace.cli.run_train`` on 10 rMD17 aspirin configurations.

Runs happen in-process through ``run_train.main`` (cwd = a temporary folder), except those
of the restart tests: one must SIGKILL a real process, and both compare bitwise with an
uninterrupted run, which only runs in fresh processes are sure to give (TorchScript plans
that earlier tests optimised in this process compute differently in the last bits). Models are tiny (8 channels): the whole
file needs about 30 s of CPU time.
"""
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Set

import ase.io
import numpy as np
import pytest
import torch

from mace.cli import run_train
from mace.data import load_from_xyz
from mace.modules import load_model
from mace.modules.predict import predict
from tests.shared import documented_seed_command

ASPIRIN = Path("repro_data/dataset/dataset_rmd17/revised_aspirin")
TINY_FLAGS = [
    "--model=MACE", "--loss=ef", "--num_channels=8", "--max_L=1", "--correlation=2", "--r_max=4.0",
    "--E0s=average", "--energy_key=REF_energy", "--forces_key=REF_forces", "--valid_fraction=0.5",
    "--batch_size=5", "--valid_batch_size=5", "--eval_interval=1", "--device=cpu",
]
MAIN_RUN_FLAGS = TINY_FLAGS + [
    "--name=tiny", "--train_file=tiny.xyz", "--max_num_epochs=4", "--ema", "--swa", "--start_swa=3",
    "--error_table=TotalMAE", "--test_file=mixed.xyz", "--test_dir=tests",
]
TOTAL_MAE_HEADER = ["config_type", "MAE E / meV", "MAE F / meV / A", "relative F MAE %"]
EVAL_LINE = re.compile(r"INFO: Epoch (\d+): loss=(\S+), MAE_E=\S+ meV, MAE_F=\S+ meV / A, lr=")


def run_main(cwd: Path, argv: Sequence[str]) -> int:
    """Exit code of ``run_train.main(argv)`` run in ``cwd``; restores the global state it changes."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    dtype, threads, previous_cwd = torch.get_default_dtype(), torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(1)
    os.chdir(cwd)
    try:
        run_train.main(list(argv))
    except SystemExit as exit_:
        return exit_.code
    finally:
        os.chdir(previous_cwd)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        for handler in [h for h in handlers if h not in root.handlers]:
            root.addHandler(handler)
        root.setLevel(level)
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    raise AssertionError("run_train.main returned without calling sys.exit")


def write_frames(path: Path, frames: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="session")
def aspirin(shared_dir: Path) -> list:
    """The first 10 training frames of revised aspirin."""
    return ase.io.read(shared_dir / ASPIRIN / "train.xyz", index=":10")


def read_results(folder: Path, tag: str) -> List[dict]:
    return [json.loads(line) for line in (folder / "results" / f"{tag}_train.txt").read_text().splitlines()]


def eval_records(folder: Path, tag: str) -> List[dict]:
    return [record for record in read_results(folder, tag) if record["mode"] == "eval"]


def error_tables(log: str) -> Dict[str, List[List[str]]]:
    """{title: rows (header first)} of every prettytable the log holds."""
    tables: Dict[str, List[List[str]]] = {}
    lines = log.splitlines()
    for index, line in enumerate(lines):
        match = re.search(r"Error-table on (.+):$", line)
        if not match:
            continue
        rows = []
        for row in lines[index + 1:]:
            if not row.startswith(("+", "|")):
                break
            if row.startswith("|"):
                rows.append([cell.strip() for cell in row.strip("|").split("|")])
        tables[match.group(1)] = rows
    return tables


def temporaries(folder: Path) -> List[Path]:
    return list(folder.rglob(".*.tmp"))


# --------------------------------------------------------------------------------------
# One full run (EMA, SWA, test file with two config_types, test folder with two files)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main_run(aspirin: list, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("main_run")
    write_frames(folder / "tiny.xyz", aspirin)
    mixed = [frame.copy() for frame in aspirin[:4]]
    for frame, config_type in zip(mixed, ["eq", "eq", "md", "md"]):
        frame.info["config_type"] = config_type
    write_frames(folder / "mixed.xyz", mixed)
    write_frames(folder / "tests" / "a.xyz", aspirin[4:6])
    write_frames(folder / "tests" / "b.xyz", aspirin[6:9])
    assert run_main(folder, MAIN_RUN_FLAGS) == 0
    return folder


def test_training_lowers_the_validation_loss(main_run: Path) -> None:
    main_stage = [record["loss"] for record in eval_records(main_run, "tiny_run-123") if record["epoch"] < 3]
    assert len(main_stage) == 3
    assert main_stage[-1] < main_stage[0]


def test_results_are_json_lines_of_every_epoch(main_run: Path) -> None:
    records = [r for r in read_results(main_run, "tiny_run-123") if r["mode"] in ("opt", "eval")]
    assert [(r["mode"], r["epoch"]) for r in records] == [(mode, e) for e in range(4) for mode in ("opt", "eval")]
    for record in records:
        assert math.isfinite(record["loss"])
        if record["mode"] == "eval":
            assert {"lr", "mae_e", "mae_f", "rmse_e", "rmse_f", "rel_mae_f"} <= set(record)


def test_results_hold_the_parameter_counts_and_the_final_errors_of_each_model(main_run: Path) -> None:
    """What programs (the benchmark) read instead of parsing the log."""
    records = read_results(main_run, "tiny_run-123")
    counts = [r for r in records if r["mode"] == "parameters"]
    assert counts == [{"mode": "parameters", "adapter": "none", "trainable": counts[0]["trainable"], "total": counts[0]["total"]}]
    assert 0 < counts[0]["trainable"] == counts[0]["total"]
    final = [(r["stage"], r["model"], r["set"]) for r in records if r["mode"] == "final"]
    sets = ["train", "valid", "mixed:eq", "mixed:md", "a", "b"]
    assert final == [("main", "tiny.model", s) for s in sets] + [("swa", "tiny_swa.model", s) for s in sets]
    log = (main_run / "logs" / "tiny_run-123.log").read_text()
    table = error_tables(log)["swa model tiny_swa.model"]
    test_a = next(r for r in records if r["mode"] == "final" and r["stage"] == "swa" and r["set"] == "a")
    row = next(row for row in table if row[0] == "a")
    assert float(row[1]) == pytest.approx(test_a["mae_e"] * 1e3, abs=0.051)
    assert float(row[2]) == pytest.approx(test_a["mae_f"] * 1e3, abs=0.051)


def test_log_has_one_line_per_evaluation_and_the_final_tables(main_run: Path) -> None:
    log = (main_run / "logs" / "tiny_run-123.log").read_text()
    evaluations = EVAL_LINE.findall(log)
    records = eval_records(main_run, "tiny_run-123")
    assert [int(epoch) for epoch, _ in evaluations] == [0, 1, 2, 3]
    for (_, loss), record in zip(evaluations, records):
        assert float(loss) == pytest.approx(record["loss"], abs=1e-4)
    assert "Epoch 3: starting the SWA stage" in log
    tables = error_tables(log)
    assert set(tables) == {"main model tiny.model", "swa model tiny_swa.model"}
    for rows in tables.values():
        assert rows[0] == TOTAL_MAE_HEADER
        assert [row[0] for row in rows[1:]] == ["train", "valid", "mixed:eq", "mixed:md", "a", "b"]
        assert all(float(cell) > 0 for row in rows[1:] for cell in row[1:])
    assert log.rstrip().endswith("INFO: Done")


def test_checkpoints_keep_the_best_main_and_the_latest_swa_epoch(main_run: Path) -> None:
    records = eval_records(main_run, "tiny_run-123")
    best_main = min((r for r in records if r["epoch"] < 3), key=lambda r: r["loss"])["epoch"]
    names = sorted(path.name for path in (main_run / "checkpoints").iterdir())
    assert names == sorted({f"tiny_run-123_epoch-{best_main}.pt", "tiny_run-123_epoch-3_swa.pt"})
    state = torch.load(main_run / "checkpoints" / "tiny_run-123_epoch-3_swa.pt", weights_only=False)
    assert state["epoch"] == 3 and state["ema"] is not None and state["last_valid_loss"] > 0
    assert temporaries(main_run) == []


def test_valid_indices_file_lists_the_held_out_half(main_run: Path) -> None:
    indices = np.loadtxt(main_run / "results" / "tiny_run-123_valid_indices.txt", dtype=int)
    assert indices.shape == (5,)
    assert len(set(indices.tolist())) == 5 and set(indices.tolist()) <= set(range(10))


@pytest.mark.parametrize("model_name, stage_epochs", [("tiny.model", {0, 1, 2}), ("tiny_swa.model", {3})])
def test_model_files_are_the_best_ema_weights_of_their_stage(
    main_run: Path, model_name: str, stage_epochs: Set[int]
) -> None:
    """Reloaded, each model reproduces the validation energy MAE of its stage's best evaluation."""
    model = load_model(main_run / model_name)
    stage = [r for r in eval_records(main_run, "tiny_run-123") if r["epoch"] in stage_epochs]
    best = min(stage, key=lambda r: r["loss"])
    _, configs = load_from_xyz(str(main_run / "tiny.xyz"), energy_key="REF_energy", forces_key="REF_forces")
    indices = np.loadtxt(main_run / "results" / "tiny_run-123_valid_indices.txt", dtype=int)
    valid = [configs[i] for i in indices]
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # graphs in the model's dtype, as eval_configs does
    try:
        predictions = predict(model, valid)
    finally:
        torch.set_default_dtype(dtype)
    errors = np.array([p.energy - c.energy for p, c in zip(predictions, valid)])
    assert float(np.mean(np.abs(errors))) == pytest.approx(best["mae_e"], rel=1e-8)
    assert all(p.forces.shape == (21, 3) and np.isfinite(p.forces).all() for p in predictions)


@pytest.mark.parametrize("name", ["tiny", "tiny_swa"])
def test_each_model_file_has_its_torchscript_file(main_run: Path, name: str) -> None:
    """NAME_compiled.model (upstream's name) is NAME.model compiled: torch.jit.load runs it."""
    model = load_model(main_run / f"{name}.model")
    compiled = torch.jit.load(str(main_run / f"{name}_compiled.model"))
    _, configs = load_from_xyz(str(main_run / "tiny.xyz"), energy_key="REF_energy", forces_key="REF_forces")
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        expected, actual = (predict(m, configs[:3]) for m in (model, compiled))
    finally:
        torch.set_default_dtype(dtype)
    for ours, theirs in zip(expected, actual):
        assert ours.energy == pytest.approx(theirs.energy, abs=1e-10)
        np.testing.assert_allclose(ours.forces, theirs.forces, atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------
# Error-table types, bad input, divergence, reproducibility
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table_type, header, log_metric",
    [
        ("TotalRMSE", ["config_type", "RMSE E / meV", "RMSE F / meV / A", "relative F RMSE %"], "RMSE_E="),
        ("PerAtomRMSE", ["config_type", "RMSE E / meV / atom", "RMSE F / meV / A", "relative F RMSE %"],
         "RMSE_E_per_atom="),
    ],
)
def test_error_table_type_sets_the_columns(aspirin, tmp_path, table_type, header, log_metric) -> None:
    write_frames(tmp_path / "tiny.xyz", aspirin)
    argv = TINY_FLAGS + ["--name=t", "--train_file=tiny.xyz", "--max_num_epochs=1", f"--error_table={table_type}"]
    assert run_main(tmp_path, argv) == 0
    log = (tmp_path / "logs" / "t_run-123.log").read_text()
    assert re.search(rf"INFO: Epoch 0: loss=\S+, {log_metric}\S+ meV", log)
    tables = error_tables(log)
    assert list(tables) == ["main model t.model"]
    assert tables["main model t.model"][0] == header
    assert [row[0] for row in tables["main model t.model"][1:]] == ["train", "valid"]
    assert not (tmp_path / "t_swa.model").exists()


def assert_no_training_outputs(folder: Path, name: str) -> None:
    """Bad input stops the run before any output but the log is written."""
    assert not (folder / f"{name}.model").exists()
    assert not (folder / "checkpoints").exists() or not any((folder / "checkpoints").iterdir())
    assert not (folder / "results").exists() or not any((folder / "results").iterdir())
    assert temporaries(folder) == []


def malformed_copy(source: Path, target: Path) -> Path:
    """Frame 3 of ``source`` with one atom line cut short (3 of its 7 columns)."""
    lines = source.read_text().splitlines(keepends=True)
    bad_line = 3 * 23 + 2 + 5  # 23 lines per 21-atom frame; sixth atom of frame 3
    lines[bad_line] = " ".join(lines[bad_line].split()[:3]) + "\n"
    target.write_text("".join(lines))
    return target


def test_malformed_training_file_is_a_clear_error(aspirin, tmp_path, capsys) -> None:
    malformed_copy(write_frames(tmp_path / "tiny.xyz", aspirin), tmp_path / "bad.xyz")
    assert run_main(tmp_path, TINY_FLAGS + ["--name=bad", "--train_file=bad.xyz"]) == 1
    message = capsys.readouterr().err
    assert "ERROR: bad.xyz is not a valid extended XYZ file" in message and "frame 3" in message
    assert "Traceback" not in message
    assert_no_training_outputs(tmp_path, "bad")


def test_malformed_test_file_leaves_no_outputs(aspirin, tmp_path, capsys) -> None:
    malformed_copy(write_frames(tmp_path / "tiny.xyz", aspirin), tmp_path / "bad_test.xyz")
    argv = TINY_FLAGS + ["--name=bad", "--train_file=tiny.xyz", "--test_file=bad_test.xyz"]
    assert run_main(tmp_path, argv) == 1
    assert "bad_test.xyz" in capsys.readouterr().err
    assert_no_training_outputs(tmp_path, "bad")


@pytest.mark.parametrize("dry_run", [[], ["--dry_run"]])
def test_an_energy_key_no_frame_has_is_a_clear_error(aspirin, tmp_path, capsys, dry_run) -> None:
    write_frames(tmp_path / "tiny.xyz", aspirin)
    argv = TINY_FLAGS + ["--name=nokey", "--train_file=tiny.xyz", "--energy_key=DFT_energy"] + dry_run
    assert run_main(tmp_path, argv) == 1
    message = capsys.readouterr().err
    assert "ERROR: tiny.xyz has no energy under key 'DFT_energy' in any frame (keys present in frame 0: " in message
    assert "REF_energy" in message and "pass the right --energy_key" in message
    assert_no_training_outputs(tmp_path, "nokey")
    assert "has no energy under key 'DFT_energy'" in (tmp_path / "logs" / "nokey_run-123.log").read_text()


def test_frames_without_energy_or_forces_train_with_zero_weight(aspirin, tmp_path) -> None:
    """As upstream: 2 of 10 frames lack the energy key and 1 the forces key; the run trains
    on, saying so once per label, and every number it reports is finite."""
    frames = [frame.copy() for frame in aspirin]
    for index in (3, 7):
        del frames[index].info["REF_energy"]
    del frames[5].arrays["REF_forces"]
    write_frames(tmp_path / "tiny.xyz", frames)
    argv = TINY_FLAGS + ["--name=partial", "--train_file=tiny.xyz", "--max_num_epochs=2"]
    assert run_main(tmp_path, argv) == 0
    log = (tmp_path / "logs" / "partial_run-123.log").read_text()
    assert log.count("have no 'REF_energy'") == 1 and log.count("have no 'REF_forces'") == 1
    assert "WARNING: tiny.xyz: 2 of 10 frames have no 'REF_energy'; they train with zero energy weight" in log
    assert "WARNING: tiny.xyz: 1 of 10 frames have no 'REF_forces'; they train with zero forces weight" in log
    records = read_results(tmp_path, "partial_run-123")
    numbers = [value for record in records if record["mode"] in ("opt", "eval", "final")
               for value in record.values() if isinstance(value, float)]
    assert len(numbers) > 10 and all(math.isfinite(value) for value in numbers)
    assert {r["set"] for r in records if r["mode"] == "final"} == {"train", "valid"}
    assert all(float(cell) > 0 for row in error_tables(log)["main model partial.model"][1:] for cell in row[1:])
    assert (tmp_path / "partial.model").exists()


def upstream_fitting_frames() -> list:
    """The shape of upstream's run_train test data: two isolated atoms with E0 = 0, then 20
    displaced periodic waters labelled REF_energy, REF_forces and REF_stress (Voigt)."""
    rng = np.random.default_rng(5)
    frames = []
    for number in (8, 1):
        atom = ase.Atoms(numbers=[number], positions=[[0, 0, 0]], cell=[6] * 3)
        atom.info.update(REF_energy=0.0, config_type="IsolatedAtom")
        frames.append(atom)
    for _ in range(20):
        water = ase.Atoms(numbers=[8, 1, 1], positions=[[0, -2.0, 0], [1, 0, 0], [0, 1, 0]], cell=[4] * 3, pbc=True)
        water.positions += rng.normal(0.1, size=(3, 3))
        water.info.update(REF_energy=rng.normal(0.1), REF_stress=rng.normal(0.1, size=6))
        water.arrays["REF_forces"] = rng.normal(0.1, size=(3, 3))
        frames.append(water)
    return frames


def test_upstream_s_basic_test_flags_run_as_a_dry_run_on_data_with_missing_labels(tmp_path) -> None:
    """Upstream's missing-data test: frame 5 lacks its energy, 6 its forces, 7 its stress."""
    frames = upstream_fitting_frames()
    del frames[5].info["REF_energy"]
    del frames[6].arrays["REF_forces"]
    del frames[7].info["REF_stress"]
    write_frames(tmp_path / "fit.xyz", frames)
    argv = [
        "--name=MACE", "--valid_fraction=0.05", "--energy_weight=1.0", "--forces_weight=10.0",
        "--stress_weight=1.0", "--model=MACE", "--hidden_irreps=128x0e", "--r_max=3.5", "--batch_size=5",
        "--max_num_epochs=10", "--swa", "--start_swa=5", "--ema", "--ema_decay=0.99", "--amsgrad",
        "--restart_latest", "--device=cpu", "--seed=5", "--loss=stress", "--energy_key=REF_energy",
        "--forces_key=REF_forces", "--stress_key=REF_stress", "--eval_interval=2", "--use_reduced_cg=False",
        f"--checkpoints_dir={tmp_path}", f"--model_dir={tmp_path}", f"--train_file={tmp_path / 'fit.xyz'}",
        "--dry_run",
    ]
    assert run_main(tmp_path, argv) == 0
    assert not (tmp_path / "MACE.model").exists()
    log = (tmp_path / "logs" / "MACE_run-5.log").read_text()
    for key, label in (("REF_energy", "energy"), ("REF_forces", "forces"), ("REF_stress", "stress")):
        assert log.count(f"have no '{key}'") == 1
        assert f"fit.xyz: 1 of 20 frames have no '{key}'; they train with zero {label} weight" in log
    assert "Dry run: flags, data and model checked" in log


def test_dry_run_builds_data_and_model_then_stops_before_training(aspirin, tmp_path) -> None:
    write_frames(tmp_path / "tiny.xyz", aspirin)
    argv = TINY_FLAGS + ["--name=dry", "--train_file=tiny.xyz", "--dry_run"]
    assert run_main(tmp_path, argv) == 0
    assert_no_training_outputs(tmp_path, "dry")
    assert not (tmp_path / "results" / "dry_run-123_valid_indices.txt").exists()
    log = (tmp_path / "logs" / "dry_run-123.log").read_text()
    assert "Data: 5 training, 5 validation configurations" in log
    assert re.search(r"Model \([\d,]+ trainable of [\d,]+ parameters\):", log) and "ScaleShiftMACE(" in log
    assert "Dry run: flags, data and model checked; stopping before training (no model file written)" in log
    assert "Epoch 0" not in log


def test_the_newest_foundation_architecture_trains_from_flags(aspirin, tmp_path) -> None:
    """Upstream 0.3.16's flags of the density blocks with ZBL and Agnesi build that model,
    train it an epoch and save a file that loads (safely) with those modules."""
    write_frames(tmp_path / "tiny.xyz", aspirin)
    argv = TINY_FLAGS + [
        "--name=density", "--train_file=tiny.xyz", "--max_num_epochs=1",
        "--interaction_first=RealAgnosticDensityInteractionBlock",
        "--interaction=RealAgnosticDensityResidualInteractionBlock",
        "--pair_repulsion", "--distance_transform=Agnesi",
    ]
    assert run_main(tmp_path, argv) == 0
    model = load_model(tmp_path / "density.model")
    assert [type(block).__name__ for block in model.interactions] == [
        "RealAgnosticDensityInteractionBlock", "RealAgnosticDensityResidualInteractionBlock"]
    assert type(model.pair_repulsion_fn).__name__ == "ZBLBasis"
    assert type(model.radial_embedding.distance_transform).__name__ == "AgnesiTransform"
    _, configs = load_from_xyz(str(tmp_path / "tiny.xyz"), energy_key="REF_energy", forces_key="REF_forces")
    assert math.isfinite(predict(model, configs[:1])[0].energy)


@pytest.mark.parametrize("flag", ["--train_file", "--test_file"])
def test_a_nan_energy_is_refused_when_read_naming_file_frame_and_key(aspirin, tmp_path, capsys, flag) -> None:
    frames = [frame.copy() for frame in aspirin]
    frames[2].info["REF_energy"] = float("nan")
    write_frames(tmp_path / "nan.xyz", frames)
    write_frames(tmp_path / "tiny.xyz", aspirin)
    files = {"--train_file": "tiny.xyz", flag: "nan.xyz"}
    argv = TINY_FLAGS + ["--name=nan", "--max_num_epochs=2"] + [f"{key}={value}" for key, value in files.items()]
    assert run_main(tmp_path, argv) == 1
    message = capsys.readouterr().err
    assert message.startswith("ERROR: nan.xyz frame 2: energy 'REF_energy' holds NaN or inf") and "Traceback" not in message
    assert_no_training_outputs(tmp_path, "nan")


def test_outputs_get_the_permissions_of_the_umask(main_run: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    outputs = [main_run / "tiny.model", main_run / "tiny_swa.model",
               main_run / "results" / "tiny_run-123_valid_indices.txt", *(main_run / "checkpoints").iterdir()]
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in outputs} == {path.name: 0o666 & ~umask for path in outputs}


def test_runs_with_the_same_seed_are_identical(aspirin, tmp_path) -> None:
    """Also with batches collated in a worker process (--num_workers): the order is drawn here."""
    losses = []
    for run, workers in (("first", "0"), ("second", "1")):
        write_frames(tmp_path / run / "tiny.xyz", aspirin)
        flags = ["--name=r", "--train_file=tiny.xyz", "--max_num_epochs=2", f"--num_workers={workers}"]
        assert run_main(tmp_path / run, TINY_FLAGS + flags) == 0
        records = [r for r in read_results(tmp_path / run, "r_run-123") if r["mode"] in ("opt", "eval")]
        losses.append([(r["mode"], r["epoch"], r["loss"]) for r in records])
    assert len(losses[0]) == 4
    assert losses[0] == losses[1]
    indices = [(tmp_path / run / "results" / "r_run-123_valid_indices.txt").read_text() for run in ("first", "second")]
    assert indices[0] == indices[1]


# --------------------------------------------------------------------------------------
# The seed's quick-validation command, and a restart after SIGKILL
# --------------------------------------------------------------------------------------


def rewrite_flags(tokens: Sequence[str], replace: Dict[str, str], drop: Sequence[str]) -> List[str]:
    """``tokens`` with the values of ``replace``'s flags swapped and ``drop``'s flags removed."""
    flags = {token.split("=", 1)[0] for token in tokens}
    assert set(replace) | set(drop) <= flags, "the seed command no longer has these flags"
    result = []
    for token in tokens:
        flag = token.split("=", 1)[0]
        if flag not in drop:
            result.append(f"{flag}={replace[flag]}" if flag in replace else token)
    return result


def test_seed_quick_validation_command_runs(shared_dir, aspirin, tmp_path) -> None:
    """The README command with --device=cpu --max_num_epochs=2, no foundation, 8 channels, 10 frames."""
    write_frames(tmp_path / "train.xyz", aspirin)
    write_frames(tmp_path / "test.xyz", ase.io.read(shared_dir / ASPIRIN / "test.xyz", index=":10"))
    argv = rewrite_flags(
        documented_seed_command(),  # as written in the seed README
        replace={"--device": "cpu", "--max_num_epochs": "2", "--num_channels": "8",
                 "--train_file": "train.xyz", "--test_file": "test.xyz"},
        drop=["--foundation_model"],
    )
    assert "--swa" in argv and "--ema" in argv and "--start_swa=400" in argv
    with pytest.warns(UserWarning, match="SWA will never start"):
        assert run_main(tmp_path, argv) == 0
    assert (tmp_path / "rmd17-Aspirin.model").is_file()
    assert not (tmp_path / "rmd17-Aspirin_swa.model").exists()
    assert [r["epoch"] for r in eval_records(tmp_path, "rmd17-Aspirin_run-123")] == [0]  # --eval_interval=2: epoch 1 is not evaluated, as upstream
    tables = error_tables((tmp_path / "logs" / "rmd17-Aspirin_run-123.log").read_text())
    rows = tables["main model rmd17-Aspirin.model"]
    assert rows[0] == TOTAL_MAE_HEADER
    assert [row[0] for row in rows[1:]] == ["train", "valid", "test"]


def training_records(folder: Path, tag: str) -> List[dict]:
    """The result lines without their wall times: what must not change when a run is resumed."""
    return [{key: value for key, value in record.items() if key not in ("time", "data_wait")} for record in read_results(folder, tag)]


def tensors(tree: object) -> List[torch.Tensor]:
    """Every tensor in a nested state (dicts, lists), in an order fixed by its keys."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in tensors(item)]
    return []


def assert_bitwise_equal(first: object, second: object) -> None:
    mine, theirs = tensors(first), tensors(second)
    assert len(mine) == len(theirs) and all(torch.equal(a, b) for a, b in zip(mine, theirs))


def start_process(cwd: Path, argv: Sequence[str]) -> subprocess.Popen:
    """run_train in a fresh one-thread process, output discarded."""
    return subprocess.Popen([sys.executable, "-m", "mace.cli.run_train", *argv], cwd=cwd,
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_process(cwd: Path, argv: Sequence[str]) -> int:
    return start_process(cwd, argv).wait()


EXACT_FLAGS = TINY_FLAGS + [
    "--name=exact", "--train_file=tiny.xyz", "--batch_size=2", "--max_num_epochs=4", "--ema", "--swa",
    "--start_swa=3", "--keep_checkpoints",
]


def test_a_restart_after_a_kill_ends_bitwise_as_the_uninterrupted_run(aspirin, tmp_path) -> None:
    """Killed during epoch 3 with a damaged newest checkpoint: the restart falls back to epoch 1
    and, 2 frames per batch so that the shuffling order matters, ends exactly as the whole run."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    write_frames(whole / "tiny.xyz", aspirin)
    assert run_process(whole, EXACT_FLAGS) == 0
    shutil.copytree(whole, killed)
    (killed / "checkpoints" / "exact_run-123_epoch-3_swa.pt").unlink()
    damaged = killed / "checkpoints" / "exact_run-123_epoch-2.pt"
    damaged.write_bytes(damaged.read_bytes()[:-1000])
    for name in ("exact.model", "exact_swa.model"):
        (killed / name).rename(killed / f".{name}.ab12cd34.tmp")  # a final write cut short
    assert run_process(killed, EXACT_FLAGS + ["--restart_latest", "--patience=1000"]) == 0
    log = (killed / "logs" / "exact_run-123.log").read_text()
    assert re.search(rf"WARNING: Checkpoint '{damaged.relative_to(killed)}' could not be loaded: .*falling back", log)
    assert "Resuming after epoch 1 from checkpoints/exact_run-123_epoch-1.pt" in log
    assert training_records(killed, "exact_run-123") == training_records(whole, "exact_run-123")
    last = "checkpoints/exact_run-123_epoch-3_swa.pt"  # weights, EMA, optimiser, shuffling state
    assert_bitwise_equal(*(torch.load(folder / last, weights_only=True) for folder in (whole, killed)))
    for name in ("exact.model", "exact_swa.model"):
        assert_bitwise_equal(*(load_model(folder / name).state_dict() for folder in (whole, killed)))
    assert temporaries(killed) == []


def test_a_restart_with_other_settings_is_refused_naming_them(aspirin, tmp_path, capsys) -> None:
    write_frames(tmp_path / "tiny.xyz", aspirin)
    argv = TINY_FLAGS + ["--name=changed", "--train_file=tiny.xyz", "--max_num_epochs=1"]
    assert run_main(tmp_path, argv) == 0
    outputs = lambda: {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and path.suffix != ".log"}
    before = outputs()
    capsys.readouterr()
    assert run_main(tmp_path, argv + ["--restart_latest", "--max_num_epochs=3", "--lr=0.02", "--num_channels=16"]) == 1
    message = capsys.readouterr().err
    assert message.startswith("ERROR: --restart_latest: checkpoint 'checkpoints/changed_run-123_epoch-0.pt' was written with other settings")
    assert "--lr=0.01 (now 0.02)" in message and "--num_channels=8 (now 16)" in message and message.count("\n") == 1
    assert "max_num_epochs" not in message
    assert outputs() == before


def test_a_second_run_with_the_same_name_is_refused_naming_the_holder(aspirin, tmp_path, capsys) -> None:
    write_frames(tmp_path / "tiny.xyz", aspirin)
    lock = tmp_path / "logs" / "busy_run-123.lock"
    lock.parent.mkdir()
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")  # a live process holds it
    assert run_main(tmp_path, TINY_FLAGS + ["--name=busy", "--train_file=tiny.xyz", "--max_num_epochs=1"]) == 1
    message = capsys.readouterr().err
    assert message == (f"ERROR: Another run (PID {os.getppid()} on {socket.gethostname()}) is writing these outputs: "
                       f"lock file 'logs/busy_run-123.lock' exists. Wait for it to end, choose another --name or "
                       f"--seed, or delete 'logs/busy_run-123.lock' if no such run is going on\n")
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == ["busy_run-123.lock", "tiny.xyz"]


def test_an_output_folder_that_is_a_file_is_refused_before_reading_data(tmp_path, capsys) -> None:
    (tmp_path / "taken").write_text("not a folder")
    argv = TINY_FLAGS + ["--name=clash", "--train_file=absent.xyz", "--model_dir=taken"]
    assert run_main(tmp_path, argv) == 1
    assert capsys.readouterr().err == "ERROR: --model_dir: 'taken' exists and is not a folder\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]


def test_a_failed_rerun_keeps_the_previous_valid_indices(aspirin, tmp_path, capsys) -> None:
    write_frames(tmp_path / "tiny.xyz", aspirin)
    previous = tmp_path / "results" / "again_run-123_valid_indices.txt"
    previous.parent.mkdir()
    previous.write_text("the earlier run's split\n")
    argv = TINY_FLAGS + ["--name=again", "--train_file=tiny.xyz", "--atomic_numbers=[1, 6]"]
    assert run_main(tmp_path, argv) == 1
    assert "--atomic_numbers lacks elements present in the data: [8]" in capsys.readouterr().err
    assert previous.read_text() == "the earlier run's split\n"


def test_sigkill_then_restart_latest_finishes_as_the_uninterrupted_run(aspirin, tmp_path) -> None:
    """A real kill -9 at a random point after the first checkpoint; the stale lock it leaves is taken over."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    for folder in (killed, whole):
        write_frames(folder / "tiny.xyz", aspirin)
    argv = TINY_FLAGS + [
        "--name=resume", "--train_file=tiny.xyz", "--max_num_epochs=5", "--ema", "--swa", "--start_swa=3",
        "--batch_size=2",
    ]
    checkpoints = killed / "checkpoints"
    process = start_process(killed, argv)
    try:
        deadline = time.monotonic() + 240
        while not list(checkpoints.glob("resume_run-123_epoch-*.pt")):
            assert process.poll() is None, f"run_train exited with {process.returncode} before a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "resume.model").exists()
    assert (killed / "logs" / "resume_run-123.lock").is_file()
    killed_at = max(int(re.search(r"epoch-(\d+)", p.name).group(1)) for p in checkpoints.glob("*.pt"))

    assert run_process(killed, argv + ["--restart_latest"]) == 0
    assert run_process(whole, argv) == 0
    log = (killed / "logs" / "resume_run-123.log").read_text()
    assert "WARNING: Took over lock file logs/resume_run-123.lock" in log
    assert f"Resuming after epoch {killed_at} from checkpoints/resume_run-123_epoch-{killed_at}.pt" in log
    assert training_records(killed, "resume_run-123") == training_records(whole, "resume_run-123")
    assert (killed / "resume.model").is_file() and (killed / "resume_swa.model").is_file()
    assert log.rstrip().endswith("INFO: Done")
    assert temporaries(killed) == [] and not list(killed.rglob("*.lock"))


def test_heads_train_one_readout_each_on_their_own_data(aspirin, shared_dir, tmp_path) -> None:
    """--heads from a --config file's heads: mapping: each head its data, E0s, scale and
    validation line; the last head chooses the checkpoints and keeps the plain set names."""
    write_frames(tmp_path / "aspirin.xyz", aspirin)
    write_frames(tmp_path / "ethanol.xyz", ase.io.read(shared_dir / "repro_data/dataset/dataset_rmd17/revised_ethanol/train.xyz", index=":10"))
    (tmp_path / "heads.yaml").write_text(
        "heads:\n  asp:\n    train_file: aspirin.xyz\n  eth:\n    train_file: ethanol.xyz\n    E0s: '{1: -13.6, 6: -1029.0, 8: -2041.0}'\n"
    )
    argv = TINY_FLAGS + ["--name=heads", "--config=heads.yaml", "--max_num_epochs=2"]
    assert run_main(tmp_path, argv) == 0
    model = load_model(tmp_path / "heads.model")
    assert model.heads == ["asp", "eth"]
    energies = model.atomic_energies_fn.atomic_energies
    assert energies.shape == (2, 3) and energies[1].tolist() == [-13.6, -1029.0, -2041.0]
    assert model.scale_shift.scale.shape == (2,) and model.scale_shift.scale[0] != model.scale_shift.scale[1]
    log = (tmp_path / "logs" / "heads_run-123.log").read_text()
    assert "Epoch 1: head asp: loss=" in log and "Epoch 1: head eth: loss=" in log
    finals = {record["set"] for record in read_results(tmp_path, "heads_run-123") if record["mode"] == "final"}
    assert finals == {"asp:train", "asp:valid", "train", "valid"}
    _, ethanol = load_from_xyz(str(tmp_path / "ethanol.xyz"), energy_key="REF_energy", forces_key="REF_forces")
    own, other = predict(model, ethanol[:2], head="eth"), predict(model, ethanol[:2], head="asp")
    assert abs(own[0].energy - other[0].energy) > 1e-3


def test_heads_of_a_fine_tune_each_start_from_the_foundation_head(aspirin, shared_dir, tmp_path) -> None:
    from mace.adapters.io import load_adapted_model

    foundation = shared_dir / "conformance/models/small_v0316.model"
    write_frames(tmp_path / "a.xyz", aspirin[:6])
    write_frames(tmp_path / "b.xyz", aspirin[4:])
    heads = "{'first': {'train_file': 'a.xyz'}, 'second': {'train_file': 'b.xyz', 'E0s': 'foundation'}}"
    argv = TINY_FLAGS + ["--name=ft", f"--heads={heads}", "--max_num_epochs=1", f"--foundation_model={foundation}",
                         "--default_dtype=float64"]
    assert run_main(tmp_path, argv) == 0
    model = load_model(tmp_path / "ft.model", dtype=torch.float64)
    assert model.heads == ["first", "second"]
    rebuilt = load_adapted_model(foundation, tmp_path / "ft_adapter.pt")
    _, configs = load_from_xyz(str(tmp_path / "b.xyz"), energy_key="REF_energy", forces_key="REF_forces")
    for head in ("first", "second"):
        for ours, theirs in zip(predict(model, configs, head=head), predict(rebuilt, configs, head=head)):
            assert abs(ours.energy - theirs.energy) < 1e-10
            np.testing.assert_allclose(ours.forces, theirs.forces, atol=1e-10, rtol=0)
