"""Batching graphs into one disconnected graph, without torch_geometric.

Rule for every key: 0-d tensors (per-graph scalars) are stacked to (G,), everything else is
concatenated along dim 0, and ``edge_index`` is offset by the nodes of earlier graphs. So
``cell`` (3, 3) becomes (3G, 3) and ``stress`` (1, 3, 3) becomes (G, 3, 3), as upstream.
"""
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

Graph = Dict[str, torch.Tensor]
Layout = Tuple[Tuple[str, torch.dtype, Tuple[int, ...], int], ...]  # key, dtype, shape, offset in its buffer


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


class WorkerBatch(dict):
    """A batch collated in a loader worker, pickled to the training process as one buffer
    per dtype. Torch passes every tensor of a pickled object through a file descriptor of
    its own (a socket round trip each); with the ~20 tensors of a batch that made each step
    wait about 15 ms for a batch the worker had long finished."""

    def __reduce__(self) -> Tuple[object, Tuple[Layout, Dict[torch.dtype, torch.Tensor]]]:
        return _unpack_batch, _pack_batch(self)

    def __copy__(self) -> "WorkerBatch":
        return WorkerBatch(self)


def _pack_batch(batch: Graph) -> Tuple[Layout, Dict[torch.dtype, torch.Tensor]]:
    layout, parts, filled = [], {}, {}
    for key, value in batch.items():
        offset = filled.get(value.dtype, 0)
        layout.append((key, value.dtype, tuple(value.shape), offset))
        parts.setdefault(value.dtype, []).append(value.reshape(-1))
        filled[value.dtype] = offset + value.numel()
    return tuple(layout), {dtype: torch.cat(values) for dtype, values in parts.items()}


def _unpack_batch(layout: Layout, buffers: Dict[torch.dtype, torch.Tensor]) -> Graph:
    """The batch again, as a plain dict of views into the buffers."""
    return {key: buffers[dtype][offset : offset + math.prod(shape)].view(shape) for key, dtype, shape, offset in layout}


def collate_in_worker(graphs: List[Graph]) -> WorkerBatch:
    """:func:`collate_graphs` for loader workers (see :class:`WorkerBatch`)."""
    return WorkerBatch(collate_graphs(graphs))


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
    collate = collate_graphs if num_workers == 0 else collate_in_worker
    if replicas is not None:
        rank, world_size = replicas
        sampler = DistributedSampler(
            graphs, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed or 0, drop_last=False
        )
        return DataLoader(
            graphs, batch_size=batch_size, sampler=sampler, drop_last=drop_last, collate_fn=collate,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        )
    return DataLoader(
        graphs,
        batch_size=batch_size,
        sampler=_order(graphs, shuffle, seed),
        drop_last=drop_last,
        collate_fn=collate,
        generator=_seeded(seed),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,  # no new worker processes (and no wait for them) each epoch
    )


class EpochOrder(RandomSampler):
    """A shuffled order from a generator of its own, the same for any ``num_workers``.

    A DataLoader draws its workers' seed from its ``generator`` whenever it starts an
    iterator: every epoch without workers, once with persistent workers. Were that also the
    generator of the order, every epoch after the first (and a resumed run) would be
    shuffled differently with workers. Each epoch still draws that one value before its
    permutation, so the orders are the ones drawn without workers before this class."""

    def __iter__(self) -> Iterator[int]:
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        yield from super().__iter__()


def _seeded(seed: Optional[int]) -> Optional[torch.Generator]:
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _order(graphs: Sequence[Graph], shuffle: bool, seed: Optional[int]) -> Sampler:
    """Without a seed, shuffled from torch's global generator as DataLoader(shuffle=True)."""
    if not shuffle:
        return SequentialSampler(graphs)
    if seed is None:
        return RandomSampler(graphs)
    return EpochOrder(graphs, generator=_seeded(seed))


def set_loader_epoch(loader: object, epoch: int) -> None:
    """A distributed sampler shuffles by epoch: tell it which one starts (no-op otherwise)."""
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


def _order_generator(loader: object) -> Optional[torch.Generator]:
    return getattr(getattr(loader, "sampler", None), "generator", None)


def shuffle_state(loader: object) -> Optional[torch.Tensor]:
    """State of the generator that shuffles ``loader`` (None without one): a checkpoint keeps
    it so that a resumed run draws the batches of every later epoch as the uninterrupted one."""
    generator = _order_generator(loader)
    return None if generator is None else generator.get_state()


def restore_shuffle_state(loader: object, state: Optional[torch.Tensor]) -> None:
    """Put back what :func:`shuffle_state` saved; a checkpoint without it leaves ``loader`` as is."""
    generator = _order_generator(loader)
    if generator is not None and state is not None:
        generator.set_state(state.cpu())  # loaded with map_location, it may sit on the GPU
