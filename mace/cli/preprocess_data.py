"""Turn extxyz data into sharded HDF5 files (and a statistics file) that run_train reads
configuration by configuration, with the flags of upstream's ``preprocess_data`` (0.3.16):

    python -m mace.cli.preprocess_data --train_file train.xyz --valid_fraction 0.1 \\
        --test_file test.xyz --h5_prefix processed/ --r_max 5.0 --E0s average \\
        --compute_statistics --num_process 4 --seed 123

writes processed/train/train_{i}.h5, processed/val/val_{i}.h5, processed/test/test_{i}.h5
and processed/statistics.json (see ``mace.data.preprocess``). Then
``run_train --train_file processed/train --valid_file processed/val
--statistics_file processed/statistics.json ...``.
"""
import argparse
import logging
import os
import sys
from typing import Iterator, List, Optional, Sequence

from mace.cli.arg_parser import parse_atomic_numbers, parse_config_type_weights, parse_e0s, str2bool
from mace.cli.entry import run_cli
from mace.data.datasets import DataSettings
from mace.data.preprocess import PreprocessSettings, preprocess

# Upstream's flags for labels of models this fork does not have, and for multi-head data:
# accepted at their defaults only.
UNUSED_FLAGS = {
    "dipole_key": "dipole", "polarizability_key": "polarizability", "charges_key": "REF_charges",
    "head_key": "head", "heads": None,
}
FOUNDATION_ONLY_E0S = ("estimated", "foundation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write extxyz data as sharded HDF5 files (upstream's layout) for run_train, with its statistics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--train_file", required=True, help="Training configurations, extxyz.")
    parser.add_argument("--valid_file", default=None, help="Validation configurations; without it --valid_fraction of the training file.")
    parser.add_argument("--valid_fraction", type=float, default=0.1, help="Share of the training file held out for validation.")
    parser.add_argument("--test_file", default=None, help="Test configurations, extxyz.")
    parser.add_argument("--num_process", type=int, default=max(1, (os.cpu_count() or 1) // 4),
                        help="Processes writing the files, and the number of shards of each set.")
    parser.add_argument("--work_dir", default=".", help="Folder of valid_indices_SEED.txt (the frames a split held out).")
    parser.add_argument("--h5_prefix", default="",
                        help="Prepended to the output paths as is: 'processed/' writes processed/train/train_0.h5, ...")
    parser.add_argument("--r_max", type=float, default=5.0, help="Cutoff (A) of the average neighbour count in the statistics.")
    parser.add_argument("--config_type_weights", default='{"Default":1.0}',
                        help="Weight of each config_type, a dict literal; stored in each configuration's weight.")
    parser.add_argument("--energy_key", default="REF_energy", help="Info key of the reference energy.")
    parser.add_argument("--forces_key", default="REF_forces", help="Array key of the reference forces.")
    parser.add_argument("--virials_key", default="REF_virials", help="Info key of the reference virials.")
    parser.add_argument("--stress_key", default="REF_stress", help="Info key of the reference stress.")
    for flag, default in UNUSED_FLAGS.items():
        parser.add_argument(f"--{flag}", default=default, help="Upstream's; only the default is accepted.")
    parser.add_argument("--atomic_numbers", default=None,
                        help="Elements of the statistics, a list literal like '[1, 6, 8]'; default: the data's.")
    parser.add_argument("--compute_statistics", action="store_true", default=False,
                        help="Also write statistics.json: E0s, average neighbours, mean and std (shift and scale).")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="Upstream's batch size for the statistics; they are exact here, so it has no effect.")
    parser.add_argument("--scaling", default="rms_forces_scaling", choices=["std_scaling", "rms_forces_scaling", "no_scaling"],
                        help="What the statistics' std is: the RMS force component, or the std of the interaction energy per atom.")
    parser.add_argument("--E0s", default=None,
                        help="Isolated-atom energies: 'average', a dict literal or a JSON file; default: the IsolatedAtom frames.")
    parser.add_argument("--shuffle", type=str2bool, default=True, help="Shuffle the training and validation sets (seeded).")
    parser.add_argument("--seed", type=int, default=123, help="Seed of the validation split and the shuffling.")
    parser.add_argument("--log_level", default="INFO", help="Logging level.")
    return parser


def _errors(args: argparse.Namespace) -> Iterator[str]:
    for flag, default in UNUSED_FLAGS.items():
        if getattr(args, flag) != default:
            yield f"--{flag} is not supported: this fork has no dipole, charge or multi-head models"
    if args.num_process < 1:
        yield f"--num_process must be at least 1, got {args.num_process}"
    if not 0 < args.valid_fraction < 1:
        yield f"--valid_fraction must be strictly between 0 and 1, got {args.valid_fraction}"
    if not args.r_max >= 0.5:
        yield f"--r_max must be at least 0.5 (Angstrom), got {args.r_max}"
    if args.E0s in FOUNDATION_ONLY_E0S:
        yield f"--E0s {args.E0s} needs a foundation model; preprocess_data takes 'average', a dict or a JSON file"


def settings_from_args(args: argparse.Namespace) -> PreprocessSettings:
    data = DataSettings(
        train_file=args.train_file, valid_file=args.valid_file, valid_fraction=args.valid_fraction,
        test_file=args.test_file, seed=args.seed, energy_key=args.energy_key, forces_key=args.forces_key,
        stress_key=args.stress_key, virials_key=args.virials_key,
        config_type_weights=parse_config_type_weights(args.config_type_weights),
    )
    return PreprocessSettings(
        data=data, h5_prefix=args.h5_prefix, num_process=args.num_process, shuffle=args.shuffle,
        compute_statistics=args.compute_statistics, r_max=args.r_max, e0s=parse_e0s(args.E0s),
        atomic_numbers=parse_atomic_numbers(args.atomic_numbers), scaling=args.scaling, work_dir=args.work_dir,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s: %(message)s", force=True)
    preprocess(settings_from_args(args))
    return 0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    message = next(_errors(args), None)
    if message is not None:
        parser.error(message)
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.exit(run_cli(lambda: run(args)))


if __name__ == "__main__":
    main()
