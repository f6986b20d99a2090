"""Tests of the method-comparison benchmark's pure parts (benchmarks/compare_methods.py).

Training is far too slow for the test suite, so these feed synthetic run outputs to the
functions that read them, build the commands, compute the errors and write the report.
"""
import json
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import benchmarks.compare_methods as compare_methods
from benchmarks import protocols
from benchmarks.compare_methods import (
    CPU100_ANCHORS,
    DEFAULT_FOUNDATION,
    DEFAULT_TRAIN_FILE,
    DEFAULT_METHODS,
    METHODS,
    PROTOCOLS,
    REPO_ROOT,
    BenchmarkSettings,
    ErrorMetrics,
    Protocol,
    ResultRow,
    Run,
    RunRecord,
    RunScore,
    Spread,
    anchor_table,
    anchored_json,
    carried_over_scores,
    anchored_markdown,
    better_target_line,
    bound_mark,
    child_environment,
    data_roots,
    dataset_name,
    default_data_path,
    error_metrics,
    faithful_bound,
    final_model_path,
    format_spread,
    log_tail,
    main_stage_table,
    markdown_table,
    model_test_errors,
    parse_arguments,
    plot_validation_curves,
    read_trainable_parameters,
    read_training_curves,
    resolve_settings,
    results_markdown,
    run_training,
    score_run,
    seconds_per_epoch,
    split_reusable,
    train_side_by_side,
    train_all,
    spread,
    summarize_method,
    swa_start_for,
    training_command,
)
from benchmarks.protocols import ANCHOR_COMMAND, SEED_COMMAND, command_flags
from mace.training.metrics import mae_rmse
from tests.shared import documented_anchor_flags, documented_seed_command

# The flags of the anchors' cpu100 command that are the same in every run of the benchmark
# (seed 123); it names the run and its files itself.
RUN_FILE_FLAGS = ("name", "train_file", "test_file", "foundation_model")
ANCHOR_FLAGS = command_flags(ANCHOR_COMMAND, [name for name in ANCHOR_COMMAND if name not in RUN_FILE_FLAGS])


def _settings(
    tmp_path: Path, protocol: Protocol = PROTOCOLS["cpu"], seeds=(123,), methods=("mmea", "scratch")
) -> BenchmarkSettings:
    return BenchmarkSettings(
        dataset="aspirin",
        foundation=tmp_path / "foundation.model",
        train_file=tmp_path / "revised_aspirin" / "train.xyz",
        test_file=tmp_path / "revised_aspirin" / "test.xyz",
        valid_fraction=0.5,
        energy_key="REF_energy",
        forces_key="REF_forces",
        seeds=tuple(seeds),
        protocol=protocol,
        methods=tuple(methods),
        out=tmp_path / "out",
        jobs=protocol.jobs,
    )


def _errors(mae_e: float, mae_f: float) -> ErrorMetrics:
    return ErrorMetrics(mae_e=mae_e, rmse_e=1.3 * mae_e, mae_f=mae_f, rmse_f=1.4 * mae_f)


def _score(method: str, seed: int, mae_e: float, mae_f: float, main_f: float, wall_s: float = 1500.0) -> RunScore:
    return RunScore(method, seed, 0, wall_s, 1480.0, CPU100_ANCHORS[method].trainable,
                    "rmd17-aspirin_swa.model", _errors(mae_e, mae_f), _errors(mae_e + 0.5, main_f))


def _failed(method: str, seed: int) -> RunScore:
    return RunScore(method, seed, 1, 30.0, 900.0, None, None, None, None)


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


