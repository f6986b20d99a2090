"""Device, dtype, random-seed and allocator setup shared by the command-line tools."""
import ctypes
import os
import random
import sys

import numpy as np
import torch

from mace.core.errors import UserInputError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise UserInputError(f"--default_dtype must be one of {sorted(_DTYPES)}, not '{name}'") from None


def select_device(name: str) -> torch.device:
    """The requested device; asking for CUDA on a machine without it is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was requested but CUDA is not available on this machine")
    if name not in ("cpu", "cuda"):
        raise UserInputError(f"--device must be cpu or cuda, not '{name}'")
    return torch.device(name)


def set_seeds(seed: int) -> None:
    """Seed every random generator the training uses, for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's malloc.h
_LARGEST_MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more on 64-bit systems
_LARGEST_TRIM_THRESHOLD = 2**31 - 1


def _malloc_configured_by_user() -> bool:
    return "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(key.startswith("MALLOC_") for key in os.environ)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory of freed tensors for the next ones (True if it did).

    A training step allocates and frees the same large edge tensors every time (31 MB each
    for five aspirin frames at 64 channels in float64). By default glibc hands the freed
    top of its heap back to the system at the end of the step, so the next step faults every
    page in again: tens of thousands of page faults per step, about a tenth of an MMEA step
    on the CPU. Here blocks up to 32 MB (glibc's largest threshold) come from the heap and
    the heap is not trimmed; larger blocks stay separate mappings, as by default. Peak memory
    is unchanged: the memory is reused, not added. A no-op on other C libraries and when
    the user set malloc's options in the environment (``GLIBC_TUNABLES``, ``MALLOC_*``)."""
    if not sys.platform.startswith("linux") or _malloc_configured_by_user():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST_TRIM_THRESHOLD))
