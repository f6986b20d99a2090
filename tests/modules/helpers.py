"""Small models and molecules shared by the model tests."""
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from e3nn import o3

from mace.data import Configuration, collate_graphs, graph_from_configuration
from mace.modules import MACE, RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock, ScaleShiftMACE
from mace.core.atomic_numbers import AtomicNumberTable

ELEMENTS = (1, 6, 8)
HEADS = ["pt_head", "Default", "mine"]


def tiny_model(
    scale_shift: bool = True,
    channels: int = 8,
    max_L: int = 1,
    correlation: int = 3,
    num_interactions: int = 2,
    gate: Optional[Callable] = torch.nn.functional.silu,
    **options: Any,
) -> MACE:
    """A random-weight model small enough for fast tests (float64); ``options``: further
    keywords of MACE (interaction classes, radial_type, pair_repulsion, ...)."""
    irreps = " + ".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1))
    kwargs = dict(
        r_max=4.0,
        num_bessel=6,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=RealAgnosticResidualInteractionBlock,
        interaction_cls_first=RealAgnosticInteractionBlock,
        num_interactions=num_interactions,
        num_elements=len(ELEMENTS),
        hidden_irreps=o3.Irreps(irreps),
        MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=np.array([-1.5, -10.0, -20.0]),
        avg_num_neighbors=5.0,
        atomic_numbers=ELEMENTS,
        correlation=correlation,
        gate=gate,
        radial_MLP=[16, 16],
    )
    kwargs.update(options)
    if scale_shift:
        return ScaleShiftMACE(atomic_inter_scale=1.3, atomic_inter_shift=0.1, **kwargs)
    return MACE(**kwargs)


def multihead_model(heads: Sequence[str] = HEADS, **options: Any) -> MACE:
    """A tiny three-head model with every weight random (readouts included) and distinct E0s
    and scale/shift per head."""
    torch.manual_seed(3)
    model = tiny_model(
        heads=heads,
        atomic_energies=np.array([[-1.5, -10.0, -20.0], [-1.0, -11.0, -19.0], [-2.0, -9.0, -21.0]])[: len(heads)],
        **options,
    )
    model.scale_shift.scale = torch.tensor([1.3, 0.7, 1.1][: len(heads)])
    model.scale_shift.shift = torch.tensor([0.1, -0.2, 0.05][: len(heads)])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def random_molecule(rng: np.random.Generator, num_atoms: int = 6, elements: Sequence[int] = ELEMENTS) -> Configuration:
    """Atoms in a small box (many neighbours) with no two closer than 0.7 A."""
    positions: List[np.ndarray] = []
    while len(positions) < num_atoms:
        candidate = rng.uniform(-1.8, 1.8, size=3)
        if all(np.linalg.norm(candidate - p) > 0.7 for p in positions):
            positions.append(candidate)
    return Configuration(atomic_numbers=rng.choice(elements, size=num_atoms), positions=np.array(positions))


def batch_of(configs: Sequence[Configuration], model: MACE) -> Dict[str, torch.Tensor]:
    table = AtomicNumberTable(model.atomic_numbers.tolist())
    return collate_graphs([graph_from_configuration(c, table, float(model.r_max)) for c in configs])
