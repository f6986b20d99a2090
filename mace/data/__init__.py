"""Reading labelled structures and turning them into batched graphs for the model."""
from mace.data.atomic_data import AtomicData
from mace.data.configuration import (
    Configuration,
    check_labels,
    compute_average_e0s,
    config_from_atoms,
    group_by_config_type,
    has_label,
    load_from_xyz,
    random_train_valid_split,
    read_frames,
)
from mace.data.graph import graph_from_configuration
from mace.data.loader import batch_to_device, collate_graphs, make_loader
from mace.data.neighborhood import get_neighborhood

__all__ = [
    "AtomicData",
    "Configuration",
    "batch_to_device",
    "check_labels",
    "collate_graphs",
    "compute_average_e0s",
    "config_from_atoms",
    "get_neighborhood",
    "graph_from_configuration",
    "group_by_config_type",
    "has_label",
    "load_from_xyz",
    "make_loader",
    "random_train_valid_split",
    "read_frames",
]
