"""Final evaluation of trained models: one error-table row per data set."""
import logging
from typing import Dict, List, Sequence, Tuple

import torch

from mace.data import Configuration, make_loader
from mace.tools.metrics import error_table
from mace.tools.predict import model_graphs
from mace.tools.train import OutputRequest, evaluate

NamedSet = Tuple[str, Sequence[Configuration]]


def evaluate_sets(
    model: torch.nn.Module,
    sets: Sequence[NamedSet],
    loss_fn: torch.nn.Module,
    batch_size: int,
    device: torch.device,
    request: OutputRequest,
) -> List[Tuple[str, Dict[str, float]]]:
    rows = []
    for name, configs in sets:
        if not configs:
            continue
        loader = make_loader(model_graphs(model, configs), batch_size=batch_size, shuffle=False)
        _, metrics = evaluate(model, loader, loss_fn, device, request, label=f"Evaluating {name}")
        rows.append((name, metrics))
    return rows


def log_error_table(title: str, table_type: str, rows: Sequence[Tuple[str, Dict[str, float]]]) -> str:
    table = error_table(table_type, rows)
    logging.info("Error-table on %s:\n%s", title, table)
    return str(table)
