"""Shared fixtures of the adapter tests: conformance models and frames, float64, fast CPU runs.

TorchScript's optimising executor re-specialises e3nn's compiled kernels for every new
graph size, costing seconds per forward on CPU, and a 15-atom graph gains nothing from
several threads: the tests run one thread without that optimiser (about half the time).
"""
import copy
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np
import pytest
import torch

from mace.data import collate_graphs, config_from_atoms, read_frames
from mace.modules.loading import load_model
from mace.modules.blocks import RealAgnosticResidualNonLinearInteractionBlock
from mace.modules.models import MACE
from mace.adapters.foundation import restrict_to_elements
from mace.modules.predict import model_graphs
from tests.modules.helpers import tiny_model
from tests.shared import shared_folder_or_skip

HCO = (1, 6, 8)  # elements of acetylacetone and aspirin


def model_path(name: str, folder: str = "conformance") -> Path:
    return shared_folder_or_skip() / folder / "models" / f"{name}.model"


@pytest.fixture(autouse=True)
def float64_single_thread_without_jit_optimisation() -> Iterator[None]:
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    with torch.jit.optimized_execution(False):
        yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def small_foundation() -> MACE:
    """16-channel model on H, C, N, O written by upstream 0.3.16 (do not modify: shared)."""
    return load_model(model_path("small_v0316"), dtype=torch.float64)


@pytest.fixture(scope="session")
def small_hco_template(small_foundation: MACE) -> MACE:
    return restrict_to_elements(small_foundation, HCO)


@pytest.fixture
def small_hco(small_hco_template: MACE) -> MACE:
    """A fresh H, C, O copy of the small foundation, free to adapt and train."""
    return copy.deepcopy(small_hco_template)


@pytest.fixture(scope="session")
def densityzbl_hco_template() -> MACE:
    """Upstream 0.3.16's density blocks with ZBL and Agnesi (H, C, N, O), restricted to H, C, O."""
    foundation = load_model(model_path("densityzbl_v0316", "conformance-foundations"), dtype=torch.float64)
    return restrict_to_elements(foundation, HCO)


@pytest.fixture(scope="session")
def nonlinear_hcno() -> MACE:
    """A random tiny model of RealAgnosticResidualNonLinearInteractionBlocks on H, C, N, O."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        return tiny_model(
            interaction_cls_first=RealAgnosticResidualNonLinearInteractionBlock,
            interaction_cls=RealAgnosticResidualNonLinearInteractionBlock,
            atomic_numbers=(1, 6, 7, 8), num_elements=4, atomic_energies=np.array([-1.5, -10.0, -15.0, -20.0]),
        )
    finally:
        torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def acac_frames() -> list:
    return read_frames(str(shared_folder_or_skip() / "conformance" / "predictions" / "small_v0316__acac10.xyz"))[:1]


def make_batch(model: MACE, frames: Sequence, rotation: np.ndarray = np.eye(3)) -> Dict[str, torch.Tensor]:
    """One batch of ``frames`` with positions rotated by ``rotation`` (x -> R x)."""
    configs = [config_from_atoms(atoms) for atoms in frames]
    for config in configs:
        config.positions = config.positions @ rotation.T
    return collate_graphs(model_graphs(model, configs))


def energies_forces(model: MACE, batch: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    output = model(dict(batch), training=False, compute_force=True)
    return [output["energy"].detach(), output["forces"].detach()]


def max_difference(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second))


def perturb_trainable(model: MACE, std: float = 0.1, seed: int = 0) -> None:
    """Move every trainable parameter randomly, as training would (e.g. B off zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(std * noise.to(parameter.device))
