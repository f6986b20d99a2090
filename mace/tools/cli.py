"""What every command-line entry point shares: user errors as one line, not a traceback."""
import logging
import sys
from typing import Callable

from mace.tools.errors import UserInputError


def run_cli(command: Callable[[], int]) -> int:
    """Run ``command``; a UserInputError becomes 'ERROR: message' on stderr and exit code 1."""
    try:
        return command()
    except UserInputError as error:
        if logging.getLogger().handlers:
            logging.error(str(error))
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
