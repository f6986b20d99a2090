"""How training scales with the data set and the hardware: memory, loader workers, processes.

    python benchmarks/scale.py                        # all three sections, CPU
    python benchmarks/scale.py --sections workers     # one of: memory workers processes

(a) ``memory``: peak RSS of ``run_train`` (one epoch, then the final error tables) on 1,000
    and 50,000 configurations preprocessed to HDF5 (read lazily), same model and batch size:
    the goal is within 10% of each other.
(b) ``workers``: steps/s and the share of the epoch spent waiting for batches, with 0, 1, 2
    and 4 loader workers building the graphs from HDF5.
(c) ``processes``: configurations/s of one process against two data-parallel processes
    (torchrun, gloo) on the CPU.

Each measurement is a fresh ``run_train`` child (one thread per process); the
configurations are aspirin frames of the shared data set, repeated with small random
displacements to reach the larger sizes (their labels are kept: only cost is measured).
The table is printed and written to ``--out``/SCALE.md.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from repro_data.fetch import shared_folder  # noqa: E402

ASPIRIN = Path("repro_data/dataset/dataset_rmd17/revised_aspirin/test.xyz")
# A small model: the data path, not the model, is what is measured.
MODEL_FLAGS = [
    "--model=MACE", "--num_channels=16", "--max_L=1", "--correlation=2", "--r_max=5.0", "--num_interactions=2",
    "--loss=ef", "--energy_key=REF_energy", "--forces_key=REF_forces", "--default_dtype=float64",
    "--device=cpu", "--eval_interval=1000", "--seed=1",
]


@dataclass
class ChildRun:
    wall_s: float
    peak_rss_mb: float
    epoch_s: List[float]
    data_wait_s: List[float]


def aspirin_frames() -> list:
    import ase.io

    for root in (REPO_ROOT, shared_folder()):
        if root is not None and (root / ASPIRIN).is_file():
            return ase.io.read(root / ASPIRIN, index=":")
    raise SystemExit(f"{ASPIRIN} not found: run `python repro_data/fetch.py` first")


def write_frames(path: Path, count: int, seed: int = 0) -> Path:
    """``count`` aspirin frames: the data set's, then copies displaced by up to 0.01 A."""
    import ase.io

    frames = aspirin_frames()
    rng = np.random.default_rng(seed)
    written = []
    for index in range(count):
        frame = frames[index % len(frames)].copy()
        if index >= len(frames):
            frame.positions += rng.uniform(-0.01, 0.01, size=frame.positions.shape)
        written.append(frame)
    ase.io.write(path, written, format="extxyz")
    return path


def preprocess(xyz: Path, prefix: Path, processes: int) -> Path:
    """HDF5 shards and statistics of ``xyz`` under ``prefix`` (mace.cli.preprocess_data)."""
    command = [
        sys.executable, "-m", "mace.cli.preprocess_data", f"--train_file={xyz}", "--valid_fraction=0.05",
        f"--h5_prefix={prefix}/", "--r_max=5.0", "--E0s=average", "--compute_statistics",
        f"--num_process={processes}", "--energy_key=REF_energy", "--forces_key=REF_forces", "--seed=1",
    ]
    subprocess.run(command, check=True, cwd=prefix.parent, env=one_thread(), stdout=subprocess.DEVNULL)
    return prefix


