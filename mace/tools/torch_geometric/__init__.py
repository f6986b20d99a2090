"""Upstream's ``mace.tools.torch_geometric``, as far as scripts use it to batch graphs:
``torch_geometric.dataloader.DataLoader(dataset=[AtomicData.from_config(...)], batch_size=...)``.

A face only: the loader is :class:`mace.data.atomic_data.AtomicDataLoader`, over our own
batching (``mace.data.loader``). Upstream's copy of torch_geometric (``Data``, ``Batch``,
``Dataset``) is not provided.
"""
from mace.tools.torch_geometric import dataloader
from mace.tools.torch_geometric.dataloader import DataLoader

__all__ = ["DataLoader", "dataloader"]
