"""Fine-tune one foundation model on one data set with every method and compare them.

    python benchmarks/compare_methods.py                       # CPU defaults, a short run
    python benchmarks/compare_methods.py --protocol paper      # the published GPU protocol

Methods: MMEA, ELoRA, full fine-tuning (``--adapter none``) and, as the reference point a
foundation model has to beat, training the same architecture from scratch. Every method
runs ``python -m mace.cli.run_train`` as a child process in its own work folder with the
same data, split, seed, epochs and optimiser settings, so that the only difference is
what trains. The benchmark measures what a user chooses a method by: test errors, the
number of trained parameters, time per epoch and peak memory. It writes ``RESULTS.md``
and ``val_force_mae.png`` into ``--out`` and prints the table.

Test errors are computed here, by :func:`mace.tools.predict.predict` on the test
configurations, rather than read from the training logs: the same code then scores the
fine-tuned models and the untouched foundation (the zero-shot rows), and the number of
test configurations can be capped on slow machines.
"""
import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mace.data.configuration import Configuration, load_from_xyz
from mace.modules.blocks import NonLinearReadoutBlock
from mace.modules.loading import load_model
from mace.modules.models import MACE
from mace.tools.finetuning import foundation_architecture
from mace.tools.predict import predict

REPO_ROOT = Path(__file__).resolve().parents[1]
# Same lookup order as repro_data/fetch.py: fetched copy, $MMEA_MIRROR, ../shared mirror.
MIRROR_ENV = "MMEA_MIRROR"
DATA_ROOTS = (REPO_ROOT / "repro_data", REPO_ROOT.parent / "shared" / "repro_data")
DEFAULT_FOUNDATION = "foundation_model/MACE-rMD17x9_c64.model"
DEFAULT_TRAIN_FILE = "dataset/dataset_rmd17/revised_aspirin/train.xyz"

METHODS = ("mmea", "elora", "none", "scratch")
METHOD_LABELS = {
    "mmea": "MMEA",
    "elora": "ELoRA",
    "none": "full fine-tuning",
    "scratch": "from scratch",
}

# The optimiser and loss settings of the published MMEA runs (repro_data/run.md), shared
# by every method so that only the choice of trained parameters differs between runs.
SHARED_TRAINING_FLAGS = (
    "--loss=ef",
    "--lr=0.005",
    "--forces_weight=1000",
    "--energy_weight=1",
    "--weight_decay=1e-8",
    "--clip_grad=100",
    "--batch_size=5",
    "--valid_batch_size=5",
    "--scheduler_patience=5",
    "--ema",
    "--ema_decay=0.995",
    "--default_dtype=float64",
    "--E0s=average",
    "--error_table=TotalMAE",
    "--save_cpu",
)

TRAINABLE_PATTERNS = (
    re.compile(r"Fine-tuning with adapter '\w+': ([\d,]+) trainable of"),
    re.compile(r"Model: ([\d,]+) trainable parameters"),
)
LOG_TAIL_LINES = 40
MISSING = "-"


@dataclass(frozen=True)
class Protocol:
    """Run length and evaluation settings; ``max_test=None`` scores the whole test file."""

    epochs: int
    start_swa: Optional[int]
    eval_interval: int
    max_test: Optional[int]
    device: str


# 'paper' is the protocol behind the published numbers: 500 epochs with SWA from epoch
# 400, validation every 2nd epoch, the full test set. 'cpu' is sized for a 2-core
# development machine: about 9 s per epoch there when nothing else runs, so all four
# methods take about 5 minutes (ten times longer when other jobs share the cores). It has
# no SWA stage: a single SWA epoch (lr 0.001, energy weight 1000) barely moved the
# energies and doubled the validation force error when tried.
PROTOCOLS: Dict[str, Protocol] = {
    "cpu": Protocol(epochs=4, start_swa=None, eval_interval=1, max_test=100, device="cpu"),
    "paper": Protocol(epochs=500, start_swa=400, eval_interval=2, max_test=None, device="cuda"),
}


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything the runs share; resolved once from the command line."""

    dataset: str
    foundation: Path
    train_file: Path
    test_file: Path
    valid_fraction: float
    energy_key: str
    forces_key: str
    seed: int
    protocol: Protocol
    methods: Tuple[str, ...]
    out: Path

    def run_name(self, method: str) -> str:
        """run_train's --name: it names the run's log, results, checkpoint and model files."""
        return f"{self.dataset}-{method}"

    def work_dir(self, method: str) -> Path:
        """A folder per method: run_train writes logs/, results/ and checkpoints/ below its cwd."""
        return self.out / method


@dataclass
class RunRecord:
    """How one training child process went: exit status, wall time and peak resident memory."""

    method: str
    returncode: int
    wall_s: float
    peak_rss_mb: float


@dataclass(frozen=True)
class ErrorMetrics:
    """Test-set errors in the units the papers report: meV for energies, meV/A for forces."""

    mae_e: float
    rmse_e: float
    mae_f: float
    rmse_f: float


@dataclass(frozen=True)
class ResultRow:
    """One line of RESULTS.md; ``None`` marks a value that does not apply or is unknown."""

    label: str
    errors: Optional[ErrorMetrics]
    trainable: Optional[int]
    seconds_per_epoch: Optional[float]
    peak_memory_mb: Optional[float]


@dataclass(frozen=True)
class TrainingCurves:
    """What the run's results JSON lines say: epoch times and validation force MAE (meV/A)."""

    epoch_times: List[float]
    valid_force_mae: List[Tuple[int, float]]


