"""Output files: permissions from the umask, leftovers of killed writes, writable folders and
the lock that keeps two runs from writing the same outputs."""
import os
import socket
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from mace.core.errors import UserInputError
from mace.core.files import atomic_outputs, atomic_write, remove_stale_temporaries, unwritable_folder_reason
from mace.core.run_lock import RunLock


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def write_lock(path: Path, pid: int, host: str = socket.gethostname()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {host}\n")


def test_atomic_write_gives_the_permissions_of_the_umask(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "out" / "result.txt"
    atomic_write(target, lambda temporary: Path(temporary).write_text("done"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    os.umask(0o027)
    atomic_write(target, lambda temporary: Path(temporary).write_text("again"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [path.name for path in target.parent.iterdir()] == ["result.txt"]


def test_files_written_together_replace_their_targets_only_when_all_were_written(tmp_path: Path) -> None:
    targets = [tmp_path / "a" / "one.h5", tmp_path / "b" / "two.h5"]
    with atomic_outputs(targets) as temporaries:
        for temporary, text in zip(temporaries, ("1", "2")):
            Path(temporary).write_text(text)
        assert not any(target.exists() for target in targets)
    assert [target.read_text() for target in targets] == ["1", "2"]
    with pytest.raises(RuntimeError):
        with atomic_outputs(targets) as temporaries:
            Path(temporaries[0]).write_text("new")
            raise RuntimeError("the second one failed")
    assert [target.read_text() for target in targets] == ["1", "2"]
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == ["one.h5", "two.h5"]


def test_only_the_temporaries_of_the_given_files_are_removed(tmp_path: Path) -> None:
    stale = [tmp_path / ".run.model.ab12cd34.tmp", tmp_path / ".run_swa.model.x_9yz0ab.tmp"]
    kept = [tmp_path / ".run_2.model.ab12cd34.tmp", tmp_path / ".run.model.tmp", tmp_path / "run.model",
            tmp_path / ".run.model.ab12cd345.tmp"]
    for path in stale + kept:
        path.write_text("half")
    assert remove_stale_temporaries([tmp_path / "run.model", tmp_path / "run_swa.model"]) == stale
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_folder_checks_name_what_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    assert unwritable_folder_reason(tmp_path) is None
    assert unwritable_folder_reason(tmp_path / "new" / "deeper") is None
    assert "exists and is not a folder" in unwritable_folder_reason(tmp_path / "a_file")
    assert "is not a folder" in unwritable_folder_reason(tmp_path / "a_file" / "sub")
    assert not (tmp_path / "new").exists()


def test_a_second_lock_on_the_same_outputs_is_refused_naming_the_holder(tmp_path: Path) -> None:
    locks = [tmp_path / "logs" / "run_run-1.lock", tmp_path / "run.lock"]
    with RunLock(locks) as held:
        assert held.taken_over == []
        assert locks[0].read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        with pytest.raises(UserInputError, match=rf"Another run \(PID {os.getpid()} on .*run_run-1.lock"):
            with RunLock([tmp_path / "other.lock", locks[0]]):
                pass
        assert not (tmp_path / "other.lock").exists()  # a refused run keeps no lock
        assert all(lock.exists() for lock in locks)
    assert not any(lock.exists() for lock in locks)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    write_lock(lock, dead_pid())
    with RunLock([lock]) as held:
        assert held.taken_over == [lock]
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()


def test_locks_of_live_processes_and_other_hosts_are_respected(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    write_lock(lock, os.getppid())
    with pytest.raises(UserInputError, match=f"PID {os.getppid()}"):
        RunLock([lock]).__enter__()
    write_lock(lock, dead_pid(), host="another-host")
    with pytest.raises(UserInputError, match="on another-host"):
        RunLock([lock]).__enter__()
    assert lock.exists()


def test_release_leaves_a_lock_another_run_has_taken(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    with RunLock([lock]):
        write_lock(lock, os.getppid())  # e.g. ours was deleted by hand and another run took it
    assert lock.read_text().split()[0] == str(os.getppid())
