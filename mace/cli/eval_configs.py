"""Evaluate a model file on the frames of an extxyz file and write the predictions.

python -m mace.cli.eval_configs --configs IN.xyz --model M.model --output OUT.xyz
writes ``{prefix}energy`` into each frame's info and ``{prefix}forces`` into its arrays
(prefix ``MACE_`` by default), plus ``{prefix}stress`` with --compute_stress.
"""
import argparse
import sys
from typing import List, Optional

import ase.io
import torch

from mace.data import config_from_atoms
from mace.data.configuration import read_frames
from mace.modules.loading import load_model
from mace.cli.entry import add_trust_pickle_flag, run_cli
from mace.core.errors import UserInputError
from mace.core.files import atomic_write
from mace.modules.predict import predict
from mace.core.torch_setup import dtype_from_name, keep_freed_memory, select_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Predict energies and forces of configurations with a MACE model.")
    parser.add_argument("--configs", required=True, help="extxyz file with the configurations")
    parser.add_argument("--model", required=True, help="model file (torch.save of a MACE model)")
    parser.add_argument("--output", required=True, help="extxyz file to write, with the predictions")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--default_dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--batch_size", type=int, default=64, help="configurations per batch")
    parser.add_argument("--compute_stress", action="store_true", help="also predict stress (periodic cells)")
    parser.add_argument("--info_prefix", default="MACE_", help="prefix of the keys written to the output")
    parser.add_argument("--head", default=None,
                        help="head of a multi-head model to evaluate (default: the only head, else 'Default')")
    add_trust_pickle_flag(parser)
    return parser


def evaluate_file(args: argparse.Namespace) -> int:
    if args.batch_size <= 0:  # range() would yield no batch at all: no predictions, exit 0
        raise UserInputError(f"--batch_size must be a positive integer, got {args.batch_size}")
    dtype = dtype_from_name(args.default_dtype)
    torch.set_default_dtype(dtype)
    device = select_device(args.device)
    keep_freed_memory()
    model = load_model(args.model, device=device, dtype=dtype, trust_pickle=args.trust_pickle)
    frames = read_frames(args.configs)
    configs = [config_from_atoms(atoms) for atoms in frames]
    predictions = predict(
        model, configs, batch_size=args.batch_size, compute_stress=args.compute_stress, head=args.head
    )
    for atoms, prediction in zip(frames, predictions):
        atoms.calc = None
        atoms.info[f"{args.info_prefix}energy"] = prediction.energy
        atoms.arrays[f"{args.info_prefix}forces"] = prediction.forces
        if prediction.stress is not None:
            atoms.info[f"{args.info_prefix}stress"] = prediction.stress.reshape(-1)
    atomic_write(args.output, lambda temporary: ase.io.write(temporary, frames, format="extxyz"))
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    sys.exit(run_cli(lambda: evaluate_file(build_parser().parse_args(argv))))


if __name__ == "__main__":
    main()
