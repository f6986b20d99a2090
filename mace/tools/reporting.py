"""Final evaluation of trained models: one error-table row per data set."""
import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch

from mace.data import Configuration, make_loader
from mace.tools.errors import UserInputError
from mace.tools.metrics import error_table
from mace.tools.predict import model_graphs, predict
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
        _refuse_non_finite_predictions(model, name, configs, metrics, batch_size)
        rows.append((name, metrics))
    return rows


def _refuse_non_finite_predictions(
    model: torch.nn.Module, name: str, configs: Sequence[Configuration], metrics: Dict[str, float], batch_size: int
) -> None:
    """A NaN in an error table is an error naming the set and the first configuration the
    model predicts NaN or inf for (labels were checked finite when read); only then are the
    set's predictions redone, to find that configuration."""
    if all(math.isfinite(value) for value in metrics.values()):
        return
    try:
        predict(model, configs, batch_size=batch_size)
    except UserInputError as error:
        raise UserInputError(f"Error table of the {name} set: {error}") from None


def log_error_table(title: str, table_type: str, rows: Sequence[Tuple[str, Dict[str, float]]]) -> str:
    table = error_table(table_type, rows)
    logging.info("Error-table on %s:\n%s", title, table)
    return str(table)
