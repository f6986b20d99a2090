"""Tests of the transfer benchmark's pure parts (benchmarks/transfer.py): its data files,
commands, stored errors and report, on synthetic frames and run records."""
import json
from pathlib import Path
from typing import List

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

import benchmarks.transfer as transfer
from benchmarks.compare_methods import ErrorMetrics, RunRecord
from benchmarks.protocols import ANCHOR_COMMAND
from benchmarks.transfer import (
    VARIANTS,
    Dataset,
    Run,
    report,
    run_command,
    stored_errors,
    summary_rows,
    train_runs,
    write_data_files,
)
from mace.cli.arg_parser import parse_args
from mace.data.configuration import load_from_xyz


def frames(count: int, offset: float) -> List[ase.Atoms]:
    """Labelled water-like frames with distinct positions (the BOTNet keys: energy, forces)."""
    result = []
    for index in range(count):
        atoms = ase.Atoms("OH2", positions=[[0, 0, 0], [0.96 + offset + 0.01 * index, 0, 0], [0, 0.96, 0]])
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - index, forces=np.full((3, 3), 0.1 * index))
        result.append(atoms)
    return result


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with a 12-frame training source and a test source holding two of its frames."""
    root = tmp_path / "data"
    root.mkdir()
    train = frames(12, 0.0)
    ase.io.write(root / "train.xyz", train)
    ase.io.write(root / "test.xyz", frames(4, 0.5) + [train[3], train[7]])
    monkeypatch.setattr(transfer, "default_data_path", lambda relative: root / relative)
    monkeypatch.setattr(transfer, "RESULTS", tmp_path / "results")
    return root


def test_the_training_file_is_every_fifth_frame_and_training_frames_leave_the_test_set(data_root: Path) -> None:
    dataset = Dataset("water", "train.xyz", (("t", "test.xyz"),), exclude_train_frames=True)
    files = write_data_files("water", dataset)
    _, train = load_from_xyz(str(files.train), energy_key="energy", forces_key="forces")
    assert [config.energy for config in train] == [-10.0, -15.0, -20.0]
    _, test = load_from_xyz(str(files.tests[0][1]), energy_key="energy", forces_key="forces")
    assert [config.energy for config in test] == [-10.0, -11.0, -12.0, -13.0]
    assert files.counts == {"train": 3, "t": 4}
    kept = write_data_files("water", Dataset("water", "train.xyz", (("t", "test.xyz"),)))
    assert kept.counts["t"] == 6


def test_each_variant_runs_the_anchors_command_with_its_flags_and_they_mean_what_its_label_says() -> None:
    command = run_command("acac", VARIANTS["mmea-reference"], 124, Path("/d/train.xyz"), Path("/d/test.xyz"))
    flags = command[3:]
    assert command[1:3] == ["-m", "mace.cli.run_train"]
    for name, value in ANCHOR_COMMAND.items():
        if name not in ("name", "seed", "train_file", "test_file", "foundation_model", "energy_key", "forces_key"):
            assert (f"--{name}" if value is None else f"--{name}={value}") in flags
    assert {"--name=acac", "--seed=124", "--train_file=/d/train.xyz", "--test_file=/d/test.xyz",
            "--energy_key=energy", "--forces_key=forces"} <= set(flags)
    reference = parse_args(flags, environ={})
    assert (reference.adapter_settings.config.phi, reference.adapter_settings.config.init) == ("exp", "default")
    assert (reference.swa_reset_optimizer, reference.swa_warmup_epochs) == (False, 0)
    ours = parse_args(run_command("acac", VARIANTS["mmea"], 124, Path("/d/a.xyz"), Path("/d/b.xyz"))[3:], environ={})
    assert (ours.adapter_settings.config.phi, ours.swa_reset_optimizer, ours.swa_warmup_epochs) == ("res", True, 4)
    assert parse_args(run_command("acac", VARIANTS["none"], 1, Path("/a"), Path("/b"))[3:], environ={}).adapter == "none"


def test_stored_errors_are_computed_once_per_test_set_until_the_model_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "acac_swa.model"
    model.write_bytes(b"model")
    _, configs = load_from_xyz(str(_written(tmp_path, frames(2, 0.0))), energy_key="energy", forces_key="forces")
    calls = []

    def fake_predictions(path, configs, device):
        calls.append(path)
        return np.array([-10.002, -11.0]), np.concatenate([config.forces for config in configs]) + 0.003

    monkeypatch.setattr(transfer, "predictions_of", fake_predictions)
    errors = stored_errors(model, "MD 300 K", configs)
    assert errors.mae_e == pytest.approx(1.0) and errors.mae_f == pytest.approx(3.0)
    assert stored_errors(model, "MD 300 K", configs) == errors and len(calls) == 1
    stored_errors(model, "MD 600 K", configs)
    assert len(calls) == 2 and set(json.loads(model.with_name("acac_swa_transfer_errors.json").read_text())["errors"]) == {
        "MD 300 K", "MD 600 K"}
    model.write_bytes(b"retrained model")
    stored_errors(model, "MD 300 K", configs)
    assert len(calls) == 3


def _written(folder: Path, atoms: List[ase.Atoms]) -> Path:
    path = folder / "frames.xyz"
    ase.io.write(path, atoms)
    return path


def _score(variant: str, seed: int, mae_f: float) -> dict:
    errors = ErrorMetrics(mae_e=mae_f / 4, rmse_e=0.0, mae_f=mae_f, rmse_f=0.0).__dict__
    return {"dataset": "acac", "variant": variant, "seed": seed, "method": variant, "returncode": 0,
            "wall_s": 600.0, "peak_rss_mb": 900.0, "trainable": 72_378, "errors": {"MD 300 K": errors}}


def test_the_summary_is_the_mean_and_half_range_over_finished_seeds_and_failed_runs_are_listed() -> None:
    failed = {"dataset": "acac", "variant": "mmea", "seed": 126, "method": "mmea", "returncode": 1,
              "wall_s": 60.0, "peak_rss_mb": 500.0, "errors": {}}
    scores = [_score("mmea", 123, 18.0), _score("mmea", 124, 20.0), failed, _score("mmea-reference", 123, 19.0)]
    rows = summary_rows(scores, "acac", ["MD 300 K"])
    assert rows == [
        [VARIANTS["mmea"].label, "72,378", "2", "4.8 ± 0.2", "19.0 ± 1.0", "10.0 ± 0.0"],
        [VARIANTS["mmea-reference"].label, "72,378", "1", "4.8", "19.0", "10.0"],
    ]
    files = transfer.DataFiles(Path("t.xyz"), [("MD 300 K", Path("x.xyz"))], {"train": 100, "MD 300 K": 650})
    text = report(scores, {"acac": files}, "python benchmarks/transfer.py --datasets acac")
    assert "## acetylacetone (`acac`)" in text and "MD 300 K (650 frames)" in text
    assert "failed (exit 1)" in text and "`--mmea_phi=exp`" in text


def test_report_only_trains_nothing_and_keeps_the_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    finished, missing = Run("acac", "mmea", 123), Run("acac", "mmea", 124)
    folder = finished.files.work_dir
    folder.mkdir(parents=True)
    for model in (finished.files.main_model, finished.files.swa_model):
        model.write_bytes(b"model")
    record = RunRecord("mmea", 0, 600.0, 900.0)
    (folder / "run.json").write_text(json.dumps(record.__dict__))
    monkeypatch.setattr(transfer, "run_training", lambda *args: pytest.fail("report_only must not train"))
    assert train_runs([finished, missing], {}, reuse=False, report_only=True) == {finished: record}
