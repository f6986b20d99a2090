"""The allocator setup of the command-line tools: freed tensor memory is reused, not re-faulted."""
import platform
import subprocess
import sys

import pytest

from mace.core.torch_setup import keep_freed_memory

ROUNDS_OF_NEW_TENSORS = """
import ctypes, resource, sys, torch
from mace.core.torch_setup import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2

def round_of_new_tensors():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(3 * 2**20, dtype=torch.float64) for _ in range(4)]  # 24 MB each, as a step's edge tensors
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, mallinfo2().arena

heap = mallinfo2().arena
rounds = [round_of_new_tensors() for _ in range(6)]
print(applied, rounds[0][1] - heap, rounds[-1][0])
"""


def heap_growth_and_last_faults(mode: str) -> tuple:
    """Whether the setup applied, how much the heap grew by the first round of tensors
    (counted after they were freed), and the page faults of the last round."""
    environment = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    output = subprocess.run([sys.executable, "-c", ROUNDS_OF_NEW_TENSORS, mode], capture_output=True, text=True,
                            check=True, env=environment).stdout.split()
    return output[0] == "True", int(output[1]), int(output[2])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's options are glibc's")
def test_freed_tensors_memory_is_kept_and_serves_the_next_ones_without_new_pages() -> None:
    size = 4 * 24 * 2**20
    applied, kept_growth, kept_faults = heap_growth_and_last_faults("keep")
    _, default_growth, _ = heap_growth_and_last_faults("default")
    assert applied
    assert kept_growth > 0.9 * size and default_growth < 0.1 * size  # glibc's default gives the blocks back
    assert kept_faults < size // 4096 // 20


def test_malloc_options_from_the_environment_are_left_alone(monkeypatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
