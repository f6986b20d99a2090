"""Training-step and inference time and peak memory, ours against upstream mace-torch, in one run.

    python benchmarks/speed.py [--upstream_python /path/to/upstream-venv/bin/python]
                               [--shapes NAME ...] [--threads 1] [--steps 10]
                               [--cli_epochs 4 [--cli_models NAME ...]]

Every measurement runs in a fresh child process (so its peak RSS is its own) on one batch of
five aspirin frames: a training step is the forward pass with forces (graph kept for the
force loss), the loss (sum of squared energies and forces) and its backward pass, followed
by an Adam step over the trainable parameters; inference is the forward pass with forces.
The time is the median over ``--steps`` timed repetitions after two untimed ones. Ours runs
full fine-tuning ('none'), MMEA and ELoRA; upstream (its own environment, given by
``--upstream_python``; skipped without it) runs full training of the same model file.

Model shapes: the shared foundation (64 channels) in float64 and float32; the MACE-OFF23
medium architecture (128 channels, written by upstream's own constructor when its
environment is given, else by ours) in float32; and the two upstream 0.3.16 conformance
foundations (MP-0-style residual blocks; density blocks with ZBL and Agnesi).

``--cli_epochs`` also times whole ``run_train`` commands fine-tuning each of ``--cli_models``
(default: the shared foundation and the two conformance foundations; the anchors' aspirin
flags: 50 training and 50 validation frames, batches of 5, validation every 2 epochs, EMA),
once for 1 epoch and once for 1 + N epochs, in float64 and float32: the difference over N
is the cost of one epoch at the command line, with validation, logging and checkpoints, and
without the start-up and final evaluation both commands pay. The tables go
to ``benchmarks/results/speed/SPEED.md`` (and ``results.json``) and are printed.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO / "repro_data/dataset/dataset_rmd17/revised_aspirin/train.xyz"
FOUNDATION = REPO / "repro_data/foundation_model/MACE-rMD17x9_c64.model"
CONFORMANCE = Path(os.environ.get("MMEA_SHARED", REPO.parent / "shared")) / "conformance-foundations/models"
DEFAULT_OUTPUT = REPO / "benchmarks/results/speed"
OUR_METHODS = ("none", "mmea", "elora")
BATCH_FRAMES = 5


@dataclass(frozen=True)
class Shape:
    """A model file to time and the dtype it runs in; ``build``: made by this script."""

    name: str
    dtype: str
    path: Optional[Path] = None
    build: bool = False


def shapes(work: Path) -> Dict[str, Shape]:
    off23 = work / "off23_medium.model"
    return {
        "foundation-c64-f64": Shape("foundation-c64-f64", "float64", FOUNDATION),
        "foundation-c64-f32": Shape("foundation-c64-f32", "float32", FOUNDATION),
        "off23-c128-f32": Shape("off23-c128-f32", "float32", off23, build=True),
        **{
            f"{name}-v0316-{suffix}": Shape(f"{name}-v0316-{suffix}", dtype, CONFORMANCE / f"{name}_v0316.model")
            for name in ("mpres", "densityzbl")
            for suffix, dtype in (("f64", "float64"), ("f32", "float32"))
        },
    }


# MACE-OFF23 medium's architecture (upstream's constructor keywords), random weights.
OFF23_KEYWORDS = dict(
    r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3, num_interactions=2,
    num_elements=4, MLP_irreps="16x0e", hidden_irreps="128x0e + 128x1o", avg_num_neighbors=12.0,
    atomic_numbers=[1, 6, 7, 8], correlation=3, radial_MLP=[64, 64, 64],
    atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0], atomic_inter_scale=1.0, atomic_inter_shift=0.0,
)

# Writes the OFF23-shaped file with either package's constructor: {imports} brings in the
# interaction classes as ``classes`` and a ``save`` function.
BUILD = """
import json, sys
import numpy as np, torch
{imports}
from e3nn import o3
keywords = json.loads(sys.argv[1])
torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
keywords.update(
    interaction_cls=classes["RealAgnosticResidualInteractionBlock"],
    interaction_cls_first=classes["RealAgnosticInteractionBlock"],
    hidden_irreps=o3.Irreps(keywords["hidden_irreps"]), MLP_irreps=o3.Irreps(keywords["MLP_irreps"]),
    atomic_energies=np.array(keywords["atomic_energies"]), gate=torch.nn.functional.silu)
