"""Tests of the method-comparison benchmark's pure parts (benchmarks/compare_methods.py).

Training is far too slow for the test suite, so these feed synthetic run outputs to the
functions that read them, build the commands, compute the errors and write the report.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.compare_methods import (
    PROTOCOLS,
    BenchmarkSettings,
    ErrorMetrics,
    Protocol,
    ResultRow,
    dataset_name,
    error_metrics,
    final_model_path,
    log_tail,
    markdown_table,
    parse_trainable_parameters,
    plot_validation_curves,
    read_training_curves,
    results_markdown,
    seconds_per_epoch,
    swa_start_for,
    training_command,
)


def _settings(tmp_path: Path, protocol: Protocol = PROTOCOLS["cpu"]) -> BenchmarkSettings:
    return BenchmarkSettings(
        dataset="aspirin",
        foundation=tmp_path / "foundation.model",
        train_file=tmp_path / "revised_aspirin" / "train.xyz",
        test_file=tmp_path / "revised_aspirin" / "test.xyz",
        valid_fraction=0.5,
        energy_key="REF_energy",
        forces_key="REF_forces",
        seed=123,
        protocol=protocol,
        methods=("mmea", "scratch"),
        out=tmp_path / "out",
    )


def test_training_curves_keep_epoch_times_and_validation_force_mae_in_mev():
    lines = [
        json.dumps({"mode": "opt", "epoch": 0, "loss": 3.0, "time": 12.5}),
        json.dumps({"mode": "eval", "epoch": 0, "loss": 2.0, "lr": 0.005, "mae_e": 0.2, "mae_f": 0.1585}),
        "",
        json.dumps({"mode": "opt", "epoch": 1, "loss": 1.0, "time": 10.0}),
        json.dumps({"mode": "eval", "epoch": 1, "loss": 1.5, "lr": 0.005, "mae_e": 0.1}),
        json.dumps({"mode": "opt", "epoch": 2, "loss": 0.5, "time": 11.0}),
        json.dumps({"mode": "eval", "epoch": 2, "loss": 1.0, "lr": 0.005, "mae_f": 0.05}),
    ]
    curves = read_training_curves(lines)
    assert curves.epoch_times == [12.5, 10.0, 11.0]
    assert curves.valid_force_mae == [(0, pytest.approx(158.5)), (2, pytest.approx(50.0))]
    assert seconds_per_epoch(curves.epoch_times) == 11.0
    assert seconds_per_epoch([]) is None


@pytest.mark.parametrize(
    "line, expected",
    [
        ("2026 INFO: Fine-tuning with adapter 'mmea': 151,354 trainable of 4,845,926 parameters (3.1%)", 151354),
        ("2026 INFO: Fine-tuning with adapter 'none': 219,984 trainable of 219,984 parameters (100.0%)", 219984),
        ("2026 INFO: Model: 212,208 trainable parameters", 212208),
        ("2026 INFO: nothing about parameters here", None),
    ],
)
def test_trainable_parameter_count_is_read_from_either_log_wording(line, expected):
    assert parse_trainable_parameters(f"first line\n{line}\nlast line\n") == expected


def test_error_metrics_in_mev_with_and_without_the_mean_energy_offset():
    reference_e = np.array([-10.0, -11.0, -12.0])
    predicted_e = reference_e + np.array([1.001, 0.999, 1.000])  # a 1 eV offset, +-1 meV around it
    reference_f = np.zeros((4, 3))
    predicted_f = np.full((4, 3), 0.002)
    predicted_f[0, 0] = -0.002
    raw = error_metrics(predicted_e, reference_e, predicted_f, reference_f)
    assert raw.mae_e == pytest.approx(1000.0)
    assert raw.rmse_e == pytest.approx(np.sqrt((1001.0**2 + 999.0**2 + 1000.0**2) / 3))
    assert raw.mae_f == pytest.approx(2.0)
    assert raw.rmse_f == pytest.approx(2.0)
    centred = error_metrics(predicted_e, reference_e, predicted_f, reference_f, remove_mean_offset=True)
    assert centred.mae_e == pytest.approx(2.0 / 3.0)
    assert centred.rmse_e == pytest.approx(np.sqrt(2.0 / 3.0))
    assert (centred.mae_f, centred.rmse_f) == (raw.mae_f, raw.rmse_f)


def test_markdown_table_has_one_row_per_result_and_dashes_for_missing_values():
    rows = [
        ResultRow("zero-shot (foundation E0s)", ErrorMetrics(1183.04, 1190.0, 453.21, 620.0), None, None, None),
        ResultRow("MMEA", ErrorMetrics(7.21, 9.5, 16.44, 22.0), 151354, 98.76, 1330.4),
        ResultRow("ELoRA (failed, exit 1)", None, None, None, 800.0),
    ]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0].startswith("| method | test E MAE (meV) |")
    assert all(line.count("|") == 9 for line in lines)
    assert lines[2] == "| zero-shot (foundation E0s) | 1183.0 | 1190.0 | 453.2 | 620.0 | - | - | - |"
    assert lines[3] == "| MMEA | 7.2 | 9.5 | 16.4 | 22.0 | 151,354 | 98.8 | 1330 |"
    assert lines[4] == "| ELoRA (failed, exit 1) | - | - | - | - | - | - | 800 |"


def test_report_names_the_inputs_links_the_plot_and_shows_failed_runs(tmp_path):
    settings = _settings(tmp_path)
    rows = [ResultRow("MMEA", ErrorMetrics(7.2, 9.5, 16.4, 22.0), 151354, 98.8, 1330.0)]
    report = results_markdown(
        settings, rows, 100, {"MMEA": tmp_path / "aspirin-mmea.model"}, {"scratch": "Traceback\nBoom"}, "python x.py"
    )
    assert report.startswith("# Fine-tuning methods compared on aspirin\n")
    assert "100 configurations of" in report
    assert markdown_table(rows) in report
    assert "MMEA: `aspirin-mmea.model`" in report
    assert "![validation force MAE per epoch](val_force_mae.png)" in report
    assert "## Failed runs" in report and "### from scratch" in report and "Boom" in report


def test_validation_plot_is_written_as_png(tmp_path):
    path = tmp_path / "val_force_mae.png"
    curves = {"MMEA": [(0, 158.0), (1, 140.0), (2, 120.0)], "from scratch": [(0, 900.0), (1, 700.0)], "empty": []}
    plot_validation_curves(curves, path, "aspirin: validation force MAE")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_fine_tuning_and_scratch_commands_share_the_protocol_and_differ_in_what_trains(tmp_path):
    settings = _settings(tmp_path)
    scratch_flags = ["--model=ScaleShiftMACE", "--num_channels=64", "--max_L=1"]
    mmea = training_command("mmea", settings, scratch_flags)
    scratch = training_command("scratch", settings, scratch_flags)
    assert mmea[1:3] == ["-m", "mace.cli.run_train"]
    assert f"--foundation_model={settings.foundation.resolve()}" in mmea and "--adapter=mmea" in mmea
    assert not any(flag.startswith(("--foundation_model", "--adapter")) for flag in scratch)
    assert scratch[-3:] == scratch_flags
    shared = ["--max_num_epochs=4", "--eval_interval=1", "--device=cpu", "--E0s=average", "--ema_decay=0.995",
              "--forces_weight=1000", "--batch_size=5", "--valid_fraction=0.5", "--seed=123"]
    assert all(flag in mmea and flag in scratch for flag in shared)
    assert "--name=aspirin-mmea" in mmea and "--swa" not in mmea
    paper = training_command("elora", _settings(tmp_path, PROTOCOLS["paper"]), scratch_flags)
    assert "--swa" in paper and "--start_swa=400" in paper
    assert "--max_num_epochs=500" in paper and "--device=cuda" in paper


def test_swa_start_moves_with_the_epoch_count():
    assert swa_start_for(PROTOCOLS["paper"], None) == 400
    assert swa_start_for(PROTOCOLS["paper"], 100) == 80
    assert swa_start_for(PROTOCOLS["paper"], 2) == 1  # still one epoch before and one in SWA
    assert swa_start_for(PROTOCOLS["paper"], 1) == 1
    assert swa_start_for(PROTOCOLS["cpu"], None) is None
    assert swa_start_for(PROTOCOLS["cpu"], 10) is None


def test_swa_model_is_scored_when_present_and_log_tail_reads_the_console(tmp_path):
    (tmp_path / "run.model").write_bytes(b"")
    assert final_model_path(tmp_path, "run") == tmp_path / "run.model"
    (tmp_path / "run_swa.model").write_bytes(b"")
    assert final_model_path(tmp_path, "run") == tmp_path / "run_swa.model"
    assert log_tail(tmp_path) == "(no console output)"
    (tmp_path / "stdout.txt").write_text("\n".join(f"line {i}" for i in range(100)) + "\n")
    assert log_tail(tmp_path, lines=2) == "line 98\nline 99"


def test_dataset_name_comes_from_the_rmd17_folder():
    assert dataset_name(Path("repro_data/dataset/dataset_rmd17/revised_aspirin/train.xyz")) == "aspirin"
    assert dataset_name(Path("data/acac/train_300K.xyz")) == "acac"
