"""Write the TorchScript file LAMMPS's ``pair_style mace`` runs, from a model file.

python -m mace.cli.create_lammps_model MODEL [--head H] [--dtype float64|float32] [--format libtorch]
writes ``MODEL-lammps.pt`` (upstream's name), the model wrapped in
:class:`mace.modules.lammps.LAMMPS_MACE` (upstream's ``mace.calculators.lammps_mace.LAMMPS_MACE``),
compiled on the CPU. In LAMMPS:

    pair_style mace no_domain_decomposition
    pair_coeff * * MODEL-lammps.pt H C O
"""
import argparse
import sys
from typing import List, Optional

from mace.cli.entry import add_trust_pickle_flag, run_cli
from mace.core.errors import UserInputError
from mace.core.torch_setup import dtype_from_name
from mace.modules.export import is_torchscript_file, save_scripted
from mace.modules.lammps import LAMMPS_MACE
from mace.modules.loading import load_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compile a MACE model file into MODEL-lammps.pt for LAMMPS's pair_style mace.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model_path", help="model file (torch.save of a MACE model, e.g. NAME.model)")
    parser.add_argument("--head", default=None, help="head of a multi-head model to run (default, as upstream: the last head)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="float type of the compiled model")
    parser.add_argument(
        "--format",
        default="libtorch",
        choices=["libtorch", "mliap"],
        help="libtorch: the TorchScript file of pair_style mace ('mliap', upstream's ML-IAP format, is not supported)",
    )
    add_trust_pickle_flag(parser)
    return parser


def create_lammps_model(args: argparse.Namespace) -> int:
    if args.format != "libtorch":
        raise UserInputError(
            f"--format {args.format}: only 'libtorch' (pair_style mace) is supported; upstream's ML-IAP "
            "format needs cuEquivariance, which this version does not have"
        )
    if is_torchscript_file(args.model_path):
        raise UserInputError(
            f"'{args.model_path}' is already a TorchScript file; give the model file it was compiled from (NAME.model)"
        )
    model = load_model(args.model_path, dtype=dtype_from_name(args.dtype), trust_pickle=args.trust_pickle)
    output = f"{args.model_path}-lammps.pt"
    save_scripted(LAMMPS_MACE(model, head=args.head), output)
    print(f"Wrote {output}")
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    sys.exit(run_cli(lambda: create_lammps_model(build_parser().parse_args(argv))))


if __name__ == "__main__":
    main()
