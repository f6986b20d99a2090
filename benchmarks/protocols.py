"""The seed's reference run_train command as data: the one place Python code spells it out.

The seed (``../shared/seed/MMEA-README.md``, "Quick Validation") fine-tunes a foundation
model on rMD17 aspirin with one run_train command, :data:`SEED_COMMAND`. The measured
anchors (``../shared/docs/anchors.md``, protocol "cpu100") ran the same command with the
shared foundation and its architecture, 100 epochs with SWA from epoch 80, on the CPU:
:data:`ANCHOR_COMMAND`. The benchmark builds its commands from the flag groups below, the
tests build theirs from this module and check that it still says what the two documents
say, and ``scripts/quick_validation.sh`` prints its command with it::

    python benchmarks/protocols.py max_num_epochs=5 device=cpu   # the seed command, changed

File names in the commands are relative to a folder that holds ``repro_data/`` (the
repository after ``python repro_data/fetch.py``, or the shared folder). Only the standard
library is imported here, so that the module also runs as a plain script.
"""
import argparse
import shlex
import sys
from types import MappingProxyType
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# Flag name (no dashes) -> value as written on the command line; None for a switch.
Flags = Mapping[str, Optional[str]]

SEED_COMMAND: Flags = MappingProxyType({  # in the order of the seed README
    "name": "rmd17-Aspirin",
    "train_file": "repro_data/dataset/dataset_rmd17/revised_aspirin/train.xyz",
    "valid_fraction": "0.5",
    "test_file": "repro_data/dataset/dataset_rmd17/revised_aspirin/test.xyz",
    "E0s": "average",
    "model": "MACE",
    "loss": "ef",
    "num_interactions": "2",
    "num_channels": "128",
    "max_L": "1",
    "correlation": "3",
    "r_max": "5.0",
    "lr": "0.005",
    "forces_weight": "1000",
    "energy_weight": "1",
    "weight_decay": "1e-8",
    "clip_grad": "100",
    "batch_size": "5",
    "valid_batch_size": "5",
    "max_num_epochs": "500",
    "scheduler_patience": "5",
    "ema": None,
    "ema_decay": "0.995",
    "swa": None,
    "start_swa": "400",
    "error_table": "TotalMAE",
    "default_dtype": "float64",
    "device": "cuda",
    "seed": "123",
    "save_cpu": None,
    "energy_key": "REF_energy",
    "forces_key": "REF_forces",
    "foundation_model": "repro_data/foundation_model/MACE-OFF23_medium.model",
})

# The command's flags by what they decide; together they are every flag of it, once.
# What the run reads and how it names its outputs.
FILE_FLAGS = ("name", "train_file", "valid_fraction", "test_file", "energy_key", "forces_key", "foundation_model")
# The model's architecture (a fine-tuning run checks it against the foundation's).
ARCHITECTURE_FLAGS = ("model", "num_interactions", "num_channels", "max_L", "correlation", "r_max")
# Loss, optimiser, EMA, precision and outputs: what every compared method shares.
TRAINING_FLAGS = (
    "loss", "lr", "forces_weight", "energy_weight", "weight_decay", "clip_grad", "batch_size",
    "valid_batch_size", "scheduler_patience", "ema", "ema_decay", "default_dtype", "E0s",
    "error_table", "save_cpu",
)
# How long it runs, where, and with which seed.
RUN_FLAGS = ("max_num_epochs", "swa", "start_swa", "device", "seed")

# The shared foundation (64 channels, L=1, 2 interactions, correlation 3, r_max 5).
SHARED_FOUNDATION = "repro_data/foundation_model/MACE-rMD17x9_c64.model"


def changed(flags: Flags, **changes: Optional[str]) -> Dict[str, Optional[str]]:
    """``flags`` with the values of ``changes`` in place of theirs (order kept).

    Only flags the command has can change, so that a misspelt name fails instead of adding
    a flag; add others to the result explicitly.
    """
    unknown = sorted(set(changes) - set(flags))
    if unknown:
        raise KeyError(f"the command has no flag {', '.join(unknown)}")
    return {**flags, **changes}


def seed_command(**changes: Optional[str]) -> Dict[str, Optional[str]]:
    """The seed command with ``changes`` (e.g. ``max_num_epochs="2", device="cpu"``)."""
    return changed(SEED_COMMAND, **changes)


# anchors.md, protocol "cpu100": the seed command with the shared foundation's architecture,
# 100 epochs with SWA from epoch 80, on the CPU (one thread per run).
ANCHOR_COMMAND: Flags = MappingProxyType(seed_command(
    num_channels="64", max_num_epochs="100", start_swa="80", device="cpu", foundation_model=SHARED_FOUNDATION,
))


def value_of(flags: Flags, name: str) -> str:
    """The value of a flag that takes one (a switch has none)."""
    value = flags[name]
    if value is None:
        raise KeyError(f"--{name} is a switch: it has no value")
    return value


def command_flags(flags: Flags, names: Optional[Iterable[str]] = None) -> List[str]:
    """``--name=value`` (``--name`` for a switch) for ``names`` of ``flags``; all of them, in order, by default."""
    selected = flags if names is None else names
    return [f"--{name}" if flags[name] is None else f"--{name}={flags[name]}" for name in selected]


def _change(text: str) -> Tuple[str, str]:
    """One FLAG=VALUE argument as (flag, value)."""
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FLAG=VALUE")
    return name, value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the seed command's flags, changed as asked, quoted for a POSIX shell."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/protocols.py",
        description="Print the flags of the seed's rMD17-aspirin run_train command, quoted for "
        "a shell, with the given flags changed.",
    )
    parser.add_argument("changes", nargs="*", type=_change, metavar="FLAG=VALUE",
                        help="a flag of the seed command and its new value, e.g. max_num_epochs=5")
    parser.add_argument("--anchors", action="store_true",
                        help="start from the anchors' cpu100 variant instead of the seed command")
    args = parser.parse_args(argv)
    try:
        flags = changed(ANCHOR_COMMAND if args.anchors else SEED_COMMAND, **dict(args.changes))
    except KeyError as error:
        parser.error(error.args[0])
    print(shlex.join(command_flags(flags)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