def one_thread() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_child(command: Sequence[str], work_dir: Path) -> ChildRun:
    """One training child; its own peak RSS (``os.wait4``) and the per-epoch records it wrote."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    with open(work_dir / "stdout.txt", "w", encoding="utf-8") as console:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=work_dir, stdout=console, stderr=subprocess.STDOUT, env=one_thread())
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"training failed (status {status}); see {work_dir / 'stdout.txt'}")
    records = [json.loads(line) for results in (work_dir / "results").glob("*_train.txt") for line in results.read_text().splitlines()]
    epochs = [r for r in records if r["mode"] == "opt"]
    return ChildRun(
        wall_s=wall,
        peak_rss_mb=usage.ru_maxrss / 1024.0,
        epoch_s=[r["time"] for r in epochs],
        data_wait_s=[r.get("data_wait", float("nan")) for r in epochs],
    )


def train_command(h5: Path, extra: Sequence[str], processes: int = 1) -> List[str]:
    run_train = ["-m", "mace.cli.run_train"]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port=29617"]
        extra = [*extra, "--distributed", "--launcher=torchrun"]
    return [
        *launcher, *run_train, "--name=scale", f"--train_file={h5}/train", f"--valid_file={h5}/val",
        f"--statistics_file={h5}/statistics.json", *MODEL_FLAGS, *extra,
    ]


# (a) runs the whole data set through one epoch and the final evaluation: an even smaller
# model keeps the 50,000-configuration point within an hour on one CPU thread.
MEMORY_MODEL_FLAGS = ["--num_channels=8", "--max_L=0"]


def memory_section(work: Path, sizes: Sequence[int], batch: int) -> List[str]:
    """Same model (:data:`MEMORY_MODEL_FLAGS`) and batch size, one epoch and the final
    evaluation of every set: only the data set grows (so do the number of steps and the wall time)."""
    rows = ["| configurations | peak RSS (MB) | wall (s) |", "|---|---|---|"]
    measured = []
    for size in sizes:
        folder = work / f"memory-{size}"
        folder.mkdir(parents=True, exist_ok=True)
        h5 = preprocess(write_frames(folder / "data.xyz", size), folder / "h5", processes=2)
        flags = [*MEMORY_MODEL_FLAGS, f"--batch_size={batch}", "--valid_batch_size=20", "--max_num_epochs=1"]
        run = run_child(train_command(h5, flags), folder / "run")
        measured.append(run.peak_rss_mb)
        rows.append(f"| {size:,} | {run.peak_rss_mb:.0f} | {run.wall_s:.0f} |")
    spread = (max(measured) - min(measured)) / min(measured) * 100.0
    rows.append(f"\nLargest over smallest peak RSS: +{spread:.1f}% (goal: within 10%).")
    return rows


def workers_section(work: Path, counts: Sequence[int], size: int, epochs: int) -> List[str]:
    folder = work / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    h5 = preprocess(write_frames(folder / "data.xyz", size), folder / "h5", processes=2)
    rows = ["| loader workers | steps/s | waiting for data (% of the epoch) |", "|---|---|---|"]
    batch = 5
    steps = int(size * 0.95) // batch
    for count in counts:
        flags = [f"--batch_size={batch}", "--valid_batch_size=20", f"--max_num_epochs={epochs}", f"--num_workers={count}"]
        run = run_child(train_command(h5, flags), folder / f"run-{count}")
        epoch_s, wait_s = run.epoch_s[-1], run.data_wait_s[-1]  # the last epoch: workers started
        rows.append(f"| {count} | {steps / epoch_s:.2f} | {100.0 * wait_s / epoch_s:.1f} |")
    return rows


def processes_section(work: Path, size: int, epochs: int) -> List[str]:
    folder = work / "processes"
    folder.mkdir(parents=True, exist_ok=True)
    h5 = preprocess(write_frames(folder / "data.xyz", size), folder / "h5", processes=2)
    rows = ["| processes (gloo) | batch per process | configurations/s | peak RSS of the largest (MB) |", "|---|---|---|---|"]
    for processes in (1, 2):
        batch = 10 // processes  # the same global batch: the same number of optimiser steps
        flags = [f"--batch_size={batch}", "--valid_batch_size=20", f"--max_num_epochs={epochs}"]
        run = run_child(train_command(h5, flags, processes), folder / f"run-{processes}")
        rate = int(size * 0.95) / run.epoch_s[-1]
        rows.append(f"| {processes} | {batch} | {rate:.1f} | {run.peak_rss_mb:.0f} |")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["memory", "workers", "processes"],
                        choices=["memory", "workers", "processes"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 50000], help="Data set sizes of (a).")
    parser.add_argument("--batch", type=int, default=10, help="Batch size of the (a) runs.")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2, 4], help="Loader workers of (b).")
    parser.add_argument("--size", type=int, default=400, help="Configurations of (b) and (c).")
    parser.add_argument("--epochs", type=int, default=2, help="Epochs of (b) and (c); the last is timed.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mace-scale"), help="Scratch folder.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "scale")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    sections = {
        "memory": ("(a) Peak memory against data set size (HDF5, lazy)", lambda: memory_section(args.work, args.sizes, args.batch)),
        "workers": ("(b) Loader workers", lambda: workers_section(args.work, args.workers, args.size, args.epochs)),
        "processes": ("(c) Data-parallel processes on the CPU", lambda: processes_section(args.work, args.size, args.epochs)),
    }
    lines = [f"# Scaling ({os.cpu_count()} CPU cores, one thread per process)", ""]
    for name in args.sections:
        title, measure = sections[name]
        lines += [f"## {title}", "", *measure(), ""]
        print("\n".join(lines), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "SCALE.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
