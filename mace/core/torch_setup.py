"""Device, dtype and random-seed setup shared by the command-line tools."""
import random

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
