"""Crash-safe file writing: outputs appear complete or not at all."""
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

import torch

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` in the target folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_torch_save(obj: object, path: PathLike) -> None:
    """torch.save that never leaves a truncated file behind (e.g. when killed mid-write)."""
    atomic_write(path, lambda temporary: torch.save(obj, temporary))
