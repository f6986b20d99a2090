"""Log to the console and to logs/NAME_run-SEED.log, with upstream's line format."""
import logging
import sys
from pathlib import Path
from typing import Optional

_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def setup_logging(level: str, log_file: Optional[Path]) -> None:
    """Replace any earlier handlers so repeated runs in one process log to their own file
    (``log_file`` None: the console only, as the non-main processes of a data-parallel run)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(getattr(logging, level.upper()))
    formatter = logging.Formatter(_FORMAT, datefmt=_DATE_FORMAT)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    root.addHandler(console)
    if log_file is None:
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(formatter)
    root.addHandler(file_handler)
