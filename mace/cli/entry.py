"""What every command-line entry point shares: user errors as one line, not a traceback, and
the opt-in for model files that may run code."""
import argparse
import logging
import sys
from typing import Callable

from mace.core.errors import UserInputError


def run_cli(command: Callable[[], int]) -> int:
    """Run ``command``; a UserInputError becomes 'ERROR: message' on stderr and exit code 1."""
    try:
        return command()
    except UserInputError as error:
        if logging.getLogger().handlers:
            logging.error(str(error))
        print(f"ERROR: {error}", file=sys.stderr)
        return 1


def add_trust_pickle_flag(parser: argparse.ArgumentParser) -> None:
    """--trust_pickle: load a model file without the safe loader's restrictions (see README)."""
    parser.add_argument(
        "--trust_pickle",
        action="store_true",
        help="unpickle model files without restriction, running any code they name: only for files you trust",
    )