# --------------------------------------------------------------------------------------
# Finding the inputs
# --------------------------------------------------------------------------------------


def data_roots() -> List[Path]:
    """Folders laid out like repro_data/, in the order repro_data/fetch.py prefers them."""
    roots = [DATA_ROOTS[0]]
    if os.environ.get(MIRROR_ENV):
        roots.append(Path(os.environ[MIRROR_ENV]))
    roots.append(DATA_ROOTS[1])
    return roots


def default_data_path(relative: str) -> Path:
    """The first existing copy of a repro_data file; the fetched location if none exists yet."""
    for root in data_roots():
        candidate = root / relative
        if candidate.is_file():
            return candidate
    return DATA_ROOTS[0] / relative


def dataset_name(train_file: Path) -> str:
    """'aspirin' for .../revised_aspirin/train.xyz; the file's stem where there is no folder name."""
    folder = train_file.resolve().parent.name
    return folder.removeprefix("revised_") if folder else train_file.stem


# --------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------


def scratch_architecture_flags(model: MACE) -> List[str]:
    """run_train flags that rebuild the foundation's architecture with fresh weights.

    ``foundation_architecture`` gives the sizes a fine-tuning run checks its flags against;
    the readout MLP, radial MLP, cutoff envelope and interaction classes are read here as
    well, so that the from-scratch model matches even where run_train's defaults do not.
    """
    architecture: Dict[str, object] = dict(foundation_architecture(model))
    architecture["radial_MLP"] = list(model.interactions[0].conv_tp_weights.hs[1:-1])
    architecture["num_cutoff_basis"] = int(model.radial_embedding.cutoff_fn.p)
    architecture["interaction_first"] = type(model.interactions[0]).__name__
    architecture["interaction"] = type(model.interactions[-1]).__name__
    last_readout = model.readouts[-1]
    if isinstance(last_readout, NonLinearReadoutBlock):
        architecture["MLP_irreps"] = str(last_readout.linear_1.irreps_out)
    flags = [f"--model={type(model).__name__}"]
    return flags + [f"--{flag}={value}" for flag, value in architecture.items()]


def training_command(
    method: str, settings: BenchmarkSettings, scratch_flags: Sequence[str]
) -> List[str]:
    """The run_train command line of one method; file paths absolute, the child runs elsewhere."""
    protocol = settings.protocol
    command = [
        sys.executable, "-m", "mace.cli.run_train",
        f"--name={settings.run_name(method)}",
        f"--seed={settings.seed}",
        f"--train_file={settings.train_file.resolve()}",
        f"--valid_fraction={settings.valid_fraction}",
        f"--energy_key={settings.energy_key}",
        f"--forces_key={settings.forces_key}",
        f"--max_num_epochs={protocol.epochs}",
        f"--eval_interval={protocol.eval_interval}",
        f"--device={protocol.device}",
        *SHARED_TRAINING_FLAGS,
    ]
    if protocol.start_swa is not None:
        command += ["--swa", f"--start_swa={protocol.start_swa}"]
    if method == "scratch":
        return command + list(scratch_flags)
    return command + [f"--foundation_model={settings.foundation.resolve()}", f"--adapter={method}"]


def peak_rss_mb(usage: resource.struct_rusage) -> float:
    """ru_maxrss in MB: Linux reports kilobytes, macOS bytes."""
    divisor = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
    return usage.ru_maxrss / divisor


