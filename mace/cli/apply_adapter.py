"""Apply an adapter file to its foundation model and write the fine-tuned model file.

python -m mace.cli.apply_adapter --foundation_model F.model --adapter_file A.pt --output OUT.model [--merge]
With --merge the low-rank (ELoRA, LoRA) updates are folded into the weights, so the written
model runs as fast as the foundation; MMEA gates depend on the input and stay as modules.
"""
import argparse
import sys
from typing import List, Optional

from mace.adapters import merge_elora
from mace.adapters.io import load_adapted_model
from mace.modules.loading import save_model
from mace.cli.entry import add_trust_pickle_flag, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write the fine-tuned model of a foundation model and an adapter file."
    )
    parser.add_argument(
        "--foundation_model", required=True, help="the foundation model file the adapter was trained on"
    )
    parser.add_argument(
        "--adapter_file", required=True, help="adapter file written by fine-tuning (NAME_adapter.pt)"
    )
    parser.add_argument("--output", required=True, help="model file to write")
    parser.add_argument("--merge", action="store_true", help="fold low-rank updates into the weights")
    add_trust_pickle_flag(parser)
    return parser


def apply_adapter(args: argparse.Namespace) -> int:
    model = load_adapted_model(args.foundation_model, args.adapter_file, trust_pickle=args.trust_pickle)
    if args.merge:
        model = merge_elora(model)
    save_model(model, args.output)
    print(f"Wrote {args.output}")
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    sys.exit(run_cli(lambda: apply_adapter(build_parser().parse_args(argv))))


if __name__ == "__main__":
    main()
