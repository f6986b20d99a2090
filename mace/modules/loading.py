"""Reading and writing whole-model files (``torch.save`` of the module, as upstream).

A model file is a full pickle, and an ordinary ``torch.load`` of one runs whatever code the
file names. :func:`load_model` therefore reads it with :mod:`mace.modules.safe_pickle`,
which admits only what MACE models are made of and runs no code from the file (e3nn's
compiled kernels are generated again, not loaded). ``trust_pickle=True`` falls back to an
unrestricted ``torch.load`` for a file the user vouches for.
"""
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from mace.data import Configuration
from mace.modules.heads import ModelHeads
from mace.modules.models import MACE, model_heads
from mace.modules.safe_pickle import ForbiddenGlobal, safe_torch_load
from mace.core.errors import UserInputError, one_line
from mace.core.files import atomic_torch_save
from mace.modules.export import is_torchscript_file
from mace.modules.predict import predict

PathLike = Union[str, os.PathLike]
TRUST_HINT = "if you trust this file, pass --trust_pickle (trust_pickle=True in Python)"


def _refusal(path: Path, name: str) -> str:
    if name.startswith("mace."):
        return f"Model file '{path}' needs {name}, which this version of mace does not have"
    return (
        f"Model file '{path}' refers to {name}, which no MACE model contains, so loading it "
        f"could run code; {TRUST_HINT}"
    )


def _unpickle(path: Path, device: str, trust_pickle: bool) -> object:
    try:
        if trust_pickle:
            return torch.load(path, map_location=device, weights_only=False)
        return safe_torch_load(path.read_bytes(), map_location=device)
    except ForbiddenGlobal as error:
        raise UserInputError(_refusal(path, error.name)) from None
    except Exception as error:  # a damaged file makes torch and pickle raise many types
        raise UserInputError(f"Model file '{path}' could not be read as a MACE model ({one_line(error)})") from error


def _check_values(model: MACE, path: Path) -> None:
    """A damaged file must fail here, not give NaN predictions or absurd element tables later."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserInputError(f"Model file '{path}' holds non-finite values (NaN or inf) in {name}")
    elements = model.atomic_numbers.tolist()
    if len(set(elements)) != len(elements) or not all(1 <= z <= 118 for z in elements):
        raise UserInputError(f"Model file '{path}' holds invalid atomic numbers {elements}")


def _check_evaluates(model: MACE, path: Path) -> None:
    """One forward on two atoms with each head: a damaged file that still unpickles fails
    here, in one line, not with an arbitrary traceback in the middle of a run."""
    element = int(model.atomic_numbers[0])
    pair = Configuration(atomic_numbers=np.array([element, element]), positions=np.array([[0.0, 0, 0], [0, 0, 1.0]]))
    try:
        for head in model_heads(model):
            predict(model, [pair], head=head)
    except Exception as error:  # whatever a damaged module raises
        raise UserInputError(
            f"Model file '{path}' holds a model that cannot be evaluated ({one_line(error)})"
        ) from error


def load_model(
    path: PathLike, device: str = "cpu", dtype: Optional[torch.dtype] = None, trust_pickle: bool = False
) -> MACE:
    """Read a MACE model file (ours or upstream's), on ``device`` and in ``dtype``.

    Safe by default: a file naming anything but the classes a MACE model is made of is
    refused (UserInputError naming it). ``trust_pickle=True`` unpickles with no restriction,
    running whatever the file names: only for files you vouch for.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Model file '{path}' does not exist")
    if is_torchscript_file(path):
        raise UserInputError(
            f"Model file '{path}' is a TorchScript file (such as NAME_compiled.model): torch.jit.load and "
            "MACECalculator run it; this needs the model file it was compiled from (NAME.model)"
        )
    model = _unpickle(path, device, trust_pickle)
    if not isinstance(model, (MACE, ModelHeads)):
        raise UserInputError(f"Model file '{path}' holds a {type(model).__name__}, not a MACE model")
    _check_values(model, path)
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(device)
    _check_evaluates(model, path)
    return model


def save_model(model: torch.nn.Module, path: PathLike) -> None:
    """Write ``torch.save(model)`` atomically: a reader never sees a half-written file."""
    atomic_torch_save(model, path)
