"""benchmarks/speed.py: one real (tiny) measurement in a child process, and the report's ratios."""
import sys

import pytest

from benchmarks import speed


def test_a_child_measures_a_training_step_of_our_model(shared_dir, tmp_path) -> None:
    model = shared_dir / "conformance-foundations" / "models" / "densityzbl_v0316.model"
    frames = shared_dir / "repro_data" / "dataset" / "dataset_rmd17" / "revised_aspirin" / "train.xyz"
    if not model.is_file() or not frames.is_file():
        pytest.skip("shared conformance model or aspirin frames not found")
    result = speed.run_child(sys.executable, speed.OUR_CHILD, [str(model), "float64", "mmea", "train", "1", str(frames), "2"],
                             threads=1, cwd=speed.REPO)
    assert result["median_s"] > 0 and result["peak_rss_mb"] > 50
    assert 0 < result["trainable"] < 49_648  # MMEA trains fewer than the model's 49,648 parameters


def test_the_report_divides_ours_by_upstream_and_adapters_by_full() -> None:
    rows = [
        {"shape": "m", "mode": "train", "method": "none", "code": "ours", "median_s": 1.0, "peak_rss_mb": 800.0, "trainable": 10},
        {"shape": "m", "mode": "train", "method": "mmea", "code": "ours", "median_s": 0.7, "peak_rss_mb": 400.0, "trainable": 3},
        {"shape": "m", "mode": "train", "method": "none", "code": "upstream", "median_s": 4.0, "peak_rss_mb": 900.0, "trainable": 10},
        {"shape": "m", "mode": "infer", "method": "none", "code": "ours", "median_s": 0.5, "peak_rss_mb": 500.0, "trainable": 10},
    ]
    text = speed.report(rows, ["m"], {"when": "now", "command": "c", "machine": "x", "threads": 1, "steps": 3,
                                      "upstream": None, "off23_writer": "ours", "cli_epochs": 0}, [])
    assert "run_train" not in text
    assert "| m | training, full | 1.000 | 4.000 | 0.25 |" in text
    assert "| m | inference | 0.500 | - | - |" in text
    assert "| m | mmea | 3 | 0.700 | 0.70 | 400 | 0.50 | 900 |" in text


def test_the_command_line_table_divides_seconds_per_epoch() -> None:
    cli_rows = [
        {"model": "f", "dtype": "float64", "method": "none", "code": "ours", "epoch_s": 3.0, "startup_s": 9.0},
        {"model": "f", "dtype": "float64", "method": "mmea", "code": "ours", "epoch_s": 2.4, "startup_s": 9.0},
        {"model": "f", "dtype": "float64", "method": "none", "code": "upstream", "epoch_s": 6.0, "startup_s": 20.0},
        {"model": "g", "dtype": "float32", "method": "none", "code": "ours", "epoch_s": 1.0, "startup_s": 9.0},
    ]
    text = speed.report([], [], {"when": "now", "command": "c", "machine": "x", "threads": 1, "steps": 3,
                                 "upstream": "u", "off23_writer": "ours", "cli_epochs": 3}, cli_rows)
    assert "wall of 4 epochs minus wall of 1, over 3" in text
    assert "| f | float64 | 3.00 | 6.00 | 0.50 | 2.40 | 0.80 |" in text
    assert "| f | float32 | - | - | - | - | - |" in text
    assert "| g | float32 | 1.00 | - | - | - | - |" in text


def test_run_train_is_timed_per_epoch_from_two_real_commands(monkeypatch) -> None:
    walls = {"--max_num_epochs=1": 10.0, "--max_num_epochs=4": 19.0}
    seen = []

    def fake_seconds(python, flags, threads):
        seen.append(flags)
        return walls[flags[-1]]

    monkeypatch.setattr(speed, "run_train_seconds", fake_seconds)
    row = speed.measure_cli_epochs("upstream", "python", "mpres-v0316", "none", "float32", 3, 1)
    assert row["epoch_s"] == pytest.approx(3.0) and row["startup_s"] == 10.0 and row["model"] == "mpres-v0316"
    assert all("--multiheads_finetuning=False" in flags and "--default_dtype=float32" in flags for flags in seen)
    assert all(f"--foundation_model={speed.CLI_MODELS['mpres-v0316']}" in flags for flags in seen)
    assert not any(flag.startswith("--adapter") for flags in seen for flag in flags)
