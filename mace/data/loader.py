"""Batching graphs into one disconnected graph, without torch_geometric.

Rule for every key: 0-d tensors (per-graph scalars) are stacked to (G,), everything else is
concatenated along dim 0, and ``edge_index`` is offset by the nodes of earlier graphs. So
``cell`` (3, 3) becomes (3G, 3) and ``stress`` (1, 3, 3) becomes (G, 3, 3), as upstream.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

Graph = Dict[str, torch.Tensor]


def _node_offsets(graphs: Sequence[Graph]) -> torch.Tensor:
    sizes = torch.tensor([graph["positions"].shape[0] for graph in graphs], dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, dim=0)])


def _collate_key(key: str, graphs: Sequence[Graph], ptr: torch.Tensor) -> torch.Tensor:
    values = [graph[key] for graph in graphs]
    if key == "edge_index":
        return torch.cat([edges + offset for edges, offset in zip(values, ptr[:-1])], dim=1)
    if values[0].dim() == 0:
        return torch.stack(values)
    return torch.cat(values, dim=0)


def collate_graphs(graphs: List[Graph]) -> Graph:
    """One batch: the graphs' keys merged, plus ``batch`` (graph of each node) and ``ptr``."""
    ptr = _node_offsets(graphs)
    batch = {key: _collate_key(key, graphs, ptr) for key in graphs[0]}
    sizes = ptr[1:] - ptr[:-1]
    batch["batch"] = torch.repeat_interleave(torch.arange(len(graphs)), sizes)
    batch["ptr"] = ptr
    return batch


def batch_to_device(
    batch: Graph, device: Union[torch.device, str], dtype: Optional[torch.dtype] = None
) -> Graph:
    """Copy of ``batch`` on ``device``; with ``dtype``, floating tensors are cast to it (the model's)."""
    return {
        key: value.to(device=device, dtype=dtype) if dtype is not None and value.is_floating_point() else value.to(device)
        for key, value in batch.items()
    }


def make_loader(
    graphs: Sequence[Graph],
    batch_size: int,
    shuffle: bool,
    drop_last: bool = False,
    seed: Optional[int] = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    replicas: Optional[Tuple[int, int]] = None,
) -> DataLoader:
    """DataLoader over graphs; with a ``seed`` the shuffling order is reproducible (the
    order is drawn in this process, so it does not depend on ``num_workers``, the processes
    that collate batches); ``pin_memory`` page-locks batches for faster copies to a GPU.

    ``replicas`` = (rank, world_size) of a data-parallel run: each process then draws its
    own share of every epoch's shuffled order (torch's DistributedSampler, seeded with
    ``seed``; the caller sets its epoch), padded so that every process takes as many steps.
    """
    if not isinstance(graphs, Dataset):  # a Dataset (LazyGraphs) builds each graph when asked: keep it so
        graphs = list(graphs)
    if replicas is not None:
        rank, world_size = replicas
        sampler = DistributedSampler(
            graphs, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed or 0, drop_last=False
        )
        return DataLoader(
            graphs, batch_size=batch_size, sampler=sampler, drop_last=drop_last, collate_fn=collate_graphs,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        )
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    return DataLoader(
        graphs,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        collate_fn=collate_graphs,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,  # no new worker processes (and no wait for them) each epoch
    )


def set_loader_epoch(loader: object, epoch: int) -> None:
    """A distributed sampler shuffles by epoch: tell it which one starts (no-op otherwise)."""
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


def shuffle_state(loader: object) -> Optional[torch.Tensor]:
    """State of the generator that shuffles ``loader`` (None without one): a checkpoint keeps
    it so that a resumed run draws the batches of every later epoch as the uninterrupted one."""
    generator = getattr(loader, "generator", None)
    return None if generator is None else generator.get_state()


def restore_shuffle_state(loader: object, state: Optional[torch.Tensor]) -> None:
    """Put back what :func:`shuffle_state` saved; a checkpoint without it leaves ``loader`` as is."""
    generator = getattr(loader, "generator", None)
    if generator is not None and state is not None:
        generator.set_state(state.cpu())  # loaded with map_location, it may sit on the GPU