def run_training(method: str, command: Sequence[str], work_dir: Path) -> RunRecord:
    """Run one training child in a fresh ``work_dir``; console output goes to stdout.txt.

    ``os.wait4`` returns the resource usage of exactly this child, so its peak RSS is not
    mixed up with earlier runs (RUSAGE_CHILDREN only keeps the maximum over all of them).
    """
    if work_dir.exists():
        shutil.rmtree(work_dir)  # results JSON lines append: a stale run would be mixed in
    work_dir.mkdir(parents=True)
    with open(work_dir / "stdout.txt", "w", encoding="utf-8") as console:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=work_dir, stdout=console, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    record = RunRecord(method, process.returncode, wall_s, peak_rss_mb(usage))
    (work_dir / "run.json").write_text(json.dumps(asdict(record)) + "\n", encoding="utf-8")
    return record


def reusable_record(work_dir: Path) -> Optional[RunRecord]:
    """The record of an earlier successful run in ``work_dir`` (for --reuse), else None."""
    path = work_dir / "run.json"
    if not path.is_file():
        return None
    record = RunRecord(**json.loads(path.read_text(encoding="utf-8")))
    return record if record.returncode == 0 else None


# --------------------------------------------------------------------------------------
# Reading a run's outputs
# --------------------------------------------------------------------------------------


def read_training_curves(lines: Sequence[str]) -> TrainingCurves:
    """Epoch times ('opt' lines) and validation force MAE in meV/A ('eval' lines with mae_f)."""
    epoch_times: List[float] = []
    valid_force_mae: List[Tuple[int, float]] = []
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("mode") == "opt":
            epoch_times.append(float(record["time"]))
        elif record.get("mode") == "eval" and "mae_f" in record:
            valid_force_mae.append((int(record["epoch"]), 1e3 * float(record["mae_f"])))
    return TrainingCurves(epoch_times, valid_force_mae)


def parse_trainable_parameters(log_text: str) -> Optional[int]:
    """The trainable-parameter count run_train logs (fine-tuning or from-scratch wording)."""
    for pattern in TRAINABLE_PATTERNS:
        match = pattern.search(log_text)
        if match:
            return int(match.group(1).replace(",", ""))
    return None


def seconds_per_epoch(epoch_times: Sequence[float]) -> Optional[float]:
    """Median training time per epoch: robust to the slower first epoch (allocation, caches)."""
    return statistics.median(epoch_times) if epoch_times else None


def final_model_path(work_dir: Path, name: str) -> Path:
    """The model a user would keep: the SWA-stage model when SWA ran, else the main one."""
    swa = work_dir / f"{name}_swa.model"
    return swa if swa.is_file() else work_dir / f"{name}.model"


