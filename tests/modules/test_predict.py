"""Batched inference (mace/modules/predict.py): how configurations are grouped into forward
passes, and that the grouping does not change any prediction."""
from typing import Dict, List

import numpy as np
import pytest
import torch

import mace.modules.predict as predict_module
from mace.modules.predict import forward_passes, predict
from tests.modules.helpers import random_molecule, tiny_model


def graphs_with_edges(counts: List[int]) -> List[Dict[str, torch.Tensor]]:
    return [{"edge_index": torch.zeros(2, count, dtype=torch.long), "id": torch.tensor(i)} for i, count in enumerate(counts)]


def group_ids(groups) -> List[List[int]]:
    return [[int(graph["id"]) for graph in group] for group in groups]


def test_groups_keep_the_order_and_respect_both_the_batch_size_and_the_edge_budget() -> None:
    graphs = graphs_with_edges([10, 10, 10, 10, 10])
    assert group_ids(forward_passes(graphs, 2, None)) == [[0, 1], [2, 3], [4]]
    assert group_ids(forward_passes(graphs, 64, 25)) == [[0, 1], [2, 3], [4]]
    assert group_ids(forward_passes(graphs, 64, 30)) == [[0, 1, 2], [3, 4]]
    # a graph over the budget is evaluated alone, never dropped
    assert group_ids(forward_passes(graphs_with_edges([5, 100, 5, 5]), 64, 20)) == [[0], [1], [2, 3]]
    assert group_ids(forward_passes([], 4, 10)) == []


@pytest.mark.usefixtures("float64_default")
def test_predictions_do_not_depend_on_how_the_configurations_are_grouped(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    rng = np.random.default_rng(4)
    configs = [random_molecule(rng, num_atoms=n) for n in (4, 6, 5, 7, 6)]
    whole = predict(model, configs, batch_size=64)
    monkeypatch.setattr(predict_module, "CPU_EDGES_PER_PASS", 1)  # one configuration per pass
    alone = predict(model, configs, batch_size=64)
    for together, single in zip(whole, alone):
        assert single.energy == pytest.approx(together.energy, abs=1e-12)
        np.testing.assert_allclose(single.forces, together.forces, atol=1e-12)