save(ScaleShiftMACE(**keywords), sys.argv[2])
"""
UPSTREAM_BUILD = BUILD.format(imports=(
    "import mace  # before e3nn, which then loads its constants under torch's weights_only default\n"
    "from mace.modules import ScaleShiftMACE, interaction_classes as classes\n"
    "save = torch.save"))
OUR_BUILD = BUILD.format(imports="from mace.modules import INTERACTION_CLASSES as classes, ScaleShiftMACE, save_model as save")

# The timing loop both children share (after each defines model, batch and dtype).
TIMING_LOOP = """
import resource, statistics, time
mode, steps = sys.argv[4], int(sys.argv[5])
trainable = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.Adam(trainable, lr=1e-4) if mode == "train" else None

def step():
    output = model(dict(batch), training=mode == "train", compute_force=True)
    if mode == "train":
        loss = (output["energy"] ** 2).mean() + (output["forces"] ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

times = []
for repetition in range(steps + 2):
    start = time.perf_counter()
    step()
    if repetition >= 2:
        times.append(time.perf_counter() - start)
print(json.dumps({"median_s": statistics.median(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "trainable": sum(p.numel() for p in trainable)}))
"""

OUR_CHILD = """
import json, sys
import ase.io, torch
from mace.core.torch_setup import keep_freed_memory
keep_freed_memory()  # as run_train and eval_configs do
from mace.adapters import inject_adapters
from mace.data import batch_to_device, collate_graphs, config_from_atoms
from mace.modules.loading import load_model
from mace.modules.predict import model_graphs
path, dtype_name, method = sys.argv[1], sys.argv[2], sys.argv[3]
dtype = getattr(torch, dtype_name)
torch.set_default_dtype(dtype)
model = load_model(path, device="cpu", dtype=dtype)
for parameter in model.parameters():
    parameter.requires_grad_(True)
if method != "none":
    inject_adapters(model, method)
configs = [config_from_atoms(atoms) for atoms in ase.io.read(sys.argv[6], index=":%d" % int(sys.argv[7]))]
batch = batch_to_device(collate_graphs(list(model_graphs(model, configs))), "cpu", dtype)
""" + TIMING_LOOP

UPSTREAM_CHILD = """
import json, sys
import ase.io, torch
import mace  # before e3nn, which then loads its constants under torch's weights_only default
from mace import data, tools
from mace.tools import torch_geometric
path, dtype_name = sys.argv[1], sys.argv[2]
dtype = getattr(torch, dtype_name)
torch.set_default_dtype(dtype)
model = torch.load(path, map_location="cpu", weights_only=False).to(dtype)  # the benchmark's own files
for parameter in model.parameters():
    parameter.requires_grad_(True)
table = tools.AtomicNumberTable([int(z) for z in model.atomic_numbers])
heads = getattr(model, "heads", None)
graphs = [data.AtomicData.from_config(data.config_from_atoms(atoms), z_table=table, cutoff=float(model.r_max), heads=heads)
          for atoms in ase.io.read(sys.argv[6], index=":%d" % int(sys.argv[7]))]
batch = torch_geometric.batch.Batch.from_data_list(graphs).to_dict()
batch = {key: value.to(dtype) if torch.is_floating_point(value) else value for key, value in batch.items()}
""" + TIMING_LOOP


def child_environment(threads: int) -> Dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return environment


def run_child(python: str, code: str, arguments: List[str], threads: int, cwd: Path) -> Dict[str, float]:
    """One measurement in its own process; its last output line is the JSON result."""
    completed = subprocess.run([python, "-c", code, *arguments], cwd=cwd, env=child_environment(threads),
                               capture_output=True, text=True, timeout=3600)
    if completed.returncode != 0:
        raise RuntimeError(f"measurement {arguments[:5]} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def build_off23(path: Path, upstream_python: Optional[str], threads: int) -> str:
    """The OFF23-shaped file, by upstream's constructor when its environment is given."""
    python, code, writer = (upstream_python, UPSTREAM_BUILD, "upstream") if upstream_python else (sys.executable, OUR_BUILD, "ours")
    if not path.is_file():
        # run outside the repository: there, `python -c` would import this package as `mace`
        subprocess.run([python, "-c", code, json.dumps(OFF23_KEYWORDS), str(path)], check=True, cwd=path.parent,
                       env=child_environment(threads), capture_output=True, timeout=600)
    return writer


def measure_shape(shape: Shape, upstream_python: Optional[str], threads: int, steps: int) -> List[Dict]:
    rows = []
    common = [str(shape.path), shape.dtype]
    tail = [str(steps), str(FRAMES), str(BATCH_FRAMES)]
    for mode in ("train", "infer"):
        methods = OUR_METHODS if mode == "train" else ("none",)
        for method in methods:
            ours = run_child(sys.executable, OUR_CHILD, [*common, method, mode, *tail], threads, REPO)
            rows.append({"shape": shape.name, "mode": mode, "method": method, "code": "ours", **ours})
            print(f"{shape.name:22s} {mode:5s} {method:5s} ours     {ours['median_s']:.3f} s  {ours['peak_rss_mb']:.0f} MB", flush=True)
        if upstream_python:
            theirs = run_child(upstream_python, UPSTREAM_CHILD, [*common, "none", mode, *tail], threads, Path("/"))
            rows.append({"shape": shape.name, "mode": mode, "method": "none", "code": "upstream", **theirs})
            print(f"{shape.name:22s} {mode:5s} none  upstream {theirs['median_s']:.3f} s  {theirs['peak_rss_mb']:.0f} MB", flush=True)
    return rows


# The foundation files run_train fine-tunes in the command-line timing.
CLI_MODELS = {
    "foundation-c64": FOUNDATION,
    **{f"{name}-v0316": CONFORMANCE / f"{name}_v0316.model" for name in ("mpres", "densityzbl")},
}
# The anchors' aspirin command (../shared/docs/anchors.md) without SWA and test file; the
# foundation is added per model.
CLI_FLAGS = [
    "--name=speed", "--seed=123", f"--train_file={FRAMES}", "--valid_fraction=0.5", "--energy_key=REF_energy",
    "--forces_key=REF_forces", "--device=cpu", "--loss=ef", "--lr=0.005", "--forces_weight=1000",
    "--energy_weight=1", "--weight_decay=1e-8", "--clip_grad=100", "--batch_size=5", "--valid_batch_size=5",
    "--scheduler_patience=5", "--ema", "--ema_decay=0.995", "--E0s=average", "--error_table=TotalMAE",
    "--save_cpu", "--eval_interval=2", "--model=MACE", "--num_interactions=2", "--num_channels=64",
    "--max_L=1", "--correlation=3", "--r_max=5.0",
]
# Upstream 0.3.16 fine-tunes a foundation with replay heads unless told not to.
UPSTREAM_CLI_FLAGS = ["--multiheads_finetuning=False"]
CLI_DTYPES = ("float64", "float32")


def run_train_seconds(python: str, flags: List[str], threads: int) -> float:
    """Wall time of one run_train command, in a fresh folder outside the repository."""
    with tempfile.TemporaryDirectory(prefix="speed-cli-") as folder:
        start = time.perf_counter()
        completed = subprocess.run([python, "-m", "mace.cli.run_train", *flags], cwd=folder,
                                   env=child_environment(threads), capture_output=True, text=True, timeout=7200)
        seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"run_train {flags[-3:]} failed:\n{completed.stderr[-3000:]}")
    return seconds


def measure_cli_epochs(
    code: str, python: str, model: str, method: str, dtype: str, epochs: int, threads: int
) -> Dict:
    """Seconds per epoch of run_train fine-tuning ``model`` (a name of CLI_MODELS):
    (wall of 1 + epochs) - (wall of 1 epoch), over epochs."""
    flags = CLI_FLAGS + [f"--foundation_model={CLI_MODELS[model]}", f"--default_dtype={dtype}"]
    flags += UPSTREAM_CLI_FLAGS if code == "upstream" else [f"--adapter={method}"]
    one = run_train_seconds(python, flags + ["--max_num_epochs=1"], threads)
    more = run_train_seconds(python, flags + [f"--max_num_epochs={1 + epochs}"], threads)
    row = {"model": model, "dtype": dtype, "method": method, "code": code, "epoch_s": (more - one) / epochs,
           "startup_s": one}
    print(f"run_train {model:18s} {dtype:8s} {method:5s} {code:8s} {row['epoch_s']:.2f} s/epoch", flush=True)
    return row


def measure_cli(upstream_python: Optional[str], models: List[str], epochs: int, threads: int) -> List[Dict]:
    rows = []
    for model in models:
        for dtype in CLI_DTYPES:
            for method in ("none", "mmea"):
                rows.append(measure_cli_epochs("ours", sys.executable, model, method, dtype, epochs, threads))
            if upstream_python:
                rows.append(measure_cli_epochs("upstream", upstream_python, model, "none", dtype, epochs, threads))
    return rows


def cli_report(rows: List[Dict], epochs: int) -> List[str]:
    """The command-line table: seconds per epoch, ours against upstream and MMEA against full."""
    if not rows:
        return []
    lines = [
        "",
        f"## run_train: seconds per epoch (wall of {1 + epochs} epochs minus wall of 1, over {epochs})",
        "",
        "| foundation | dtype | ours, full | upstream, full | ours / upstream | ours, MMEA | MMEA / our full |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        for dtype in CLI_DTYPES:
            pick = {(r["code"], r["method"]): r["epoch_s"] for r in rows if (r["model"], r["dtype"]) == (model, dtype)}
            full, theirs, mmea = pick.get(("ours", "none")), pick.get(("upstream", "none")), pick.get(("ours", "mmea"))
            lines.append(f"| {model} | {dtype} | {fmt(full, 2)} | {fmt(theirs, 2)} | {ratio(full, theirs)} | "
                         f"{fmt(mmea, 2)} | {ratio(mmea, full)} |")
    return lines


def find(rows: List[Dict], shape: str, mode: str, method: str, code: str) -> Optional[Dict]:
    return next((r for r in rows if (r["shape"], r["mode"], r["method"], r["code"]) == (shape, mode, method, code)), None)


def ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    return "-" if numerator is None or denominator is None else f"{numerator / denominator:.2f}"


def value(row: Optional[Dict], key: str) -> Optional[float]:
    return None if row is None else row[key]


def report(rows: List[Dict], names: List[str], settings: Dict, cli_rows: List[Dict]) -> str:
    lines = [
        "# Speed and memory: ours against upstream mace-torch",
        "",
        f"- Generated {settings['when']} by `{settings['command']}`",
        f"- {settings['machine']}; {settings['threads']} thread(s) per measurement, one measurement at a time",
        f"- Batch of {BATCH_FRAMES} aspirin frames; median of {settings['steps']} steps after 2 warm-up steps; "
        "each measurement in a fresh process (peak RSS of that process)",
        f"- Upstream: {settings['upstream'] or 'not given (--upstream_python): our columns only'}; "
        f"OFF23-shaped file written by {settings['off23_writer']}",
        "",
        "## Step time (s): ours against upstream",
        "",
        "| model | step | ours | upstream | ours / upstream |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        for mode, label in (("train", "training, full"), ("infer", "inference")):
            ours = value(find(rows, name, mode, "none", "ours"), "median_s")
            theirs = value(find(rows, name, mode, "none", "upstream"), "median_s")
            lines.append(f"| {name} | {label} | {fmt(ours, 3)} | {fmt(theirs, 3)} | {ratio(ours, theirs)} |")
    lines += [
        "",
        "## Adapters: training step and peak memory against our full fine-tuning",
        "",
        "| model | method | trainable | step (s) | step / full | peak RSS (MB) | memory / full | upstream full peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        full = find(rows, name, "train", "none", "ours")
        upstream = find(rows, name, "train", "none", "upstream")
        for method in OUR_METHODS:
            row = find(rows, name, "train", method, "ours")
            if row is None:
                continue
            lines.append(
                f"| {name} | {method} | {row['trainable']:,} | {row['median_s']:.3f} | "
                f"{ratio(row['median_s'], value(full, 'median_s'))} | {row['peak_rss_mb']:.0f} | "
                f"{ratio(row['peak_rss_mb'], value(full, 'peak_rss_mb'))} | {fmt(value(upstream, 'peak_rss_mb'), 0)} |"
            )
    lines += cli_report(cli_rows, settings["cli_epochs"])
    lines += [
        "",
        "Goals (issue 14): a step and an epoch at the command line at most 0.5x upstream's; an MMEA "
        "or ELoRA step at most 0.8x our full step; MMEA peak memory at most 0.7x full fine-tuning. Peak RSS includes the Python and torch "
        "runtime (a few hundred MB) that every process pays.",
        "",
    ]
    return "\n".join(lines)


def fmt(number: Optional[float], digits: int) -> str:
    return "-" if number is None else f"{number:.{digits}f}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream_python", default=None, help="python of an environment with upstream mace-torch")
    parser.add_argument("--shapes", nargs="*", default=None,
                        help="model shapes to measure (default: all available; none: only --cli_epochs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cli_epochs", type=int, default=0,
                        help="also time run_train per epoch over this many epochs (0: skip)")
    parser.add_argument("--cli_models", nargs="*", default=None,
                        help=f"foundations run_train fine-tunes for --cli_epochs (default: those of {list(CLI_MODELS)} present)")
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    work = args.output_dir / "work"
    work.mkdir(exist_ok=True)
    known = shapes(work)
    unknown = [name for name in args.shapes or [] if name not in known]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {list(known)}")
    unknown_models = [name for name in args.cli_models or [] if name not in CLI_MODELS]
    if unknown_models:
        parser.error(f"unknown --cli_models {unknown_models}; known: {list(CLI_MODELS)}")
    cli_models = [name for name in args.cli_models or CLI_MODELS if CLI_MODELS[name].is_file()]
    if not FRAMES.is_file():
        parser.error(f"{FRAMES} is missing: run python repro_data/fetch.py")
    off23_writer = build_off23(known["off23-c128-f32"].path, args.upstream_python, args.threads)
    names = [name for name in (list(known) if args.shapes is None else args.shapes) if known[name].path.is_file()]
    rows: List[Dict] = []
    for name in names:
        rows += measure_shape(known[name], args.upstream_python, args.threads, args.steps)
    cli_rows = measure_cli(args.upstream_python, cli_models, args.cli_epochs, args.threads) if args.cli_epochs else []
    settings = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible",
        "threads": args.threads,
        "steps": args.steps,
        "upstream": args.upstream_python,
        "off23_writer": off23_writer,
        "cli_epochs": args.cli_epochs,
    }
    text = report(rows, names, settings, cli_rows)
    (args.output_dir / "SPEED.md").write_text(text)
    (args.output_dir / "results.json").write_text(json.dumps({"settings": settings, "rows": rows, "cli_rows": cli_rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