def log_tail(work_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a run's console output, where a failing run's traceback is."""
    path = work_dir / "stdout.txt"
    if not path.is_file():
        return "(no console output)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# Test-set evaluation
# --------------------------------------------------------------------------------------


def error_metrics(
    predicted_energies: np.ndarray,
    reference_energies: np.ndarray,
    predicted_forces: np.ndarray,
    reference_forces: np.ndarray,
    remove_mean_offset: bool = False,
) -> ErrorMetrics:
    """MAE and RMSE of total energies (meV) and force components (meV/A).

    ``remove_mean_offset`` subtracts the mean energy error first: a foundation model's own
    E0s differ from the data's reference by a constant per composition, which fitting E0s
    (``--E0s=average``) removes in every fine-tuning run on a one-molecule data set such
    as rMD17; the zero-shot row without that constant shows what the foundation knows
    about the energy surface itself.
    """
    energy_errors = 1e3 * (np.asarray(predicted_energies) - np.asarray(reference_energies))
    if remove_mean_offset:
        energy_errors = energy_errors - energy_errors.mean()
    force_errors = 1e3 * (np.asarray(predicted_forces) - np.asarray(reference_forces)).reshape(-1)
    return ErrorMetrics(
        mae_e=float(np.mean(np.abs(energy_errors))),
        rmse_e=float(np.sqrt(np.mean(energy_errors**2))),
        mae_f=float(np.mean(np.abs(force_errors))),
        rmse_f=float(np.sqrt(np.mean(force_errors**2))),
    )


def load_test_configurations(settings: BenchmarkSettings) -> List[Configuration]:
    """The first ``max_test`` labelled test configurations (all of them when unset)."""
    _, configs = load_from_xyz(str(settings.test_file), energy_key=settings.energy_key, forces_key=settings.forces_key)
    limit = settings.protocol.max_test
    return configs if limit is None else configs[:limit]


def predictions_of(model_path: Path, configs: Sequence[Configuration], device: str) -> Tuple[np.ndarray, np.ndarray]:
    """Total energies (eV) and stacked forces (eV/A) of a saved model on ``configs``."""
    model = load_model(model_path, device=device, dtype=torch.float64)
    predictions = predict(model, configs)
    energies = np.array([p.energy for p in predictions])
    forces = np.concatenate([p.forces for p in predictions])
    return energies, forces


def reference_labels(configs: Sequence[Configuration]) -> Tuple[np.ndarray, np.ndarray]:
    """Reference energies and stacked forces, in the layout :func:`predictions_of` returns."""
    return np.array([c.energy for c in configs]), np.concatenate([c.forces for c in configs])


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _cell(value: Optional[float], digits: int) -> str:
    """A table cell; a dash where the value does not apply (zero-shot costs, failed runs)."""
    return MISSING if value is None else f"{value:.{digits}f}"


def markdown_table(rows: Sequence[ResultRow]) -> str:
    """The comparison as a Markdown table; test errors in meV and meV/A."""
    header = (
        "| method | test E MAE (meV) | test E RMSE (meV) | test F MAE (meV/A) | test F RMSE (meV/A) "
        "| trainable parameters | s / epoch | peak memory (MB) |"
    )
    lines = [header, "|" + "---|" * 8]
    for row in rows:
        errors = row.errors
        error_values = [None] * 4 if errors is None else [errors.mae_e, errors.rmse_e, errors.mae_f, errors.rmse_f]
        cells = [
            row.label,
            *(_cell(value, 1) for value in error_values),
            MISSING if row.trainable is None else f"{row.trainable:,}",
            _cell(row.seconds_per_epoch, 1),
            _cell(row.peak_memory_mb, 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_validation_curves(curves: Mapping[str, Sequence[Tuple[int, float]]], path: Path, title: str) -> None:
    """Validation force MAE against epoch, one line per method, log y-axis."""
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    axes = figure.add_subplot()
    for label, points in curves.items():
        if points:
            epochs, values = zip(*points)
            axes.plot(epochs, values, marker="o", markersize=3, label=label)
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation force MAE (meV/A)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if any(curves.values()):
        axes.legend()
    figure.savefig(path, dpi=120)


def _display_path(path: Path) -> str:
    """Relative to the repository when beside it (../shared/...), so reports carry no home folders."""
    resolved = path.resolve()
    return os.path.relpath(resolved, REPO_ROOT) if resolved.is_relative_to(REPO_ROOT.parent) else str(resolved)


def results_markdown(
    settings: BenchmarkSettings,
    rows: Sequence[ResultRow],
    num_test: int,
    evaluated: Mapping[str, Path],
    failures: Mapping[str, str],
    command_line: str,
) -> str:
    """The whole RESULTS.md: settings, table, how to read it, the plot, failed runs' log tails."""
    protocol = settings.protocol
    swa = f", SWA from epoch {protocol.start_swa}" if protocol.start_swa is not None else ""
    parts = [
        f"# Fine-tuning methods compared on {settings.dataset}",
        "",
        f"- Foundation: `{_display_path(settings.foundation)}`",
        f"- Training data: `{_display_path(settings.train_file)}`, validation fraction "
        f"{settings.valid_fraction} (seed {settings.seed})",
        f"- Test data: {num_test} configurations of `{_display_path(settings.test_file)}`",
        f"- {protocol.epochs} epochs{swa}, device {protocol.device}, "
        f"{os.cpu_count()} CPU cores visible; shared run_train flags: `{' '.join(SHARED_TRAINING_FLAGS)}`",
        f"- Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `{command_line}`",
        "",
        markdown_table(rows),
        "",
        "How to read it:",
        "- Test errors are computed by the benchmark itself (`mace.tools.predict`) on the model "
        "each run saved: " + ", ".join(f"{label}: `{path.name}`" for label, path in evaluated.items()) + ".",
        "- Zero-shot rows: the foundation model as published, with its own E0s; the second row "
        "removes the mean energy error, the constant that `--E0s=average` removes in every "
        "fine-tuning run. Forces are the same in both.",
        "- s / epoch: median of the per-epoch training times that run_train writes "
        "(`results/*_train.txt`, 'opt' lines; validation not included).",
        "- Peak memory: peak resident set size of the training process (host memory; GPU "
        "memory is not included).",
        "- Trainable parameters: the count each run logs.",
        "",
        "![validation force MAE per epoch](val_force_mae.png)",
    ]
    if failures:
        parts += ["", "## Failed runs", ""]
        for method, tail in failures.items():
            parts += [f"### {METHOD_LABELS[method]}", "", "```", tail, "```", ""]
    return "\n".join(parts).rstrip() + "\n"


# --------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------


def train_all(settings: BenchmarkSettings, scratch_flags: Sequence[str], reuse: bool) -> Dict[str, RunRecord]:
    """One training run per method, in order; with ``reuse``, earlier successful runs are kept."""
    records: Dict[str, RunRecord] = {}
    for method in settings.methods:
        work_dir = settings.work_dir(method)
        earlier = reusable_record(work_dir) if reuse else None
        if earlier is not None:
            print(f"[{method}] reusing the run in {work_dir}", flush=True)
            records[method] = earlier
            continue
        command = training_command(method, settings, scratch_flags)
        print(f"[{method}] training in {work_dir}: {shlex.join(command)}", flush=True)
        records[method] = run_training(method, command, work_dir)
        record = records[method]
        print(
            f"[{method}] exit status {record.returncode} after {record.wall_s:.0f} s, "
            f"peak RSS {record.peak_rss_mb:.0f} MB",
            flush=True,
        )
    return records


def zero_shot_rows(settings: BenchmarkSettings, configs: Sequence[Configuration]) -> List[ResultRow]:
    """The untouched foundation, the bar every method must clear (raw and offset-corrected energies)."""
    energies, forces = predictions_of(settings.foundation, configs, settings.protocol.device)
    reference_e, reference_f = reference_labels(configs)
    return [
        ResultRow(f"zero-shot ({label})", error_metrics(energies, reference_e, forces, reference_f, remove), None, None, None)
        for label, remove in (("foundation E0s", False), ("mean offset removed", True))
    ]


def method_row(
    method: str, settings: BenchmarkSettings, record: RunRecord, configs: Sequence[Configuration]
) -> Tuple[ResultRow, TrainingCurves, Path]:
    """Test errors and costs of one finished run, its validation curve and the scored model."""
    work_dir = settings.work_dir(method)
    name = settings.run_name(method)
    results_file = work_dir / "results" / f"{name}_run-{settings.seed}_train.txt"
    curves = read_training_curves(results_file.read_text(encoding="utf-8").splitlines())
    log_text = (work_dir / "logs" / f"{name}_run-{settings.seed}.log").read_text(encoding="utf-8")
    model_path = final_model_path(work_dir, name)
    energies, forces = predictions_of(model_path, configs, settings.protocol.device)
    reference_e, reference_f = reference_labels(configs)
    row = ResultRow(
        label=METHOD_LABELS[method],
        errors=error_metrics(energies, reference_e, forces, reference_f),
        trainable=parse_trainable_parameters(log_text),
        seconds_per_epoch=seconds_per_epoch(curves.epoch_times),
        peak_memory_mb=record.peak_rss_mb,
    )
    return row, curves, model_path


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Benchmark flags; defaults are the CPU protocol on rMD17 aspirin with the shared foundation."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/compare_methods.py",
        description="Fine-tune one foundation model with MMEA, ELoRA and full fine-tuning, train "
        "the same architecture from scratch, and compare test errors, trainable parameters, "
        "time per epoch and peak memory.",
    )
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu",
                        help="'cpu': a short run for a small machine; 'paper': the published "
                        "500-epoch GPU protocol with SWA from epoch 400 and the full test set.")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="Methods to run ('none' is full fine-tuning).")
    parser.add_argument("--foundation", type=Path, default=default_data_path(DEFAULT_FOUNDATION),
                        help="Foundation model file (also the architecture of the from-scratch run).")
    parser.add_argument("--train_file", type=Path, default=default_data_path(DEFAULT_TRAIN_FILE),
                        help="Training extxyz; --valid_fraction of it becomes the validation set.")
    parser.add_argument("--test_file", type=Path, default=None,
                        help="Test extxyz; default: test.xyz next to the training file.")
    parser.add_argument("--dataset", default=None,
                        help="Name used for runs and the default --out; default: from the training file's folder.")
    parser.add_argument("--valid_fraction", type=float, default=0.5)
    parser.add_argument("--energy_key", default="REF_energy")
    parser.add_argument("--forces_key", default="REF_forces")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--epochs", type=int, default=None, help="Override the protocol's epoch count (4 for cpu, 500 for paper); the paper "
                        "protocol's SWA start moves with it (SWA over the last fifth of the epochs).")
    parser.add_argument("--max_test", type=int, default=None,
                        help="Score only the first N test configurations; default: the protocol's "
                        "(100 for cpu, all for paper).")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="Override the protocol's device.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Folder for the work folders and the report; default: benchmarks/results/<dataset>.")
    parser.add_argument("--reuse", action="store_true",
                        help="Keep earlier successful runs found in the work folders instead of retraining.")
    return parser.parse_args(argv)


