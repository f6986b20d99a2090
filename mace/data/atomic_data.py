"""Upstream's ``AtomicData`` and its loader, as a face over our graphs and batches.

Scripts written against upstream build graphs with ``AtomicData.from_config`` and batch them
with ``torch_geometric.dataloader.DataLoader`` (re-exported by ``mace.tools``), then read
``data.positions``, move ``batch.to(device)`` and call ``model(batch.to_dict())``. Here a
graph is the dict of :func:`~mace.data.graph.graph_from_configuration` and a batch the dict
of :func:`~mace.data.loader.collate_graphs`; :class:`AtomicData` is that same dict, readable
by attribute. Nothing else of ours uses this module.
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader

from mace.core.atomic_numbers import AtomicNumberTable
from mace.data.configuration import DEFAULT_HEAD, Configuration
from mace.data.graph import graph_from_configuration
from mace.data.loader import batch_to_device, collate_graphs


class AtomicData(dict):
    """One graph, or a batch of them: a dict of tensors whose keys also read as attributes."""

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}") from None

    @classmethod
    def from_config(
        cls,
        config: Configuration,
        z_table: AtomicNumberTable,
        cutoff: float,
        heads: Optional[List[str]] = None,
        **kwargs: Any,
    ) -> "AtomicData":
        """The graph of ``config`` with edges within ``cutoff``. ``heads`` lists the model's
        heads; as upstream, a configuration whose head is not among them gets the last one.
        Other keywords of upstream's (for models this fork does not have) are ignored, as there."""
        names = [DEFAULT_HEAD] if heads is None else list(heads)
        head = names.index(config.head) if config.head in names else len(names) - 1
        return cls(graph_from_configuration(config, z_table, cutoff, head=head))

    @property
    def num_graphs(self) -> int:
        """1 for a graph, the number of graphs for a batch."""
        return self["ptr"].numel() - 1 if "ptr" in self else 1

    def to_dict(self) -> Dict[str, torch.Tensor]:
        """A plain dict of the same tensors: what the model's forward takes."""
        return dict(self)

    def to(self, device: Union[torch.device, str], dtype: Optional[torch.dtype] = None) -> "AtomicData":
        """A copy on ``device`` (floating tensors cast to ``dtype`` when given)."""
        return type(self)(batch_to_device(self, device, dtype))


def collate_atomic_data(graphs: Sequence[Dict[str, torch.Tensor]]) -> AtomicData:
    """A batch of graphs, as :func:`collate_graphs` merges them, readable by attribute."""
    return AtomicData(collate_graphs(list(graphs)))


class AtomicDataLoader(DataLoader):
    """Upstream's ``torch_geometric.dataloader.DataLoader(dataset, batch_size, shuffle, ...)``:
    a torch DataLoader whose batches are :class:`AtomicData` (``to_dict()``, ``to(device)``,
    ``num_graphs``). Its ``follow_batch`` / ``exclude_keys`` options are not supported."""

    def __init__(
        self,
        dataset: Sequence[Dict[str, torch.Tensor]],
        batch_size: int = 1,
        shuffle: bool = False,
        follow_batch: Optional[List[Optional[str]]] = None,
        exclude_keys: Optional[List[Optional[str]]] = None,
        **kwargs: Any,
    ) -> None:
        for name, value in (("follow_batch", follow_batch), ("exclude_keys", exclude_keys)):
            if value is not None and any(item is not None for item in value):
                raise ValueError(f"DataLoader({name}={value!r}) is not supported: batches keep every key as it is")
        kwargs.pop("collate_fn", None)  # upstream's loader sets its own, as this one does
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_atomic_data, **kwargs)
