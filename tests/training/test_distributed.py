"""Data-parallel training: where each process reads its place, that two gloo processes step
as one process on the union of their batches, and that shards and gathered metrics add up."""
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.multiprocessing

from mace.core.errors import UserInputError
from mace.data import Configuration, make_loader
from mace.data.loader import set_loader_epoch
from mace.modules.loss import build_loss
from mace.training.distributed import (
    SINGLE_PROCESS,
    ProcessPlace,
    joined_process_group,
    process_from_environment,
    shard,
)
from mace.training.metrics import ErrorAccumulator
from mace.training.train import data_parallel
from tests.modules.helpers import batch_of, random_molecule, tiny_model
from tests.shared import free_local_port


pytestmark = pytest.mark.usefixtures("float64_default")

SLURM = {"SLURM_JOB_NODELIST": "node[01-04]", "SLURM_PROCID": "6", "SLURM_NTASKS": "16", "SLURM_LOCALID": "2"}


def test_slurm_node_list_gives_the_first_node_as_master_and_the_task_variables_the_ranks() -> None:
    place = process_from_environment("slurm", SLURM)
    assert place == ProcessPlace(rank=6, world_size=16, local_rank=2, master_addr="node01", master_port="33333")
    assert not place.is_main


def test_slurm_master_port_comes_from_the_environment_when_set() -> None:
    place = process_from_environment("slurm", {**SLURM, "SLURM_JOB_NODELIST": "gpu-a[7,9-10],gpu-b3", "MASTER_PORT": "4100"})
    assert (place.master_addr, place.master_port) == ("gpu-a7", "4100")


def test_torchrun_and_mpi_variables_are_read_as_given() -> None:
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"}
    assert process_from_environment("torchrun", torchrun) == ProcessPlace(1, 2, 1, "10.0.0.5", "29500")
    mpi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    assert process_from_environment("mpi", mpi) == ProcessPlace(3, 4, 0, "localhost", "33333")
    assert process_from_environment("none", {}) == SINGLE_PROCESS


def test_a_missing_launcher_variable_is_an_error_naming_it() -> None:
    with pytest.raises(UserInputError, match="--launcher slurm: the environment lacks SLURM_JOB_NODELIST"):
        process_from_environment("slurm", {k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"})


def test_each_epoch_the_shards_of_the_processes_partition_the_shuffled_data() -> None:
    items = [{"positions": torch.full((1, 3), float(i))} for i in range(10)]
    seen_by_epoch = []
    for epoch in range(2):
        shards = []
        for rank in range(2):
            loader = make_loader(items, batch_size=1, shuffle=True, seed=7, replicas=(rank, 2))
            set_loader_epoch(loader, epoch)
            shards.append([int(batch["positions"][0, 0]) for batch in loader])
        assert sorted(shards[0] + shards[1]) == list(range(10))
        seen_by_epoch.append(shards[0])
    assert seen_by_epoch[0] != seen_by_epoch[1]


def _labelled_molecules(count: int) -> List[Configuration]:
    rng = np.random.default_rng(3)
    molecules = []
    for _ in range(count):
        molecule = random_molecule(rng, num_atoms=5)
        molecules.append(Configuration(
            atomic_numbers=molecule.atomic_numbers, positions=molecule.positions,
            energy=float(rng.normal()), forces=rng.normal(size=(5, 3)),
        ))
    return molecules


def _gradients(model: torch.nn.Module, module: torch.nn.Module, configs: List[Configuration]) -> Dict[str, torch.Tensor]:
    loss_fn = build_loss("ef", 1.0, 100.0, 1.0, 1.0, 0.01)
    batch = batch_of(configs, model)
    loss_fn(batch, module(batch, training=True)).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _rank_gradients(rank: int, port: int, folder: str) -> None:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    with joined_process_group(ProcessPlace(rank, 2, rank, "127.0.0.1", str(port)), "cpu"):
        torch.manual_seed(0)
        model = tiny_model()
        configs = _labelled_molecules(4)[2 * rank : 2 * rank + 2]
        gradients = _gradients(model, data_parallel(model, torch.device("cpu")), configs)
        torch.save(gradients, Path(folder) / f"rank{rank}.pt")


def test_two_gloo_processes_get_the_gradients_of_one_process_on_the_union_of_their_batches(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_rank_gradients, args=(free_local_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = tiny_model()
    expected = _gradients(model, model, _labelled_molecules(4))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == expected.keys()
        for name, gradient in expected.items():
            assert torch.allclose(got[name], gradient, rtol=0, atol=1e-10), name
            assert gradient.abs().max() > 0 or name.endswith("bessel_weights"), name


def test_combined_shards_give_the_metrics_of_the_whole_set() -> None:
    model = tiny_model()
    configs = _labelled_molecules(6)
    whole, shards = ErrorAccumulator(), [ErrorAccumulator(), ErrorAccumulator()]
    for index, config in enumerate(configs):
        batch = batch_of([config], model)
        output = model(batch)
        whole.add(batch, output)
        shards[index % 2].add(batch, output)
    combined = ErrorAccumulator.combined(shards).metrics()
    assert combined.keys() == whole.metrics().keys()
    for key, value in whole.metrics().items():
        assert combined[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_shard_outside_a_process_group_is_the_items_themselves():
    """No copy: graphs built on access (HDF5 data) must stay unbuilt until a batch asks."""
    items = range(7)
    assert shard(items) is items
