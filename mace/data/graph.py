"""One configuration as the dictionary of tensors the MACE model consumes."""
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from mace.data.configuration import Configuration, LazyConfigurations
from mace.data.neighborhood import get_neighborhood
from mace.core.atomic_numbers import AtomicNumberTable, to_one_hot


def _float_tensor(values: object) -> torch.Tensor:
    """Float tensor in the default dtype chosen at run time (float64 or float32)."""
    return torch.tensor(np.asarray(values, dtype=float), dtype=torch.get_default_dtype())


def _or_zeros(values: Optional[np.ndarray], shape: tuple) -> np.ndarray:
    """Absent labels become zeros; their zero loss weight makes the placeholder harmless."""
    return np.zeros(shape) if values is None else values


def graph_from_configuration(
    config: Configuration, z_table: AtomicNumberTable, cutoff: float, head: int = 0
) -> Dict[str, torch.Tensor]:
    """Graph of ``config`` with edges within ``cutoff`` and every label the loss may use.

    ``cell`` is the configuration's own cell (zeros when it has none), as upstream stores
    it: the padding cell used for the neighbour search is not part of the structure.
    """
    edge_index, shifts, unit_shifts, _ = get_neighborhood(
        config.positions, cutoff=cutoff, pbc=config.pbc, cell=config.cell
    )
    indices = torch.from_numpy(z_table.z_to_index(config.atomic_numbers))
    energy = 0.0 if config.energy is None else config.energy
    return {
        "positions": _float_tensor(config.positions),
        "node_attrs": to_one_hot(indices, num_classes=len(z_table)),
        "edge_index": torch.from_numpy(edge_index).long(),
        "shifts": _float_tensor(shifts),
        "unit_shifts": _float_tensor(unit_shifts),
        "cell": _float_tensor(config.cell),
        "energy": _float_tensor(energy),
        "forces": _float_tensor(_or_zeros(config.forces, (config.num_atoms, 3))),
        "stress": _float_tensor(_or_zeros(config.stress, (3, 3))).unsqueeze(0),
        "virials": _float_tensor(_or_zeros(config.virials, (3, 3))).unsqueeze(0),
        "weight": _float_tensor(config.weight),
        "energy_weight": _float_tensor(config.energy_weight),
        "forces_weight": _float_tensor(config.forces_weight),
        "stress_weight": _float_tensor(config.stress_weight),
        "virials_weight": _float_tensor(config.virials_weight),
        "head": torch.tensor(head, dtype=torch.long),
        "num_nodes": torch.tensor(config.num_atoms, dtype=torch.long),
    }


class LazyGraphs(Dataset):
    """Graphs of configurations that are read on access, each built when it is asked for
    (in the DataLoader worker that asks), so that neither is kept in memory."""

    def __init__(self, configs: LazyConfigurations, z_table: AtomicNumberTable, cutoff: float, head: int = 0) -> None:
        self.configs = configs
        self.z_table = z_table
        self.cutoff = cutoff
        self.head = head

    def __len__(self) -> int:
        return len(self.configs)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return graph_from_configuration(self.configs[index], self.z_table, self.cutoff, self.head)


def graphs_of(
    configs: Sequence[Configuration], z_table: AtomicNumberTable, cutoff: float, head: int = 0
) -> Union[List[Dict[str, torch.Tensor]], LazyGraphs]:
    """The graphs of ``configs`` for the model's head index ``head``: built now for
    configurations in memory, on access for those read on access (:class:`LazyConfigurations`)."""
    if isinstance(configs, LazyConfigurations):
        return LazyGraphs(configs, z_table, cutoff, head)
    return [graph_from_configuration(config, z_table, cutoff, head) for config in configs]
