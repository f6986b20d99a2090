"""A fresh model from its hyperparameters (:class:`ModelSettings`) and the data statistics."""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from e3nn import o3

from mace.modules.blocks import INTERACTION_CLASSES
from mace.modules.models import MACE, ScaleShiftMACE

GATES: Dict[str, Optional[Callable]] = {
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "abs": torch.abs,
    "None": None,
}


@dataclass(frozen=True)
class ModelSettings:
    """The architecture of a model trained from scratch, under upstream's flag names and defaults."""

    model: str = "MACE"
    r_max: float = 5.0
    num_radial_basis: int = 8
    num_cutoff_basis: int = 5
    max_ell: int = 3
    interaction: str = "RealAgnosticResidualInteractionBlock"
    interaction_first: str = "RealAgnosticInteractionBlock"
    num_interactions: int = 2
    hidden_irreps: str = "128x0e + 128x1o"
    MLP_irreps: str = "16x0e"
    correlation: int = 3
    gate: str = "silu"
    radial_MLP: List[int] = field(default_factory=lambda: [64, 64, 64])
    radial_type: str = "bessel"
    distance_transform: str = "None"
    pair_repulsion: bool = False
    apply_cutoff: bool = True
    use_last_readout_only: bool = False
    use_embedding_readout: bool = False


def build_model(
    settings: ModelSettings,
    atomic_numbers: List[int],
    e0s: Union[Dict[int, float], Sequence[Dict[int, float]]],
    avg_num_neighbors: float,
    scale: Union[float, Sequence[float]],
    shift: Union[float, Sequence[float]],
    heads: Optional[List[str]] = None,
) -> MACE:
    """--model MACE and ScaleShiftMACE both predict scaled interaction energies; MACE has no
    shift. With ``heads``, ``e0s``, ``scale`` and ``shift`` hold one entry per head."""
    with_shift = settings.model == "ScaleShiftMACE"
    if heads is None:
        energies = np.array([e0s[z] for z in atomic_numbers])
        shift = shift if with_shift else 0.0
    else:
        energies = np.array([[head_e0s[z] for z in atomic_numbers] for head_e0s in e0s])
        shift = list(shift) if with_shift else [0.0] * len(heads)
    config = dict(
        r_max=settings.r_max,
        num_bessel=settings.num_radial_basis,
        num_polynomial_cutoff=settings.num_cutoff_basis,
        max_ell=settings.max_ell,
        interaction_cls=INTERACTION_CLASSES[settings.interaction],
        interaction_cls_first=INTERACTION_CLASSES[settings.interaction_first],
        num_interactions=settings.num_interactions,
        num_elements=len(atomic_numbers),
        hidden_irreps=o3.Irreps(settings.hidden_irreps),
        MLP_irreps=o3.Irreps(settings.MLP_irreps),
        atomic_energies=energies,
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=atomic_numbers,
        correlation=settings.correlation,
        gate=GATES[settings.gate],
        radial_MLP=list(settings.radial_MLP),
        radial_type=settings.radial_type,
        distance_transform=settings.distance_transform,
        pair_repulsion=settings.pair_repulsion,
        apply_cutoff=settings.apply_cutoff,
        use_last_readout_only=settings.use_last_readout_only,
        use_embedding_readout=settings.use_embedding_readout,
        heads=heads,
    )
    return ScaleShiftMACE(
        atomic_inter_scale=scale,
        atomic_inter_shift=shift,
        **config,
    )
