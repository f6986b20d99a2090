"""``mace.tools.torch_geometric.dataloader.DataLoader``: see the package docstring."""
from mace.data.atomic_data import AtomicDataLoader as DataLoader

__all__ = ["DataLoader"]
