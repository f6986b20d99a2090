"""--restart_latest pieces: the settings a checkpoint records and compares, the fallback past
a damaged newest checkpoint, and the result lines a resumed run writes again."""
import json
import logging
from pathlib import Path

import pytest
import torch

from mace.cli.arg_parser import defining_settings, parse_args
from mace.training.checkpoint import CheckpointHandler
from mace.core.errors import UserInputError
from mace.training.restart import check_same_run, drop_results_after, newest_readable_checkpoint

FLAGS = ["--name=run", "--train_file=train.xyz", "--lr=0.01", "--max_num_epochs=4"]
CPU = torch.device("cpu")


def settings(*extra: str) -> dict:
    return defining_settings(parse_args(FLAGS + list(extra)))


def test_settings_that_may_change_on_restart_are_not_recorded() -> None:
    recorded = settings()
    assert recorded["lr"] == 0.01 and recorded["hidden_irreps"] == "128x0e + 128x1o"
    assert not {"max_num_epochs", "patience", "eval_interval", "restart_latest", "log_dir"} & set(recorded)
    assert settings("--max_num_epochs=9", "--patience=3", "--restart_latest", "--device=cpu") == recorded


def test_restart_with_other_settings_names_each_difference(tmp_path: Path) -> None:
    saved = {"run_settings": settings()}
    check_same_run(tmp_path / "c.pt", saved, settings("--max_num_epochs=8"))
    with pytest.raises(UserInputError) as refusal:
        check_same_run(tmp_path / "c.pt", saved, settings("--lr=0.02", "--num_channels=8"))
    message = str(refusal.value)
    assert "--lr=0.01 (now 0.02)" in message and "--hidden_irreps='128x0e + 128x1o' (now '8x0e + 8x1o')" in message
    assert "c.pt" in message and "\n" not in message


def test_the_adapter_settings_are_compared_after_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    fine_tune = ("--foundation_model=f.model",)
    monkeypatch.setenv("MMEA_RANK", "8")
    eight = settings(*fine_tune)
    monkeypatch.setenv("MMEA_RANK", "32")
    assert eight["adapter"] == "mmea" and eight["mmea_rank"] == 8
    assert settings(*fine_tune)["mmea_rank"] == 32
    assert settings(*fine_tune, "--mmea_rank=8") == eight


def test_a_checkpoint_older_than_an_adapter_setting_is_compared_with_what_its_absence_meant(tmp_path: Path) -> None:
    """Checkpoints of MMEA runs from before --mmea_input_norm trained gates on raw invariants
    (and, before --mmea_skip_tp, low-rank updates of the skip_tp tensor products)."""
    args = parse_args(FLAGS + ["--foundation_model=f.model"])
    older = args.adapter_settings.older_record()
    assert older == {"mmea_input_norm": "none", "mmea_skip_tp": "low_rank"}
    saved = {"run_settings": {k: v for k, v in defining_settings(args).items() if k != "mmea_input_norm"}}
    with pytest.raises(UserInputError, match=r"--mmea_input_norm='none' \(now 'layer'\)"):
        check_same_run(tmp_path / "c.pt", saved, defining_settings(args), older)
    check_same_run(tmp_path / "c.pt", saved, settings("--foundation_model=f.model", "--mmea_input_norm=none"), older)
    saved = {"run_settings": {k: v for k, v in saved["run_settings"].items() if k != "mmea_skip_tp"}}
    check_same_run(tmp_path / "c.pt", saved, settings("--foundation_model=f.model", "--mmea_input_norm=none"), older)
    with pytest.raises(UserInputError, match=r"--mmea_skip_tp='low_rank' \(now 'frozen'\)"):
        check_same_run(
            tmp_path / "c.pt", saved,
            settings("--foundation_model=f.model", "--mmea_input_norm=none", "--mmea_skip_tp=frozen"), older,
        )


def test_upstreams_lora_switch_is_recorded_as_the_lora_method() -> None:
    lora = settings("--foundation_model=f.model", "--lora")
    assert lora["adapter"] == "lora" and lora["lora_rank"] == 4 and "lora" not in lora
    assert settings("--foundation_model=f.model", "--adapter=lora") == lora


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, caplog) -> None:
    handler = CheckpointHandler(str(tmp_path), "run_run-1", keep=True)
    handler.save({"epoch": 0}, 0, swa=False)
    newest = handler.save({"epoch": 1}, 1, swa=False)
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        path, state = newest_readable_checkpoint(handler, CPU)
    assert path == handler.path(0, swa=False) and state == {"epoch": 0}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(newest) in warnings[0] and "falling back" in warnings[0]


def test_no_readable_checkpoint_is_an_error_and_none_at_all_a_fresh_start(tmp_path: Path) -> None:
    handler = CheckpointHandler(str(tmp_path), "run_run-1")
    assert newest_readable_checkpoint(handler, CPU) is None
    handler.save({"epoch": 0}, 0, swa=False).write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="none of the 1 checkpoint"):
        newest_readable_checkpoint(handler, CPU)


def test_result_lines_after_the_checkpoint_are_dropped(tmp_path: Path) -> None:
    results = tmp_path / "run_train.txt"
    records = [{"mode": mode, "epoch": epoch} for epoch in (0, 1, 2) for mode in ("opt", "eval")]
    earlier_run = [{"mode": "eval", "epoch": 5}]  # an older run appended before: never touched
    lines = [json.dumps(record) + "\n" for record in earlier_run + records]
    results.write_text("".join(lines) + '{"mode": "opt", "epo')  # cut short by the kill
    drop_results_after(results, 1)
    assert results.read_text() == "".join(lines[:5])
    drop_results_after(results, 1)
    assert results.read_text() == "".join(lines[:5])
