"""Crash-safe file writing (outputs appear complete or not at all), checks that output
folders can be written, and file hashes."""
import glob
import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Union

import torch

from mace.core.errors import UserInputError

PathLike = Union[str, os.PathLike]


_TEMPORARY_SUFFIX_CHARS = 8  # random characters between the target's name and ".tmp"


def _new_temporary(path: Path) -> Path:
    """A new empty file ``.NAME.XXXXXXXX.tmp`` next to ``path``, for writing it atomically.

    Created with mode 0666 minus the umask (as ``open`` would), not tempfile's 0600, so the
    renamed output gets the permissions the user's umask gives; O_EXCL never reuses a file.
    """
    candidate = path.parent / f".{path.name}.{secrets.token_hex(_TEMPORARY_SUFFIX_CHARS // 2)}.tmp"
    os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return candidate


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` in the target folder, then rename over ``path``."""
    with atomic_outputs([path]) as (temporary,):
        write(temporary)


@contextmanager
def atomic_outputs(paths: Sequence[PathLike]) -> Iterator[List[str]]:
    """Temporaries for ``paths`` (one each, in its target's folder) to be written in the
    block; once it ends without error they are renamed over their targets, otherwise all
    removed: no target is replaced unless every one was written (e.g. by worker processes)."""
    targets = [Path(path) for path in paths]
    temporaries: List[str] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporaries.append(str(_new_temporary(target)))
        yield list(temporaries)
        for temporary, target in zip(temporaries, targets):
            os.replace(temporary, target)
    except BaseException:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)
        raise


def atomic_torch_save(obj: object, path: PathLike) -> None:
    """torch.save that never leaves a truncated file behind (e.g. when killed mid-write)."""
    atomic_write(path, lambda temporary: torch.save(obj, temporary))


def remove_stale_temporaries(targets: Iterable[Path]) -> List[Path]:
    """Delete the temporaries :func:`atomic_write` left for ``targets`` when killed mid-write.

    Only files named exactly like a temporary of one of ``targets`` are touched, so outputs
    of other runs in the same folder are safe; call it while holding the run's lock.
    """
    stale: List[Path] = []
    for target in targets:
        pattern = f".{glob.escape(target.name)}.{'?' * _TEMPORARY_SUFFIX_CHARS}.tmp"
        stale.extend(sorted(target.parent.glob(pattern)))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def unwritable_folder_reason(folder: Path) -> Optional[str]:
    """Why files cannot be written in ``folder`` (None when they can), checked without
    creating anything: an existing folder must be writable, a missing one creatable."""
    if folder.exists():
        if not folder.is_dir():
            return f"'{folder}' exists and is not a folder"
        return None if os.access(folder, os.W_OK | os.X_OK) else f"folder '{folder}' is not writable"
    ancestor = next(parent for parent in folder.absolute().parents if parent.exists())
    if not ancestor.is_dir():
        return f"'{folder}' cannot be created: '{ancestor}' is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"'{folder}' cannot be created: folder '{ancestor}' is not writable"
    return None


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
