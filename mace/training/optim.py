"""Optimiser parameter groups, optimiser and learning-rate scheduler as upstream sets them up.

The groups are upstream's (0.3.5, which the reference codes fork): the node embedding,
the interactions (decayed where a parameter name contains ``linear.weight`` or
``skip_tp_full.weight``, undecayed otherwise), the products (decayed) and the readouts.
The radial embedding belongs to no group, so its Bessel frequencies never move, although
they count as trainable and enter the gradient clipping norm, as in the reference codes.
Only trainable parameters enter, so frozen foundation weights get no optimiser state.
"""
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from mace.adapters import adapter_parameter_ids, low_rank_b_parameter_ids
from mace.core.errors import UserInputError
from mace.modules.models import MACE

DECAYED_INTERACTION_NAMES = ("linear.weight", "skip_tp_full.weight")


def trainable_parameters(parameters) -> List[torch.nn.Parameter]:
    return [p for p in parameters if p.requires_grad]


def _interaction_groups(model: MACE) -> Dict[str, List[torch.nn.Parameter]]:
    """Decay for the interactions' mixing-linear weights (by upstream's name rule), none for the rest."""
    named = [(name, p) for name, p in model.interactions.named_parameters() if p.requires_grad]
    decayed = [p for name, p in named if any(key in name for key in DECAYED_INTERACTION_NAMES)]
    decayed_ids = {id(p) for p in decayed}
    return {
        "interactions_decay": decayed,
        "interactions_no_decay": [p for _, p in named if id(p) not in decayed_ids],
    }


# Upstream's --lr_params_factors keys: the rate of each block is --lr times its factor.
BLOCK_LR_FACTOR_KEYS = {
    "embedding": "embedding_lr_factor",
    "interactions_decay": "interactions_lr_factor",
    "interactions_no_decay": "interactions_lr_factor",
    "products": "products_lr_factor",
    "readouts": "readouts_lr_factor",
}


def adapter_rate_factors(model: MACE, adapter_lr_factor: float, low_rank_b_lr_factor: float) -> Dict[int, Tuple[str, float]]:
    """(group suffix, rate factor) of each adapter parameter that trains at another rate than
    its block: every adapter parameter at ``adapter_lr_factor``, the low-rank ``lora_B``
    factors at ``low_rank_b_lr_factor`` times that."""
    if adapter_lr_factor == 1.0 and low_rank_b_lr_factor == 1.0:
        return {}
    b_ids = low_rank_b_parameter_ids(model) if low_rank_b_lr_factor != 1.0 else set()
    return {
        pid: ("_low_rank_b", adapter_lr_factor * low_rank_b_lr_factor) if pid in b_ids else ("_adapters", adapter_lr_factor)
        for pid in adapter_parameter_ids(model)
    }


def parameter_groups(
    model: MACE, weight_decay: float, adapter_lr_factor: float = 1.0, block_lr_factors: Optional[Mapping[str, float]] = None,
    low_rank_b_lr_factor: float = 1.0,
) -> List[Dict[str, Any]]:
    """Upstream's groups, each at its block's rate factor (``block_lr_factors``, upstream's
    --lr_params_factors keys, 1 when absent); adapter parameters at another rate
    (:func:`adapter_rate_factors`) form parallel ``*_adapters`` and ``*_low_rank_b`` groups
    whose rate is also scaled by their factor. In the SWA stage every group trains at
    --swa_lr (upstream's SWALR sets one rate for all), times its adapter factor
    (``swa_lr_factor``)."""
    block_lr_factors = block_lr_factors or {}
    interactions = _interaction_groups(model)
    grouped = {
        "embedding": (trainable_parameters(model.node_embedding.parameters()), 0.0),
        "interactions_decay": (interactions["interactions_decay"], weight_decay),
        "interactions_no_decay": (interactions["interactions_no_decay"], 0.0),
        "products": (trainable_parameters(model.products.parameters()), weight_decay),
        "readouts": (trainable_parameters(model.readouts.parameters()), 0.0),
    }
    _log_unoptimised(model, {id(p) for params, _ in grouped.values() for p in params})
    factors = adapter_rate_factors(model, adapter_lr_factor, low_rank_b_lr_factor)
    groups = []
    for name, (params, decay) in grouped.items():
        block_factor = float(block_lr_factors.get(BLOCK_LR_FACTOR_KEYS[name], 1.0))
        by_suffix: Dict[Tuple[str, float], List[torch.nn.Parameter]] = {("", 1.0): []}
        for p in params:
            by_suffix.setdefault(factors.get(id(p), ("", 1.0)), []).append(p)
        for (suffix, factor), members in by_suffix.items():
            groups.append({
                "name": name + suffix, "params": members, "weight_decay": decay,
                "lr_factor": block_factor * factor, "swa_lr_factor": factor,
            })
    return [group for group in groups if group["params"]]


def _log_unoptimised(model: MACE, optimised_ids: set) -> None:
    left_out = [(name, p.numel()) for name, p in model.named_parameters() if p.requires_grad and id(p) not in optimised_ids]
    if left_out:
        logging.info(
            "Not optimised (in no parameter group, as upstream): %s",
            ", ".join(f"{name} ({count})" for name, count in left_out),
        )


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimiser and learning-rate schedule, under upstream's flag names and defaults."""

    optimizer: str = "adam"
    lr: float = 0.01
    weight_decay: float = 5e-7
    amsgrad: bool = True
    beta: float = 0.9
    adapter_lr_factor: float = 1.0
    low_rank_b_lr_factor: float = 1.0
    lr_params_factors: Mapping[str, float] = dataclasses.field(default_factory=dict)
    scheduler: str = "ReduceLROnPlateau"
    lr_factor: float = 0.8
    scheduler_patience: int = 50
    lr_scheduler_gamma: float = 0.9993


def build_optimizer(model: MACE, settings: OptimizerSettings) -> torch.optim.Optimizer:
    groups = parameter_groups(
        model, settings.weight_decay, settings.adapter_lr_factor, settings.lr_params_factors, settings.low_rank_b_lr_factor
    )
    if not groups:
        raise UserInputError("No parameter is left to optimise (every block is frozen): lower --freeze")
    for group in groups:
        group["lr"] = settings.lr * group["lr_factor"]
    adam = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return adam(groups, lr=settings.lr, betas=(settings.beta, 0.999), amsgrad=settings.amsgrad)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: OptimizerSettings) -> Any:
    if settings.scheduler == "ExponentialLR":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=settings.lr_scheduler_gamma)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=settings.lr_factor, patience=settings.scheduler_patience
    )
