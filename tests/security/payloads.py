"""Files that would create a marker file if code taken from them ran, and a genuine tiny model.

Each payload is checked to be real (an unrestricted load does create the marker), so a
test that the safe loader refuses it cannot pass because the payload is broken.
"""
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import fx

from mace.data import Configuration
from mace.modules.loading import save_model
from mace.modules.models import MACE
from tests.modules.helpers import random_molecule, tiny_model


def small_model(gate: Optional[Callable] = torch.nn.functional.silu) -> MACE:
    """A one-interaction, 4-channel model (float64): quick to save, load and evaluate."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return tiny_model(channels=4, num_interactions=1, correlation=2, gate=gate)
    finally:
        torch.set_default_dtype(dtype)


def molecule() -> Configuration:
    return random_molecule(np.random.default_rng(3))


class CreatesMarker:
    """Unpickling it calls open(marker, 'w'): the marker file appears iff the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class GraphModuleCreatingMarker(torch.nn.Module):
    """Pickles as a torch.fx GraphModule whose Python source creates the marker when exec'd."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)

    def __reduce__(self):
        rebuild, (body, import_block) = fx.symbolic_trace(torch.nn.Identity()).__reduce__()
        body = {**body, "_code": f"\nopen({self.marker!r}, 'w').close()\n" + body["_code"]}
        return rebuild, (body, import_block)


class DoubledKernel(torch.nn.Module):
    """A compiled e3nn kernel that returns twice what the genuine one does."""

    def __init__(self, kernel: torch.nn.Module) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.kernel(x, w, b)


def model_with_payload(path: Path, marker: Path) -> Path:
    """A genuine model file that also carries CreatesMarker in an attribute."""
    model = small_model()
    model.note = CreatesMarker(marker)
    save_model(model, path)
    return path


class NamesATorchFunction:
    """Pickles as getattr(torch._C._VariableFunctionsClass, name), as torch.tanh does."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self):
        return getattr, (torch._C._VariableFunctionsClass, self.name)