def _results_file(path: Path, *records: dict) -> Path:
    """A results file as run_train writes it: one JSON record per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


PARAMETERS = {"mode": "parameters", "adapter": "mmea", "trainable": 72378, "total": 4845926}
OPT = {"mode": "opt", "epoch": 0, "loss": 3.0, "time": 12.5}
FINAL = {"mode": "final", "stage": "swa", "model": "rmd17-aspirin_swa.model", "set": "test",
         "mae_e": 0.0219, "rmse_e": 0.028, "mae_f": 0.0413, "rmse_f": 0.055}


def test_trainable_parameter_count_comes_from_the_parameters_record(tmp_path):
    lines = _results_file(tmp_path / "with.txt", PARAMETERS, OPT, FINAL).read_text().splitlines()
    assert read_trainable_parameters(lines) == 72378
    assert read_trainable_parameters(["", *lines, ""]) == 72378
    restarted = [*lines, json.dumps({**PARAMETERS, "trainable": 72379})]
    assert read_trainable_parameters(restarted) == 72379  # the run that saved the models


def test_trainable_parameter_count_is_unknown_without_a_parameters_record(tmp_path):
    """Runs from before run_train wrote the record: no count, and no reading of the log instead."""
    lines = _results_file(tmp_path / "without.txt", OPT, FINAL).read_text().splitlines()
    assert read_trainable_parameters(lines) is None
    assert read_trainable_parameters([]) is None
    assert read_trainable_parameters([json.dumps(PARAMETERS)[:30]]) is None  # cut off while written


def test_scored_runs_take_the_trainable_count_from_their_results_file(tmp_path):
    settings = _settings(tmp_path, PROTOCOLS["cpu100"], seeds=(123, 124), methods=("mmea",))
    new, old = settings.run_files(Run("mmea", 123)), settings.run_files(Run("mmea", 124))
    _results_file(new.results, PARAMETERS, OPT)
    _results_file(old.results, OPT)
    for files in (new, old):  # the log says a count too: it is not read
        files.log.parent.mkdir(parents=True)
        files.log.write_text("INFO: Fine-tuning with adapter 'mmea': 99,999 trainable of 4,845,926 parameters\n")
    failed = RunRecord("mmea", 1, 30.0, 900.0)  # no models to score, but the count is kept
    assert score_run(Run("mmea", 123), failed, settings, []).trainable == 72378
    assert score_run(Run("mmea", 124), failed, settings, []).trainable is None
    assert score_run(Run("mmea", 125), failed, settings, []).trainable is None  # no results file at all


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


def test_error_metrics_equal_hand_computed_values_and_run_trains_formulas():
    reference_e = np.array([-100.0, -200.0])
    predicted_e = reference_e + np.array([0.003, -0.001])  # errors 3 and -1 meV
    reference_f = np.array([[0.5, -0.5, 0.0], [1.0, 0.0, 2.0]])
    predicted_f = reference_f + np.array([[0.001, -0.002, 0.002], [0.0, 0.004, 0.0]])  # 1, -2, 2, 0, 4, 0 meV/A
    errors = error_metrics(predicted_e, reference_e, predicted_f, reference_f)
    assert errors.mae_e == pytest.approx(2.0)
    assert errors.rmse_e == pytest.approx(np.sqrt((9.0 + 1.0) / 2))
    assert errors.mae_f == pytest.approx(9.0 / 6)
    assert errors.rmse_f == pytest.approx(np.sqrt((1.0 + 4.0 + 4.0 + 16.0) / 6))
    in_ev = {**mae_rmse("e", predicted_e - reference_e), **mae_rmse("f", predicted_f - reference_f)}
    assert asdict(errors) == pytest.approx({key: 1e3 * value for key, value in in_ev.items()})


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
    mmea = training_command("mmea", 123, settings, scratch_flags)
    scratch = training_command("scratch", 123, settings, scratch_flags)
    assert mmea[1:3] == ["-m", "mace.cli.run_train"]
    assert f"--foundation_model={settings.foundation.resolve()}" in mmea and "--adapter=mmea" in mmea
    assert not any(flag.startswith(("--foundation_model", "--adapter")) for flag in scratch)
    assert scratch[-3:] == scratch_flags
    shared = ["--max_num_epochs=4", "--eval_interval=1", "--device=cpu", "--E0s=average", "--ema_decay=0.995",
              "--forces_weight=1000", "--batch_size=5", "--valid_fraction=0.5", "--seed=123"]
    assert all(flag in mmea and flag in scratch for flag in shared)
    assert "--name=aspirin-mmea" in mmea and "--swa" not in mmea
    paper = training_command("elora", 123, _settings(tmp_path, PROTOCOLS["paper"]), scratch_flags)
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


# --------------------------------------------------------------------------------------
# Protocol cpu100: several seeds, runs side by side, reported against the anchors
# --------------------------------------------------------------------------------------


def test_cpu100_commands_are_exactly_the_anchors_command_plus_the_run_files(tmp_path):
    settings = _settings(tmp_path, PROTOCOLS["cpu100"], methods=METHODS)
    run_files = [
        "--name=rmd17-aspirin",
        f"--train_file={settings.train_file.resolve()}",
        f"--test_file={settings.test_file.resolve()}",
    ]
    assert "--valid_fraction=0.5" in ANCHOR_FLAGS and "--seed=123" in ANCHOR_FLAGS
    for method in ("mmea", "elora", "lora", "none"):
        command = training_command(method, 123, settings, ["--ignored_scratch_flag"])
        assert command[:3] == [sys.executable, "-m", "mace.cli.run_train"]
        expected = ANCHOR_FLAGS + run_files + [
            f"--foundation_model={settings.foundation.resolve()}", f"--adapter={method}"
        ]
        assert sorted(command[3:]) == sorted(expected)  # same flags, none twice, nothing else
    scratch = training_command("scratch", 124, settings, ["--ignored_scratch_flag"])
    seed_124 = [flag.replace("--seed=123", "--seed=124") for flag in ANCHOR_FLAGS]
    assert sorted(scratch[3:]) == sorted(seed_124 + run_files)
    assert not any(flag.startswith(("--foundation_model", "--adapter", "--eval_interval")) for flag in scratch)


def test_children_of_cpu100_get_one_thread_and_the_run_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert child_environment(PROTOCOLS["cpu"])["OMP_NUM_THREADS"] == "2"  # left as it is
    environment = child_environment(PROTOCOLS["cpu100"])
    assert (environment["OMP_NUM_THREADS"], environment["MKL_NUM_THREADS"]) == ("1", "1")
    work_dir = tmp_path / "mmea" / "seed-123"
    work_dir.mkdir(parents=True)
    (work_dir / "stale.txt").write_text("from an earlier run")
    show_threads = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])"
    record = run_training("mmea", [sys.executable, "-c", show_threads], work_dir, environment)
    assert (work_dir / "stdout.txt").read_text() == "1 1\n"
    assert not (work_dir / "stale.txt").exists()
    assert record.returncode == 0 and record.peak_rss_mb > 0
    assert json.loads((work_dir / "run.json").read_text()) == asdict(record)


def test_cpu100_keeps_one_work_folder_per_method_and_seed(tmp_path):
    settings = _settings(tmp_path, PROTOCOLS["cpu100"], seeds=(123, 124), methods=("mmea", "scratch"))
    assert settings.runs() == [Run("mmea", 123), Run("mmea", 124), Run("scratch", 123), Run("scratch", 124)]
    files = settings.run_files(Run("scratch", 124))
    assert files.work_dir == tmp_path / "out" / "scratch" / "seed-124"
    assert files.main_model == files.work_dir / "rmd17-aspirin.model"
    assert files.swa_model == files.work_dir / "rmd17-aspirin_swa.model"
    assert files.log == files.work_dir / "logs" / "rmd17-aspirin_run-124.log"
    assert files.results == files.work_dir / "results" / "rmd17-aspirin_run-124_train.txt"
    single = _settings(tmp_path)
    assert single.work_dir("mmea", 123) == tmp_path / "out" / "mmea"  # cpu and paper as before
    assert single.run_name("mmea") == "aspirin-mmea"


def test_cpu100_defaults_to_two_jobs_and_its_own_report_folder(tmp_path):
    data = tmp_path / "revised_aspirin"
    data.mkdir()
    for path in (tmp_path / "foundation.model", data / "train.xyz", data / "test.xyz"):
        path.write_text("")
    inputs = ["--foundation", str(tmp_path / "foundation.model"), "--train_file", str(data / "train.xyz")]
    settings = resolve_settings(parse_arguments(["--protocol", "cpu100", "--seeds", "123", "124", "125", *inputs]))
    assert settings.out == REPO_ROOT / "benchmarks" / "results" / "cpu100"
    assert (settings.jobs, settings.seeds, settings.test_file) == (2, (123, 124, 125), data / "test.xyz")
    assert (settings.protocol.epochs, settings.protocol.start_swa, settings.protocol.max_test) == (100, 80, None)
    assert resolve_settings(parse_arguments(["--protocol", "cpu100", "--jobs", "1", *inputs])).jobs == 1
    single = resolve_settings(parse_arguments(["--seed", "7", *inputs]))
    assert (single.seeds, single.jobs, single.out.name) == ((7,), 1, "aspirin")
    with pytest.raises(SystemExit):
        resolve_settings(parse_arguments(["--seeds", "1", "2", *inputs]))


def _finished_run(settings: BenchmarkSettings, run: Run, returncode: int, models) -> None:
    files = settings.run_files(run)
    files.work_dir.mkdir(parents=True)
    (files.work_dir / "run.json").write_text(json.dumps(asdict(RunRecord(run.method, returncode, 60.0, 900.0))))
    for model in models:
        getattr(files, model).write_bytes(b"model")


def test_reuse_keeps_only_runs_that_succeeded_and_left_their_models(tmp_path):
    settings = _settings(tmp_path, PROTOCOLS["cpu100"], methods=DEFAULT_METHODS)
    _finished_run(settings, Run("mmea", 123), 0, ("main_model", "swa_model"))
    _finished_run(settings, Run("elora", 123), 0, ("main_model",))  # stage two's model is missing
    _finished_run(settings, Run("none", 123), 1, ("main_model", "swa_model"))
    def reusable(settings: BenchmarkSettings, reuse: bool):
        return split_reusable(settings.runs(), settings.run_files, settings.protocol, reuse)

    kept, to_train = reusable(settings, reuse=True)
    assert kept == {Run("mmea", 123): RunRecord("mmea", 0, 60.0, 900.0)}
    assert to_train == [Run("elora", 123), Run("none", 123), Run("scratch", 123)]
    assert reusable(settings, reuse=False) == ({}, settings.runs())
    assert list(reusable(_settings(tmp_path, PROTOCOLS["cpu"]), reuse=True)[0]) == []  # other layout


def test_train_side_by_side_keeps_the_order_of_the_runs():
    finished = train_side_by_side(["b", "a", "c"], lambda name: RunRecord(name, 0, 1.0, 2.0), jobs=2)
    assert list(finished) == ["b", "a", "c"]
    assert [record.method for record in finished.values()] == ["b", "a", "c"]


def test_report_only_trains_nothing_and_reports_the_finished_runs(tmp_path, capsys):
    settings = _settings(tmp_path, PROTOCOLS["cpu100"], methods=("mmea", "elora"))
    settings = replace(settings, seeds=(123, 124))
    _finished_run(settings, Run("mmea", 123), 0, ("main_model", "swa_model"))
    _finished_run(settings, Run("mmea", 124), 0, ("main_model", "swa_model"))
    _finished_run(settings, Run("elora", 123), 0, ("main_model", "swa_model"))
    records = train_all(settings, [], reuse=False, report_only=True)
    assert list(records) == [Run("mmea", 123), Run("mmea", 124), Run("elora", 123)]
    assert "[elora seed 124] no finished run" in capsys.readouterr().out


def test_runs_without_a_work_folder_keep_the_numbers_of_the_existing_results_json(tmp_path):
    settings = replace(_settings(tmp_path, PROTOCOLS["cpu100"], methods=("mmea", "elora")), seeds=(123, 124))
    earlier = [_score("mmea", 123, 21.0, 40.0, 40.5), _score("elora", 124, 20.0, 41.0, 41.5), _failed("elora", 123)]
    summaries = {method: summarize_method(method, [s for s in earlier if s.method == method]) for method in ("mmea", "elora")}
    numbers = anchored_json(settings, earlier, summaries, 1000, "python benchmarks/compare_methods.py")
    missing = [Run("mmea", 123), Run("elora", 123), Run("elora", 124)]
    assert carried_over_scores(settings, missing) == {}  # no results.json yet
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "results.json").write_text(json.dumps(numbers))
    carried = carried_over_scores(settings, missing)
    assert carried == {Run("mmea", 123): earlier[0], Run("elora", 124): earlier[1]}  # the failed run is not kept
    other_test_file = replace(settings, test_file=tmp_path / "other.xyz")
    assert carried_over_scores(other_test_file, missing) == {}


def test_spread_over_seeds_is_mean_and_half_range():
    value = spread([21.0, 22.0, 23.6])
    assert (value.mean, value.half_range, value.count) == (pytest.approx(22.2), pytest.approx(1.3), 3)
    assert format_spread(value, 1) == "22.2 ± 1.3"
    assert format_spread(spread([7.04]), 1) == "7.0"
    assert spread([]) is None and format_spread(None, 1) == "-"


def test_method_summary_covers_the_finished_runs_and_counts_the_failed_ones():
    scores = [_score("mmea", 123, 21.0, 40.0, 40.5, 1440.0), _score("mmea", 124, 22.0, 42.0, 41.0, 1560.0),
              _failed("mmea", 125)]
    summary = summarize_method("mmea", scores)
    assert (summary.finished, summary.failed, summary.trainable) == (2, 1, (72_378,))
    assert (summary.mae_e.mean, summary.mae_e.half_range) == (pytest.approx(21.5), pytest.approx(0.5))
    assert (summary.mae_f.mean, summary.mae_f.half_range) == (pytest.approx(41.0), pytest.approx(1.0))
    assert (summary.wall_min.mean, summary.wall_min.half_range) == (pytest.approx(25.0), pytest.approx(1.0))
    assert summary.main_mae_f.mean == pytest.approx(40.75)
    expected_change = (100 * (40.0 - 40.5) / 40.5 + 100 * (42.0 - 41.0) / 41.0) / 2
    assert summary.stage_two_force_change_pct.mean == pytest.approx(expected_change)
    nothing = summarize_method("elora", [_failed("elora", 123)])
    assert (nothing.finished, nothing.failed, nothing.mae_f, nothing.trainable) == (0, 1, None, ())


def test_anchor_comparison_marks_each_mean_against_three_percent_over_its_anchor():
    assert faithful_bound(41.3) == pytest.approx(42.539)
    assert bound_mark(Spread(42.5, 3.0, 3), faithful_bound(41.3)) == "pass"
    assert bound_mark(Spread(42.6, 0.1, 3), faithful_bound(41.3)) == "FAIL"
    assert bound_mark(None, 42.5) == "-"
    summaries = {
        "mmea": summarize_method("mmea", [_score("mmea", 123, 21.0, 40.0, 40.5), _score("mmea", 124, 22.0, 42.0, 41.0),
                                          _failed("mmea", 125)]),
        "scratch": summarize_method("scratch", [_score("scratch", 123, 40.0, 85.0, 84.0)]),
    }
    lines = anchor_table(summaries).splitlines()
    assert lines[0].startswith("| method | runs | trainable parameters | test MAE E (meV) | test MAE F (meV/A) |")
    assert lines[2] == ("| MMEA (ours) | 2 (+1 failed) | 72,378 | 21.5 ± 0.5 | 41.0 ± 1.0 | 25.0 ± 0.0 "
                        "| 1480 ± 0 | 22.6 / 42.5 | pass | pass | yes |")
    assert lines[3] == "| MMEA anchor (MMEA reference code, rank 16) | 1 | 72,378 | 21.9 | 41.3 | 16.9 | ~1500 |  |  |  |  |"
    assert lines[4] == ("| from scratch (ours) | 1 | 241,296 | 40.0 | 85.0 | 25.0 | 1480 | 46.0 / 82.0 "
                        "| pass | FAIL | yes |")
    assert lines[5].startswith("| from scratch anchor (upstream mace-torch 0.3.5) | 1 | 241,296 | 44.7 | 79.6 | 16.2 |")
    assert "E 21.5 ± 0.5 → FAIL, F 41.0 ± 1.0 → FAIL" in better_target_line(summaries["mmea"])
    better = summarize_method("mmea", [_score("mmea", 123, 19.7, 37.0, 37.0)])
    assert "E 19.7 → pass, F 37.0 → pass" in better_target_line(better)


def test_anchored_report_has_the_command_all_three_tables_and_the_numbers_as_json(tmp_path):
    settings = _settings(tmp_path, PROTOCOLS["cpu100"], seeds=(123, 124), methods=("mmea", "scratch"))
    scores = [_score("mmea", 123, 21.0, 40.0, 40.5), _score("mmea", 124, 22.0, 42.0, 41.0),
              _score("scratch", 123, 40.0, 85.0, 84.0), _failed("scratch", 124)]
    summaries = {method: summarize_method(method, [s for s in scores if s.method == method]) for method in settings.methods}
    report = anchored_markdown(settings, scores, summaries, 1000, {"from scratch, seed 124": "Traceback\nBoom"}, "python x.py")
    assert report.startswith("# Protocol cpu100: fine-tuning methods on aspirin against the anchors\n")
    assert "1000 configurations of" in report and "(seed 123, 124)" in report
    assert "python -m mace.cli.run_train --name=rmd17-aspirin --seed=123" in report and "--adapter=mmea" in report
    assert "--eval_interval" not in report
    assert "## Against the anchors (mean ± half-range" in report and anchor_table(summaries) in report
    assert "## Main stage best" in report and main_stage_table(summaries) in report
    assert "| MMEA | 2 | 22.0 ± 0.5 | 40.8 ± 0.2 |" in main_stage_table(summaries)
    assert "| from scratch | 124 | 1 | - | - | - | - | - | - | - | - | 0.5 | 900 |" in report
    assert "../shared/docs/anchors.md" in report and "### from scratch, seed 124" in report
    numbers = json.loads(json.dumps(anchored_json(settings, scores, summaries, 1000, "python x.py")))
    assert [(run["method"], run["seed"], run["returncode"]) for run in numbers["runs"]] == [
        ("mmea", 123, 0), ("mmea", 124, 0), ("scratch", 123, 0), ("scratch", 124, 1)]
    assert numbers["runs"][1]["final"]["mae_f"] == 42.0 and numbers["runs"][1]["main_best"]["mae_f"] == 41.0
    assert numbers["methods"]["mmea"]["mae_f"]["mean"] == pytest.approx(41.0)
    assert numbers["anchors"]["scratch"]["mae_f"] == 79.6 and numbers["faithful_tolerance"] == 1.03


def test_test_errors_are_kept_beside_the_model_until_it_changes(tmp_path, monkeypatch):
    predictions = []

    def fake_predictions(model_path, configs, device):
        predictions.append(model_path)
        return np.array([c.energy + 0.001 for c in configs]), np.full((2 * len(configs), 3), 0.002)

    monkeypatch.setattr(compare_methods, "predictions_of", fake_predictions)
    configs = [SimpleNamespace(energy=-10.0 * i, forces=np.zeros((2, 3))) for i in range(3)]
    settings = _settings(tmp_path, PROTOCOLS["cpu100"])
    model = tmp_path / "rmd17-aspirin_swa.model"
    model.write_bytes(b"weights")
    errors = model_test_errors(model, configs, settings)
    assert (errors.mae_e, errors.mae_f) == (pytest.approx(1.0), pytest.approx(2.0))
    assert (tmp_path / "rmd17-aspirin_swa_test_errors.json").is_file()
    assert model_test_errors(model, configs, settings) == errors and len(predictions) == 1
    model.write_bytes(b"retrained weights")
    model_test_errors(model, configs, settings)
    model_test_errors(model, configs[:2], settings)
    assert len(predictions) == 3


# --------------------------------------------------------------------------------------
# The seed command as data (benchmarks/protocols.py) and where the data are
# --------------------------------------------------------------------------------------


def test_the_seed_commands_flag_groups_hold_each_flag_once():
    groups = (protocols.FILE_FLAGS, protocols.ARCHITECTURE_FLAGS, protocols.TRAINING_FLAGS, protocols.RUN_FLAGS)
    names = [name for group in groups for name in group]
    assert sorted(names) == sorted(SEED_COMMAND) and len(set(names)) == len(names)
    assert list(ANCHOR_COMMAND) == list(SEED_COMMAND)
    changed = {name for name in SEED_COMMAND if ANCHOR_COMMAND[name] != SEED_COMMAND[name]}
    assert changed == {"num_channels", "max_num_epochs", "start_swa", "device", "foundation_model"}
    assert (DEFAULT_FOUNDATION, DEFAULT_TRAIN_FILE) == (
        "foundation_model/MACE-rMD17x9_c64.model", "dataset/dataset_rmd17/revised_aspirin/train.xyz")


def test_the_seed_command_and_the_anchors_command_are_the_documented_ones():
    """The seed README's 'Quick Validation' command and anchors.md's cpu100 command, as written."""
    assert command_flags(SEED_COMMAND) == documented_seed_command()
    documented_order = [name for name in ANCHOR_COMMAND if name not in RUN_FILE_FLAGS + ("valid_fraction",)]
    assert documented_anchor_flags() == command_flags(ANCHOR_COMMAND, documented_order)


def test_changing_the_seed_command_keeps_its_order_and_refuses_unknown_flags(capsys):
    flags = protocols.seed_command(max_num_epochs="5", device="cpu")
    assert list(flags) == list(SEED_COMMAND) and (flags["max_num_epochs"], flags["device"]) == ("5", "cpu")
    assert command_flags(flags, ["ema", "ema_decay"]) == ["--ema", "--ema_decay=0.995"]
    with pytest.raises(KeyError, match="no flag max_epochs"):
        protocols.seed_command(max_epochs="5")
    with pytest.raises(KeyError, match="switch"):
        protocols.value_of(SEED_COMMAND, "swa")
    # What scripts/quick_validation.sh runs: the printed flags, quoted for the shell.
    assert protocols.main(["max_num_epochs=5", "foundation_model=my model.model"]) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed == command_flags(protocols.seed_command(max_num_epochs="5", foundation_model="my model.model"))
    with pytest.raises(SystemExit):
        protocols.main(["max_epochs=5"])


def test_data_files_are_looked_up_where_repro_data_fetch_looks(tmp_path, monkeypatch):
    shared, mirror = tmp_path / "shared", tmp_path / "mirror"
    monkeypatch.setenv("MMEA_SHARED", str(shared))
    monkeypatch.delenv("MMEA_MIRROR", raising=False)
    assert data_roots() == [REPO_ROOT / "repro_data", shared / "repro_data"]
    monkeypatch.setenv("MMEA_MIRROR", str(mirror))
    assert data_roots() == [REPO_ROOT / "repro_data", mirror, shared / "repro_data"]
    relative = "foundation_model/only-in-a-test-mirror.model"
    assert default_data_path(relative) == REPO_ROOT / "repro_data" / relative  # nowhere yet
    (shared / "repro_data" / relative).parent.mkdir(parents=True)
    (shared / "repro_data" / relative).write_bytes(b"")
    assert default_data_path(relative) == shared / "repro_data" / relative
