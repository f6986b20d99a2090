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
                                      "upstream": None, "off23_writer": "ours"})
    assert "| m | training, full | 1.000 | 4.000 | 0.25 |" in text
    assert "| m | inference | 0.500 | - | - |" in text
    assert "| m | mmea | 3 | 0.700 | 0.70 | 400 | 0.50 | 900 |" in text
