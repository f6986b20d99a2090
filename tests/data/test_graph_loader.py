"""Graphs carry every field the model and loss read; batches offset edges correctly."""
import io
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers the reductions that share tensors between processes)

from mace.data import (
    Configuration,
    batch_to_device,
    collate_graphs,
    graph_from_configuration,
    make_loader,
)
from mace.data.loader import WorkerBatch, restore_shuffle_state, shuffle_state
from mace.core.atomic_numbers import atomic_number_table_from_zs

Z_TABLE = atomic_number_table_from_zs([1, 6, 8])


def molecule(num_atoms: int, seed: int, **labels) -> Configuration:
    rng = np.random.default_rng(seed)
    zs = rng.choice([1, 6, 8], size=num_atoms)
    return Configuration(zs, rng.uniform(0, 2.5, (num_atoms, 3)), **labels)


def edge_vectors(graph) -> torch.Tensor:
    sender, receiver = graph["edge_index"]
    return graph["positions"][receiver] - graph["positions"][sender] + graph["shifts"]


def test_graph_fields_shapes_and_defaults():
    config = molecule(4, 0, energy=-5.0, forces=np.ones((4, 3)))
    graph = graph_from_configuration(config, Z_TABLE, cutoff=3.0, head=1)
    assert graph["positions"].dtype == torch.get_default_dtype()
    assert graph["node_attrs"].shape == (4, 3) and torch.all(graph["node_attrs"].sum(1) == 1)
    assert graph["edge_index"].dtype == torch.long and graph["edge_index"].shape[0] == 2
    assert graph["shifts"].shape == graph["unit_shifts"].shape == (graph["edge_index"].shape[1], 3)
    assert graph["cell"].shape == (3, 3)
    assert graph["stress"].shape == graph["virials"].shape == (1, 3, 3)
    assert graph["energy"].item() == -5.0 and graph["energy"].dim() == 0
    assert graph["forces_weight"].item() == 1.0 and graph["stress_weight"].item() == 0.0
    assert graph["head"].item() == 1 and graph["head"].dtype == torch.long
    assert graph["num_nodes"].item() == 4
    assert torch.all(edge_vectors(graph).norm(dim=1) < 3.0)


def test_graph_without_labels_has_zero_placeholders_and_weights():
    graph = graph_from_configuration(molecule(3, 1), Z_TABLE, cutoff=3.0)
    assert graph["energy"].item() == 0.0 and graph["energy_weight"].item() == 0.0
    assert graph["forces"].shape == (3, 3) and not graph["forces"].any()


def test_graph_follows_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        graph = graph_from_configuration(molecule(3, 2, energy=1.0), Z_TABLE, cutoff=3.0)
    finally:
        torch.set_default_dtype(previous)
    assert graph["positions"].dtype == graph["node_attrs"].dtype == torch.float32
    assert graph["energy"].dtype == torch.float32


def test_periodic_graph_keeps_the_configurations_cell():
    cell = np.diag([3.0, 3.0, 3.0])
    config = Configuration([1], np.zeros((1, 3)), cell=cell, pbc=(True, True, True))
    graph = graph_from_configuration(config, Z_TABLE, cutoff=3.5)
    np.testing.assert_array_equal(graph["cell"].numpy(), cell)
    assert graph["edge_index"].shape[1] == 6  # face images at 3 A; edge images at 4.24 A are out
    torch.testing.assert_close(graph["shifts"], graph["unit_shifts"] @ graph["cell"])


def test_collate_offsets_edges_and_stacks_per_graph_fields():
    configs = [molecule(n, seed, energy=float(n)) for seed, n in enumerate((3, 5, 4))]
    graphs = [graph_from_configuration(c, Z_TABLE, cutoff=3.0, head=0) for c in configs]
    batch = collate_graphs(graphs)
    assert batch["ptr"].tolist() == [0, 3, 8, 12]
    assert batch["batch"].tolist() == [0] * 3 + [1] * 5 + [2] * 4
    assert batch["positions"].shape == (12, 3) and batch["forces"].shape == (12, 3)
    assert batch["energy"].tolist() == [3.0, 5.0, 4.0]
    assert batch["weight"].shape == batch["head"].shape == (3,)
    assert batch["cell"].shape == (9, 3) and batch["stress"].shape == (3, 3, 3)
    torch.testing.assert_close(edge_vectors(batch), torch.cat([edge_vectors(g) for g in graphs]))
    for index, graph in enumerate(graphs):
        mask = batch["batch"][batch["edge_index"][0]] == index
        expected = graph["edge_index"] + batch["ptr"][index]
        assert torch.equal(batch["edge_index"][:, mask], expected)
        assert torch.all(batch["batch"][batch["edge_index"][1][mask]] == index)


def test_batch_to_device_moves_every_tensor():
    batch = collate_graphs([graph_from_configuration(molecule(2, 0), Z_TABLE, 3.0)])
    moved = batch_to_device(batch, "cpu")
    assert moved.keys() == batch.keys()
    assert all(value.device.type == "cpu" for value in moved.values())


def test_loader_shuffling_is_reproducible_with_seed():
    graphs = [
        graph_from_configuration(molecule(2, i, energy=float(i)), Z_TABLE, 3.0) for i in range(12)
    ]

    def order(seed: int) -> list:
        loader = make_loader(graphs, batch_size=5, shuffle=True, seed=seed)
        return [batch["energy"].tolist() for batch in loader]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(sum(order(3), [])) == [float(i) for i in range(12)]
    unshuffled = make_loader(graphs, batch_size=5, shuffle=False, drop_last=True)
    assert [len(batch["ptr"]) - 1 for batch in unshuffled] == [5, 5]



def numbered_graphs(count: int) -> list:
    return [graph_from_configuration(molecule(2, i, energy=float(i)), Z_TABLE, 3.0) for i in range(count)]


def epoch_orders(loader, epochs: int) -> list:
    return [[batch["energy"].tolist() for batch in loader] for _ in range(epochs)]


def test_shuffled_order_of_every_epoch_does_not_depend_on_workers():
    graphs = numbered_graphs(12)
    orders = [epoch_orders(make_loader(graphs, batch_size=5, shuffle=True, seed=3, num_workers=workers), 3)
              for workers in (0, 1)]
    assert orders[0] == orders[1]
    assert orders[0][0] != orders[0][1]


def test_a_resumed_loader_with_workers_shuffles_as_the_uninterrupted_one():
    graphs = numbered_graphs(12)
    uninterrupted = make_loader(graphs, batch_size=5, shuffle=True, seed=3, num_workers=1)
    first = epoch_orders(uninterrupted, 1)
    saved = shuffle_state(uninterrupted)
    later = epoch_orders(uninterrupted, 2)
    resumed = make_loader(graphs, batch_size=5, shuffle=True, seed=3, num_workers=1)
    restore_shuffle_state(resumed, saved)
    assert epoch_orders(resumed, 2) == later != first * 2


def test_worker_batches_travel_as_one_buffer_per_dtype():
    batch = collate_graphs(numbered_graphs(3))
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(WorkerBatch(batch))
    received = pickle.loads(buffer.getvalue())
    assert type(received) is dict and list(received) == list(batch)
    for key, value in batch.items():
        assert received[key].dtype == value.dtype and torch.equal(received[key], value), key
    _, (_, buffers) = WorkerBatch(batch).__reduce__()
    assert sorted(map(str, buffers)) == sorted({str(value.dtype) for value in batch.values()})
