"""Optimiser parameter groups, optimiser and learning-rate scheduler as upstream sets them up.

Weight decay applies to the interactions' mixing linears and the product basis; embeddings,
radial networks and readouts are not decayed. Only trainable parameters enter, so frozen
foundation weights get neither gradients nor optimiser state.
"""
import argparse
from typing import Any, Dict, List

import torch

from mace.modules.models import MACE


def trainable_parameters(parameters) -> List[torch.nn.Parameter]:
    return [p for p in parameters if p.requires_grad]


def _interaction_groups(model: MACE) -> Dict[str, List[torch.nn.Parameter]]:
    """Decay for each interaction's ``linear`` (message mixing) weights, none for the rest."""
    decay_ids = {id(p) for block in model.interactions for p in block.linear.parameters()}
    params = trainable_parameters(model.interactions.parameters())
    return {
        "interactions_decay": [p for p in params if id(p) in decay_ids],
        "interactions_no_decay": [p for p in params if id(p) not in decay_ids],
    }


def parameter_groups(model: MACE, weight_decay: float) -> List[Dict[str, Any]]:
    interactions = _interaction_groups(model)
    grouped = {
        "embedding": (trainable_parameters(model.node_embedding.parameters()), 0.0),
        "interactions_decay": (interactions["interactions_decay"], weight_decay),
        "interactions_no_decay": (interactions["interactions_no_decay"], 0.0),
        "products": (trainable_parameters(model.products.parameters()), weight_decay),
        "readouts": (trainable_parameters(model.readouts.parameters()), 0.0),
    }
    seen = {id(p) for params, _ in grouped.values() for p in params}
    grouped["other"] = ([p for p in trainable_parameters(model.parameters()) if id(p) not in seen], 0.0)
    return [
        {"name": name, "params": params, "weight_decay": decay}
        for name, (params, decay) in grouped.items()
        if params
    ]


def build_optimizer(model: MACE, args: argparse.Namespace) -> torch.optim.Optimizer:
    groups = parameter_groups(model, args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, amsgrad=args.amsgrad)
    return torch.optim.Adam(groups, lr=args.lr, amsgrad=args.amsgrad)


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> Any:
    if args.scheduler == "ExponentialLR":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_scheduler_gamma)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=args.lr_factor, patience=args.scheduler_patience
    )
