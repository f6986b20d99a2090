"""Final evaluation of trained models: one error-table row per data set, logged as a table
and written as JSON lines to the results file, beside the run's parameter counts.

Results-file records written here (the training loop writes ``opt`` and ``eval`` ones):
- ``{"mode": "parameters", "adapter": method, "trainable": n, "total": n}``, once a run starts;
- ``{"mode": "final", "stage": "main" | "swa", "model": file name, "set": name, **metrics}``,
  one per data set of each saved model (metrics in eV and eV/A, as in the ``eval`` lines).
"""
import logging
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from mace.data import Configuration, make_loader
from mace.core.errors import UserInputError
from mace.training.distributed import shard
from mace.training.metrics import error_table
from mace.modules.models import model_heads
from mace.modules.predict import model_graphs, predict
from mace.training.train import OutputRequest, append_result, evaluate

NamedSet = Tuple[str, Sequence[Configuration]]


def evaluate_sets(
    model: torch.nn.Module,
    sets: Sequence[NamedSet],
    loss_fn: torch.nn.Module,
    batch_size: int,
    device: torch.device,
    request: OutputRequest,
    head: int = 0,
) -> List[Tuple[str, Dict[str, float]]]:
    """Errors of the model's head ``head`` on each set; a data-parallel run evaluates its shards."""
    rows = []
    for name, configs in sets:
        if not configs:
            continue
        loader = make_loader(shard(model_graphs(model, configs, head)), batch_size=batch_size, shuffle=False)
        _, metrics = evaluate(model, loader, loss_fn, device, request, label=f"Evaluating {name}")
        _refuse_non_finite_predictions(model, name, configs, metrics, batch_size, head)
        rows.append((name, metrics))
    return rows


def _refuse_non_finite_predictions(
    model: torch.nn.Module, name: str, configs: Sequence[Configuration], metrics: Dict[str, float], batch_size: int,
    head: int = 0,
) -> None:
    """A NaN in an error table is an error naming the set and the first configuration the
    model predicts NaN or inf for (labels were checked finite when read); only then are the
    set's predictions redone, to find that configuration."""
    if all(math.isfinite(value) for value in metrics.values()):
        return
    try:
        predict(model, configs, batch_size=batch_size, head=model_heads(model)[head])
    except UserInputError as error:
        raise UserInputError(f"Error table of the {name} set: {error}") from None


def log_error_table(title: str, table_type: str, rows: Sequence[Tuple[str, Dict[str, float]]]) -> str:
    table = error_table(table_type, rows)
    logging.info("Error-table on %s:\n%s", title, table)
    return str(table)


def write_parameter_counts(results: Path, method: str, trainable: int, total: int) -> None:
    append_result(results, {"mode": "parameters", "adapter": method, "trainable": trainable, "total": total})


def write_final_errors(results: Path, stage: str, model_name: str, rows: Sequence[Tuple[str, Dict[str, float]]]) -> None:
    for name, metrics in rows:
        append_result(results, {"mode": "final", "stage": stage, "model": model_name, "set": name, **metrics})
