"""A fresh model from run_train's hyperparameter flags and the data statistics."""
import argparse
from typing import Callable, Dict, List, Optional

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


def build_model(
    args: argparse.Namespace,
    atomic_numbers: List[int],
    e0s: Dict[int, float],
    avg_num_neighbors: float,
    radial_MLP: List[int],
    scale: float,
    shift: float,
) -> MACE:
    """--model MACE and ScaleShiftMACE both predict scaled interaction energies; MACE has no shift."""
    config = dict(
        r_max=args.r_max,
        num_bessel=args.num_radial_basis,
        num_polynomial_cutoff=args.num_cutoff_basis,
        max_ell=args.max_ell,
        interaction_cls=INTERACTION_CLASSES[args.interaction],
        interaction_cls_first=INTERACTION_CLASSES[args.interaction_first],
        num_interactions=args.num_interactions,
        num_elements=len(atomic_numbers),
        hidden_irreps=o3.Irreps(args.hidden_irreps),
        MLP_irreps=o3.Irreps(args.MLP_irreps),
        atomic_energies=np.array([e0s[z] for z in atomic_numbers]),
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=atomic_numbers,
        correlation=args.correlation,
        gate=GATES[args.gate],
        radial_MLP=radial_MLP,
    )
    return ScaleShiftMACE(
        atomic_inter_scale=scale,
        atomic_inter_shift=shift if args.model == "ScaleShiftMACE" else 0.0,
        **config,
    )
