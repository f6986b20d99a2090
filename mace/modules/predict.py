"""Batched inference of a model over configurations (eval_configs, error tables, the calculator)."""
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from e3nn import o3

from mace.data import Configuration, batch_to_device, collate_graphs
from mace.data.graph import graphs_of
from mace.core.atomic_numbers import AtomicNumberTable
from mace.core.errors import UserInputError
from mace.modules.heads import head_index

SCALAR = o3.Irrep("0e")


@dataclass
class Prediction:
    """Model outputs for one configuration, in eV, eV/A and eV/A^3."""

    energy: float
    forces: np.ndarray
    node_energy: np.ndarray
    stress: Optional[np.ndarray] = None
    virials: Optional[np.ndarray] = None


def model_element_table(model: torch.nn.Module) -> AtomicNumberTable:
    return AtomicNumberTable(model.atomic_numbers.tolist())


def model_cutoff(model: torch.nn.Module) -> float:
    return float(model.r_max)


def model_graphs(
    model: torch.nn.Module, configs: Sequence[Configuration], head: int = 0
) -> Sequence[Dict[str, torch.Tensor]]:
    """Graphs with the model's element table and cutoff (raises for unknown elements), for
    head index ``head``; of configurations read on access (HDF5), a dataset that builds
    each graph on access."""
    return graphs_of(configs, model_element_table(model), model_cutoff(model), head)


# On a CPU, a forward pass over many more edges than this runs its edge tensors past the
# caches and past the heap malloc reuses: 128 aspirin frames took 9.0 s in batches of 64
# and 4.0 s in batches of 5-8 (about 1,500-2,400 edges; one thread, 64 channels). Each
# configuration's outputs do not depend on what else is in its batch.
CPU_EDGES_PER_PASS = 2048


def forward_passes(
    graphs: Sequence[Dict[str, torch.Tensor]], batch_size: int, edge_budget: Optional[int]
) -> Iterator[List[Dict[str, torch.Tensor]]]:
    """Consecutive groups of at most ``batch_size`` graphs and, with a budget, at most
    ``edge_budget`` edges in all (a graph with more edges than that forms a group alone)."""
    group: List[Dict[str, torch.Tensor]] = []
    edges = 0
    for index in range(len(graphs)):
        graph = graphs[index]
        graph_edges = graph["edge_index"].shape[1]
        if group and (len(group) == batch_size or (edge_budget is not None and edges + graph_edges > edge_budget)):
            yield group
            group, edges = [], 0
        group.append(graph)
        edges += graph_edges
    if group:
        yield group


def predict(
    model: torch.nn.Module,
    configs: Sequence[Configuration],
    batch_size: int = 64,
    compute_stress: bool = False,
    head: Optional[str] = None,
) -> List[Prediction]:
    """Evaluate ``model`` (on its own device) on every configuration, in order, with its head
    ``head`` (None: the only head, else the one named 'default')."""
    device = model.r_max.device
    dtype = model.r_max.dtype
    graphs = model_graphs(model, configs, head_index(model, head))
    edge_budget = CPU_EDGES_PER_PASS if device.type == "cpu" else None
    predictions: List[Prediction] = []
    for group in forward_passes(graphs, batch_size, edge_budget):
        batch = batch_to_device(collate_graphs(group), device, dtype)
        output = model(batch, training=False, compute_force=True, compute_stress=compute_stress)
        predictions.extend(_split_batch_output(batch, output, compute_stress))
    _check_finite(predictions)
    return predictions


def scalar_columns(irreps: o3.Irreps) -> List[int]:
    """The columns of a feature vector of ``irreps`` that hold invariant (0e) channels."""
    return [
        column
        for (_, irrep), block in zip(irreps, irreps.slices())
        if irrep == SCALAR
        for column in range(block.start, block.stop)
    ]


def node_descriptors(
    model: torch.nn.Module, batch: Dict[str, torch.Tensor], invariants_only: bool = True, num_layers: int = -1
) -> torch.Tensor:
    """Per-atom descriptors [n_atoms, features]: the node features after each of the first
    ``num_layers`` layers (-1: all), side by side; ``invariants_only`` keeps their 0e channels."""
    layer_irreps = model.layer_irreps()
    num_layers = len(layer_irreps) if num_layers == -1 else num_layers
    with torch.no_grad():
        layers = model.node_features(batch)[:num_layers]
    if invariants_only:
        layers = [features[:, scalar_columns(irreps)] for features, irreps in zip(layers, layer_irreps)]
    return torch.cat(layers, dim=-1)


def invariant_descriptors(
    model: torch.nn.Module, configs: Sequence[Configuration], head: int = 0, batch_size: int = 16
) -> List[np.ndarray]:
    """Each configuration's invariant per-atom descriptors (:func:`node_descriptors`), in batches."""
    graphs = model_graphs(model, configs, head)
    descriptors: List[np.ndarray] = []
    for start in range(0, len(graphs), batch_size):
        batch = batch_to_device(collate_graphs(list(graphs[start : start + batch_size])), model.r_max.device, model.r_max.dtype)
        features = node_descriptors(model, batch).cpu().numpy()
        descriptors.extend(np.split(features, batch["ptr"][1:-1].cpu().numpy()))
    return descriptors


def _check_finite(predictions: Sequence[Prediction]) -> None:
    """NaN or inf energies or forces (a damaged or diverged model) are an error naming the
    configuration; stress is not checked (it is not defined for a frame without a cell)."""
    for index, prediction in enumerate(predictions):
        if not (np.isfinite(prediction.energy) and np.isfinite(prediction.forces).all()):
            raise UserInputError(
                f"The model predicts a non-finite energy or forces (NaN or inf) for configuration {index}"
            )


def _split_batch_output(
    batch: Dict[str, torch.Tensor], output: Dict[str, Optional[torch.Tensor]], with_stress: bool
) -> List[Prediction]:
    ptr = batch["ptr"].tolist()
    energies = output["energy"].detach().cpu().numpy()
    forces = output["forces"].detach().cpu().numpy()
    node_energy = output["node_energy"].detach().cpu().numpy()
    stress = output["stress"].detach().cpu().numpy() if with_stress else None
    virials = output["virials"].detach().cpu().numpy() if with_stress else None
    return [
        Prediction(
            energy=float(energies[g]),
            forces=forces[ptr[g] : ptr[g + 1]],
            node_energy=node_energy[ptr[g] : ptr[g + 1]],
            stress=None if stress is None else stress[g],
            virials=None if virials is None else virials[g],
        )
        for g in range(len(ptr) - 1)
    ]
