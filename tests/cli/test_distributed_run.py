"""``run_train --distributed`` under torchrun: two CPU processes (gloo) on 10 aspirin frames.

Each run starts real processes (torchrun, then one run_train per rank); a tiny model keeps
each run to a few seconds of training, most of the time goes to starting the processes.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest

from mace.data import load_from_xyz
from mace.modules import load_model
from mace.modules.predict import predict
from mace.training.metrics import mae_rmse
from tests.shared import free_local_port
from tests.cli.test_run_train import TINY_FLAGS, aspirin, read_results, write_frames  # noqa: F401 (fixture)

RUN_FLAGS = TINY_FLAGS + [
    "--name=ddp", "--train_file=tiny.xyz", "--test_file=test.xyz", "--ema", "--swa", "--batch_size=2",
    "--error_table=TotalMAE", "--distributed", "--launcher=torchrun",
]


def start_torchrun(cwd: Path, argv: Sequence[str]) -> subprocess.Popen:
    """Two run_train processes under torchrun."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_local_port()}",
        "-m", "mace.cli.run_train", *argv,
    ]
    return subprocess.Popen(
        command, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors if len(errors) < 8000 else f"{errors[:4000]}\n[...]\n{errors[-4000:]}"


@pytest.fixture(scope="module")
def two_process_run(aspirin: list, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    write_frames(folder / "tiny.xyz", aspirin[:8])
    write_frames(folder / "test.xyz", aspirin[8:])
    finish(start_torchrun(folder, RUN_FLAGS + ["--max_num_epochs=3", "--start_swa=2"]))
    return folder


def test_a_two_process_run_writes_one_set_of_outputs(two_process_run: Path) -> None:
    assert sorted(p.name for p in (two_process_run / "logs").iterdir()) == ["ddp_run-123.log"]
    log = (two_process_run / "logs" / "ddp_run-123.log").read_text()
    assert "Data-parallel training: 2 processes (--launcher torchrun)" in log
    assert log.count("INFO: Epoch 1:") == 1 and log.rstrip().endswith("INFO: Done")
    records = read_results(two_process_run, "ddp_run-123")
    assert [r["mode"] for r in records].count("parameters") == 1
    assert [r["epoch"] for r in records if r["mode"] == "eval"] == [0, 1, 2]
    assert (two_process_run / "ddp.model").is_file() and (two_process_run / "ddp_swa.model").is_file()
    assert not list(two_process_run.rglob("*.lock")) and not list(two_process_run.rglob(".*.tmp"))


@pytest.mark.parametrize("model_name", ["ddp.model", "ddp_swa.model"])
def test_final_errors_equal_a_single_process_evaluation_of_the_saved_model(two_process_run: Path, model_name: str) -> None:
    final = {
        r["set"]: r for r in read_results(two_process_run, "ddp_run-123") if r["mode"] == "final" and r["model"] == model_name
    }
    _, configs = load_from_xyz(str(two_process_run / "test.xyz"), energy_key="REF_energy", forces_key="REF_forces")
    predictions = predict(load_model(str(two_process_run / model_name)), configs, batch_size=1)
    energy_errors = np.array([p.energy - c.energy for p, c in zip(predictions, configs)])
    force_errors = np.concatenate([(p.forces - c.forces).ravel() for p, c in zip(predictions, configs)])
    expected = {**mae_rmse("e", energy_errors), **mae_rmse("f", force_errors)}
    for key, value in expected.items():  # energies of -17,600 eV summed in other orders: 1e-7 eV apart
        assert final["test"][key] == pytest.approx(value, rel=1e-9, abs=1e-7), key


def process_tree(root: int) -> List[int]:
    """``root`` and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def kill_tree(root: int) -> None:
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def checkpoint_epochs(folder: Path) -> List[int]:
    return sorted(int(p.stem.split("epoch-")[1].split("_")[0]) for p in (folder / "checkpoints").glob("*.pt"))


def test_a_killed_two_process_run_resumes_with_restart_latest(aspirin: list, tmp_path: Path) -> None:
    write_frames(tmp_path / "tiny.xyz", aspirin[:8])
    write_frames(tmp_path / "test.xyz", aspirin[8:])
    argv = RUN_FLAGS + ["--max_num_epochs=6", "--start_swa=4"]
    process = start_torchrun(tmp_path, argv)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "checkpoints").is_dir() or not checkpoint_epochs(tmp_path):
            assert process.poll() is None, f"torchrun exited with {process.returncode} before a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        kill_tree(process.pid)
        process.wait()
    killed_at = max(checkpoint_epochs(tmp_path))
    assert killed_at < 5 and not (tmp_path / "ddp.model").exists()

    finish(start_torchrun(tmp_path, argv + ["--restart_latest"]))
    log = (tmp_path / "logs" / "ddp_run-123.log").read_text()
    assert f"Resuming after epoch {killed_at} from checkpoints/ddp_run-123_epoch-{killed_at}.pt" in log
    evaluations = [r["epoch"] for r in read_results(tmp_path, "ddp_run-123") if r["mode"] == "eval"]
    assert evaluations == list(range(6))
    assert (tmp_path / "ddp.model").is_file() and (tmp_path / "ddp_swa.model").is_file()
