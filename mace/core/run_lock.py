"""One run per output: lock files that keep two runs from writing the same files.

A lock is a file created with O_EXCL that holds the owner's PID and host name. A second
run finds it and refuses to start, naming the holder. A run killed without cleaning up
(SIGKILL, power loss) leaves its lock behind: when the PID it names is no longer alive on
this host, the lock is stale and the next run takes it over. A lock written on another
host (a shared file system) cannot be checked and is always respected.
"""
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import List, Optional, Sequence, Tuple, Type

from mace.core.errors import UserInputError


def _owner_line() -> str:
    return f"{os.getpid()} {socket.gethostname()}\n"


def _read_owner(lock: Path) -> Optional[Tuple[int, str]]:
    """(PID, host) written in ``lock``; None when it is unreadable (e.g. killed before writing)."""
    try:
        pid, host = lock.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _holder(lock: Path) -> Optional[str]:
    """Who holds ``lock`` ('PID 12 on host'), or None when the lock is stale."""
    owner = _read_owner(lock)
    if owner is None:
        return None
    pid, host = owner
    if host == socket.gethostname() and not _is_alive(pid):
        return None
    return f"PID {pid} on {host}"


def _create(lock: Path) -> bool:
    """Create ``lock`` holding this process's PID; False when it already exists."""
    try:
        handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as stream:
        stream.write(_owner_line())
    return True


class RunLock:
    """Holds a set of lock files for the life of a ``with`` block (folders are created).

    On entry it refuses (UserInputError) when a live run holds any of them; stale locks of
    dead processes are taken over and listed in ``taken_over``. On exit it removes the locks
    it still owns, even when the block failed.
    """

    def __init__(self, locks: Sequence[Path]) -> None:
        self.locks = sorted(set(locks))
        self.held: List[Path] = []
        self.taken_over: List[Path] = []

    def __enter__(self) -> "RunLock":
        try:
            for lock in self.locks:
                self._acquire(lock)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        self.release()

    def _acquire(self, lock: Path) -> None:
        lock.parent.mkdir(parents=True, exist_ok=True)
        if not _create(lock):
            holder = _holder(lock)
            if holder is not None:
                raise UserInputError(
                    f"Another run ({holder}) is writing these outputs: lock file '{lock}' exists. "
                    f"Wait for it to end, choose another --name or --seed, or delete '{lock}' if "
                    "no such run is going on"
                )
            lock.unlink(missing_ok=True)
            self.taken_over.append(lock)
            if not _create(lock):  # another run took the stale lock over first
                raise UserInputError(f"Another run took over the stale lock file '{lock}' at the same time")
        self.held.append(lock)

    def release(self) -> None:
        """Remove the locks this process still owns (never one another run has taken over)."""
        for lock in self.held:
            if _read_owner(lock) == (os.getpid(), socket.gethostname()):
                lock.unlink(missing_ok=True)
        self.held = []
