"""Smoke test of the product as a user meets it: the seed's rMD17-aspirin fine-tuning command.

Runs ``python -m mace.cli.run_train`` with the shared foundation model for a couple of
epochs on a few aspirin configurations (the seed's flags otherwise), then checks the MMEA
banner, the output files, and that the fine-tuned model's test force MAE is finite and
below the foundation's zero-shot force MAE on the same test configurations.
"""
import re
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import torch

from mace.data import config_from_atoms
from mace.modules import load_model
from mace.tools.predict import predict

FOUNDATION = "repro_data/foundation_model/MACE-rMD17x9_c64.model"
ASPIRIN = "repro_data/dataset/dataset_rmd17/revised_aspirin"


def seed_command(train: Path, test: Path, foundation: Path) -> list:
    return [
        sys.executable, "-m", "mace.cli.run_train",
        "--name=rmd17-Aspirin", f"--train_file={train}", "--valid_fraction=0.5", f"--test_file={test}",
        "--E0s=average", "--model=MACE", "--loss=ef", "--num_interactions=2", "--num_channels=128",
        "--max_L=1", "--correlation=3", "--r_max=5.0", "--lr=0.005", "--forces_weight=1000",
        "--energy_weight=1", "--weight_decay=1e-8", "--clip_grad=100", "--batch_size=5",
        "--valid_batch_size=5", "--max_num_epochs=2", "--scheduler_patience=5", "--ema",
        "--ema_decay=0.995", "--swa", "--start_swa=400", "--error_table=TotalMAE",
        "--default_dtype=float64", "--device=cpu", "--seed=123", "--save_cpu",
        "--energy_key=REF_energy", "--forces_key=REF_forces", f"--foundation_model={foundation}",
    ]


def force_mae(model_path: Path, frames) -> float:
    model = load_model(model_path, dtype=torch.float64)
    predictions = predict(model, [config_from_atoms(atoms) for atoms in frames], batch_size=5)
    return float(np.mean([np.abs(p.forces - a.arrays["REF_forces"]).mean() for p, a in zip(predictions, frames)]))


def test_seed_aspirin_finetuning_beats_zero_shot(shared_dir: Path, tmp_path: Path) -> None:
    foundation = shared_dir / FOUNDATION
    train_frames = ase.io.read(shared_dir / ASPIRIN / "train.xyz", index=":20")
    test_frames = ase.io.read(shared_dir / ASPIRIN / "test.xyz", index=":10")
    ase.io.write(tmp_path / "train.xyz", train_frames)
    ase.io.write(tmp_path / "test.xyz", test_frames)

    completed = subprocess.run(
        seed_command(tmp_path / "train.xyz", tmp_path / "test.xyz", foundation),
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
