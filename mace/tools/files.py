"""Crash-safe file writing (outputs appear complete or not at all) and file hashes."""
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

import torch

from mace.tools.errors import UserInputError

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


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_or_check_sha256(path: PathLike) -> str:
    """Pin a downloaded file to its SHA-256, kept next to it in ``<file>.sha256``.

    The first call records the hash; later calls refuse (UserInputError) a file whose hash
    changed since, e.g. a cached foundation model replaced by someone else. Returns the hash.
    """
    path = Path(path)
    record = path.with_name(f"{path.name}.sha256")
    actual = file_sha256(path)
    if not record.is_file():
        atomic_write(record, lambda temporary: Path(temporary).write_text(f"{actual}\n"))
        return actual
    expected = record.read_text().strip()
    if actual != expected:
        raise UserInputError(
            f"'{path}' has SHA-256 {actual}, but {expected} was recorded in '{record}' when it "
            f"was downloaded: it changed since; delete both files to download it again"
        )
    return actual
