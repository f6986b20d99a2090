"""Smoke test of the product as a user meets it: the seed's rMD17-aspirin fine-tuning command.

Runs ``python -m mace.cli.run_train`` with the shared foundation model for a couple of
epochs on a few aspirin configurations (the seed's flags otherwise, as
``benchmarks/protocols.py`` holds them), then checks the MMEA banner, the output files, and
that the fine-tuned model's test force MAE is finite and below the foundation's zero-shot
force MAE on the same test configurations.
"""
import re
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import torch

from benchmarks.protocols import SEED_COMMAND, SHARED_FOUNDATION, command_flags, seed_command
from mace.data import config_from_atoms
from mace.modules import load_model
from mace.modules.predict import predict


def smoke_command(train: Path, test: Path, foundation: Path) -> list:
    """The seed command for two epochs on the CPU, with these files."""
    flags = seed_command(train_file=str(train), test_file=str(test), foundation_model=str(foundation),
                         max_num_epochs="2", device="cpu")
    return [sys.executable, "-m", "mace.cli.run_train", *command_flags(flags)]


def force_mae(model_path: Path, frames) -> float:
    model = load_model(model_path, dtype=torch.float64)
    predictions = predict(model, [config_from_atoms(atoms) for atoms in frames], batch_size=5)
    return float(np.mean([np.abs(p.forces - a.arrays["REF_forces"]).mean() for p, a in zip(predictions, frames)]))


def test_seed_aspirin_finetuning_beats_zero_shot(shared_dir: Path, tmp_path: Path) -> None:
    foundation = shared_dir / SHARED_FOUNDATION
    train_frames = ase.io.read(shared_dir / SEED_COMMAND["train_file"], index=":20")
    test_frames = ase.io.read(shared_dir / SEED_COMMAND["test_file"], index=":10")
    ase.io.write(tmp_path / "train.xyz", train_frames)
    ase.io.write(tmp_path / "test.xyz", test_frames)

    completed = subprocess.run(
        smoke_command(tmp_path / "train.xyz", tmp_path / "test.xyz", foundation),
        cwd=tmp_path, capture_output=True, text=True, timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    banner = "=" * 100 + "\n MMEA_RANK:  16\n" + "=" * 100
    assert banner in completed.stdout

    log = (tmp_path / "logs" / "rmd17-Aspirin_run-123.log").read_text()
    assert "MMEA_RANK:  16" in log and "Error-table on" in log
    assert re.search(r"\|\s+test\s+\|", log), "no error-table row for the test set"
    for output in ("rmd17-Aspirin.model", "rmd17-Aspirin_adapter.pt", "results/rmd17-Aspirin_run-123_train.txt"):
        assert (tmp_path / output).is_file(), output

    finetuned = force_mae(tmp_path / "rmd17-Aspirin.model", test_frames)
    zero_shot = force_mae(foundation, test_frames)
    assert np.isfinite(finetuned)
    assert finetuned < zero_shot, (finetuned, zero_shot)