def swa_start_for(base: Protocol, epochs: Optional[int]) -> Optional[int]:
    """The protocol's SWA start, moved with --epochs so that SWA covers the same final share.

    Clamped so that a short run still has at least one epoch before and one in the SWA stage.
    """
    if base.start_swa is None or epochs is None:
        return base.start_swa
    return max(1, min(epochs - 1, round(base.start_swa * epochs / base.epochs)))


def resolve_settings(args: argparse.Namespace) -> BenchmarkSettings:
    """Protocol defaults overridden by explicit flags; paths checked before any training starts."""
    base = PROTOCOLS[args.protocol]
    protocol = Protocol(
        epochs=base.epochs if args.epochs is None else args.epochs,
        start_swa=swa_start_for(base, args.epochs),
        eval_interval=base.eval_interval,
        max_test=base.max_test if args.max_test is None else args.max_test,
        device=base.device if args.device is None else args.device,
    )
    test_file = args.test_file if args.test_file is not None else args.train_file.with_name("test.xyz")
    for flag, path in (("--foundation", args.foundation), ("--train_file", args.train_file), ("--test_file", test_file)):
        if not path.is_file():
            raise SystemExit(f"{flag} {path}: no such file (python repro_data/fetch.py puts the defaults in place)")
    dataset = args.dataset or dataset_name(args.train_file)
    out = args.out if args.out is not None else Path(__file__).resolve().parent / "results" / dataset
    return BenchmarkSettings(
        dataset=dataset,
        foundation=args.foundation,
        train_file=args.train_file,
        test_file=test_file,
        valid_fraction=args.valid_fraction,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        seed=args.seed,
        protocol=protocol,
        methods=tuple(dict.fromkeys(args.methods)),
        out=out,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train every method, score all models on the same test configurations, write the report.

    Returns 1 when a run failed (its row and log tail are still in the report), else 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(argv)
    settings = resolve_settings(args)
    settings.out.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)  # graphs are built in the default dtype
    scratch_flags = scratch_architecture_flags(load_model(settings.foundation, device="cpu", dtype=torch.float64))
    records = train_all(settings, scratch_flags, args.reuse)

    configs = load_test_configurations(settings)
    print(f"Scoring on {len(configs)} test configurations of {settings.test_file}", flush=True)
    rows = zero_shot_rows(settings, configs)
    curves: Dict[str, Sequence[Tuple[int, float]]] = {}
    evaluated: Dict[str, Path] = {}
    failures: Dict[str, str] = {}
    for method, record in records.items():
        label = METHOD_LABELS[method]
        if record.returncode != 0:
            failures[method] = log_tail(settings.work_dir(method))
            rows.append(ResultRow(f"{label} (failed, exit {record.returncode})", None, None, None, record.peak_rss_mb))
            continue
        row, method_curves, evaluated[label] = method_row(method, settings, record, configs)
        rows.append(row)
        curves[label] = method_curves.valid_force_mae

    plot_validation_curves(curves, settings.out / "val_force_mae.png", f"{settings.dataset}: validation force MAE")
    command_line = shlex.join(["python", "benchmarks/compare_methods.py", *argv])
    report = results_markdown(settings, rows, len(configs), evaluated, failures, command_line)
    (settings.out / "RESULTS.md").write_text(report, encoding="utf-8")
    print(markdown_table(rows))
    for method, tail in failures.items():
        print(f"\n{METHOD_LABELS[method]} failed; end of its console output:\n{tail}", file=sys.stderr)
    print(f"\nWrote {settings.out / 'RESULTS.md'} and {settings.out / 'val_force_mae.png'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
