"""Reading and writing whole-model files (``torch.save`` of the module, as upstream).

Model files are full pickles: loading one runs code named inside it. Only load files
you trust (your own, or published foundation models).
"""
import os
import pickle
from pathlib import Path
from typing import Optional, Union

import torch

from mace.modules.models import MACE
from mace.tools.errors import UserInputError
from mace.tools.files import atomic_torch_save

PathLike = Union[str, os.PathLike]


def load_model(path: PathLike, device: str = "cpu", dtype: Optional[torch.dtype] = None) -> MACE:
    """Unpickle a MACE model file (ours or upstream's), move it to ``device`` and ``dtype``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Model file '{path}' does not exist")
    try:
        model = torch.load(path, map_location=device, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ModuleNotFoundError) as error:
        raise UserInputError(f"Model file '{path}' could not be read as a MACE model: {error}") from error
    if not isinstance(model, MACE):
        raise UserInputError(
            f"Model file '{path}' holds a {type(model).__name__}, not a MACE model"
        )
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device)


def save_model(model: torch.nn.Module, path: PathLike) -> None:
    """Write ``torch.save(model)`` atomically: a reader never sees a half-written file."""
    atomic_torch_save(model, path)
