"""Configurations in HDF5 files, in the layout of upstream's ``preprocess_data`` (0.3.16).

The layout, as upstream writes and reads it:

- a file holds groups ``config_batch_0``, ``config_batch_1``, ... (its writer makes one);
  each holds groups ``config_0``, ``config_1``, ... in order, one per configuration;
- a configuration group holds the datasets ``atomic_numbers`` (n,), ``positions`` (n, 3),
  ``cell`` (3, 3), ``pbc`` (3,) bool, ``weight`` (scalar) and ``config_type`` (string), and
  two subgroups: ``properties`` with one dataset per label (``energy``, ``forces``,
  ``stress``, ``virials``, and upstream's others, which this fork ignores) and
  ``property_weights`` with the loss weight of each;
- an absent value is stored as the string ``"None"``;
- the file attribute ``drop_last`` (bool) says whether the whole set had an odd count
  (written for upstream's readers; it has no effect here).

Files of upstream's releases before ``properties`` existed keep the labels and their
``*_weight`` beside ``positions``; they are read as well. A folder of such files (shards)
is one set, the shards in the order of the number after their last ``_`` (``train_2``
before ``train_10``).
"""
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from mace.core.errors import UserInputError
from mace.data.configuration import (
    DEFAULT_CONFIG_TYPE,
    LABELS,
    Configuration,
    LazyConfigurations,
    non_finite_label,
)

HDF5_SUFFIXES = (".h5", ".hdf5")
NONE = "None"
BATCH_PREFIX = "config_batch_"
CONFIG_PREFIX = "config_"

# Labels of upstream's other models, written as absent with zero weight, as upstream writes
# them for a frame without them: upstream's reader weights a label with no stored weight 1.
ABSENT_LABELS = ("dipole", "charges", "polarizability")

PathLike = Union[str, os.PathLike]


def is_hdf5_source(path: PathLike) -> bool:
    """Whether ``path`` names preprocessed data: an ``.h5`` / ``.hdf5`` file or a folder."""
    path = Path(path)
    return path.suffix.lower() in HDF5_SUFFIXES or path.is_dir()


def _shard_order(path: Path) -> Tuple[str, int, str]:
    match = re.fullmatch(r"(.*)_(\d+)", path.stem)
    return (match.group(1), int(match.group(2)), path.name) if match else (path.stem, -1, path.name)


def hdf5_files(source: PathLike) -> List[Path]:
    """The files of ``source``: itself, or the ``.h5`` / ``.hdf5`` files of a folder in shard order."""
    source = Path(source)
    if source.is_dir():
        files = sorted((p for p in source.iterdir() if p.suffix.lower() in HDF5_SUFFIXES and p.is_file()), key=_shard_order)
        if not files:
            raise UserInputError(f"Data folder {source} holds no .h5 or .hdf5 files")
        return files
    if not source.exists():
        raise UserInputError(f"Data file {source} does not exist.")
    if not source.is_file():
        raise UserInputError(f"Data file {source} is not a regular file.")
    return [source]


def _numbered(group: h5py.Group, prefix: str) -> List[str]:
    """Member names ``prefix<k>`` of ``group``, by k."""
    names = [name for name in group if name.startswith(prefix) and name[len(prefix):].isdigit()]
    return sorted(names, key=lambda name: int(name[len(prefix):]))


# HDF5's cache of a file's metadata (group and dataset headers): bounded, so that reading
# every configuration of a large file once does not keep growing the process (with the
# library's default bound, 32 MiB, memory grew by three times that over a 40 MB file).
METADATA_CACHE_BYTES = (1 << 20, 2 << 20)  # (initial and minimum, maximum)


def _open(path: Path) -> h5py.File:
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise UserInputError(f"{path} is not a readable HDF5 file ({error})") from None
    config = handle.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.min_size = METADATA_CACHE_BYTES[0]
    config.max_size = METADATA_CACHE_BYTES[1]
    handle.id.set_mdc_config(config)
    return handle


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _stored(value: Any) -> Any:
    return NONE if value is None else value


def write_configurations(path: PathLike, configs: Sequence[Configuration], drop_last: bool = False) -> None:
    """One shard: ``configs`` in one ``config_batch_0`` group, labels under ``properties``."""
    with h5py.File(path, "w") as handle:
        handle.attrs["drop_last"] = bool(drop_last)
        batch = handle.create_group(f"{BATCH_PREFIX}0")
        for index, config in enumerate(configs):
            group = batch.create_group(f"{CONFIG_PREFIX}{index}")
            group["atomic_numbers"] = config.atomic_numbers
            group["positions"] = config.positions
            properties = group.create_group("properties")
            weights = group.create_group("property_weights")
            for label in LABELS:
                properties[label] = _stored(getattr(config, label))
                weights[label] = float(getattr(config, f"{label}_weight"))
            for label in ABSENT_LABELS:
                properties[label] = NONE
                weights[label] = 0.0
            group["cell"] = config.cell
            group["pbc"] = np.asarray(config.pbc, dtype=bool)
            group["weight"] = float(config.weight)
            group["config_type"] = config.config_type


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _value(dataset: Optional[h5py.Dataset]) -> Any:
    """The stored value; a missing dataset or upstream's ``"None"`` (a missing value) is None."""
    if dataset is None:
        return None
    value = dataset[()]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return None if isinstance(value, str) and value == NONE else value


def _required(group: h5py.Group, name: str) -> np.ndarray:
    dataset = group.get(name)
    if dataset is None:
        raise UserInputError(f"has no '{name}' dataset")
    return dataset[()]


def configuration_from_group(group: h5py.Group) -> Configuration:
    """The configuration stored in ``group`` (labels that are absent get zero weight).

    Each member is looked up once (``get``): lookups, not the reading, are what take time."""
    properties = group.get("properties")
    if properties is not None:  # upstream 0.3.16
        labels = {label: _value(properties.get(label)) for label in LABELS}
        weights_group = group.get("property_weights")
        weights = {label: _value(None if weights_group is None else weights_group.get(label)) for label in LABELS}
    else:  # older files: labels and their weights beside the positions
        labels = {label: _value(group.get(label)) for label in LABELS}
        weights = {label: _value(group.get(f"{label}_weight")) for label in LABELS}
    cell, pbc = _value(group.get("cell")), _value(group.get("pbc"))
    weight, config_type = _value(group.get("weight")), _value(group.get("config_type"))
    return Configuration(
        atomic_numbers=_required(group, "atomic_numbers"),
        positions=_required(group, "positions"),
        energy=None if labels["energy"] is None else float(labels["energy"]),
        forces=labels["forces"],
        stress=labels["stress"],
        virials=labels["virials"],
        cell=np.zeros((3, 3)) if cell is None else cell,
        pbc=(False, False, False) if pbc is None else tuple(bool(p) for p in np.asarray(pbc).reshape(3)),
        weight=1.0 if weight is None else float(weight),
        energy_weight=_weight_or_one(weights["energy"]),
        forces_weight=_weight_or_one(weights["forces"]),
        stress_weight=_weight_or_one(weights["stress"]),
        virials_weight=_weight_or_one(weights["virials"]),
        config_type=DEFAULT_CONFIG_TYPE if config_type is None else str(config_type),
    )


def _weight_or_one(value: Any) -> float:
    """A label's weight; without one, 1 (as upstream reads it; an absent label gets 0 anyway)."""
    return 1.0 if value is None else float(value)


class HDF5Configurations(LazyConfigurations):
    """The configurations of an HDF5 file or a folder of shards, each read when accessed.

    Only the number of configurations of each group is read up front. Every process opens
    the files for itself on first access (a DataLoader worker does not use its parent's
    handles, and pickling leaves them out), so the set can be handed to worker processes.
    """

    def __init__(self, source: PathLike) -> None:
        self.source = str(source)
        self.files = hdf5_files(source)
        groups: List[Tuple[int, str]] = []
        sizes: List[int] = []
        for file_index, path in enumerate(self.files):
            with _open(path) as handle:
                batches = _numbered(handle, BATCH_PREFIX)
                if not batches:
                    raise UserInputError(
                        f"{path} holds no '{BATCH_PREFIX}0' group: it is not a file written by preprocess_data"
                    )
                for name in batches:
                    groups.append((file_index, name))
                    sizes.append(len(_numbered(handle[name], CONFIG_PREFIX)))
        self._groups = groups
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._indices: Optional[np.ndarray] = None
        self._handles: Dict[int, h5py.File] = {}
        self._pid = os.getpid()

    # A view shares the index of its source; it opens files of its own.
    def subset(self, indices: Sequence[int]) -> "HDF5Configurations":
        view = object.__new__(HDF5Configurations)
        view.__dict__.update(self.__getstate__())
        chosen = np.asarray(indices, dtype=np.int64)
        view._indices = chosen if self._indices is None else self._indices[chosen]
        return view

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # an open h5py file cannot be pickled
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return int(self._starts[-1]) if self._indices is None else len(self._indices)

    def _file(self, file_index: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked worker: never read through the parent's handles
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(file_index)
        if handle is None:
            handle = self._handles[file_index] = _open(self.files[file_index])
        return handle

    def _locate(self, index: int) -> Tuple[Path, h5py.Group]:
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"configuration {index} of {size}")
        position = index % size
        stored = position if self._indices is None else int(self._indices[position])
        group_index = int(np.searchsorted(self._starts, stored, side="right")) - 1
        file_index, batch = self._groups[group_index]
        name = f"{batch}/{CONFIG_PREFIX}{stored - int(self._starts[group_index])}"
        return self.files[file_index], self._file(file_index)[name]

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        path, group = self._locate(int(index))
        try:
            config = configuration_from_group(group)
        except (UserInputError, KeyError, ValueError, TypeError) as error:
            raise UserInputError(f"{path} {group.name}: {error}") from None
        keys = {label: label for label in ("positions", *LABELS)}
        non_finite = non_finite_label(config, keys)
        if non_finite is not None:
            raise UserInputError(f"{path} {group.name}: {non_finite} holds NaN or inf; fix or remove the configuration.")
        return config

    def __iter__(self) -> Iterator[Configuration]:
        return (self[index] for index in range(len(self)))

    def element_arrays(self) -> Iterator[np.ndarray]:
        for index in range(len(self)):
            _, group = self._locate(index)
            yield np.asarray(group["atomic_numbers"][()], dtype=np.int64)

    def config_types(self) -> List[str]:
        types = []
        for index in range(len(self)):
            _, group = self._locate(index)
            value = _value(group.get("config_type"))
            types.append(DEFAULT_CONFIG_TYPE if value is None else str(value))
        return types

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __repr__(self) -> str:
        return f"HDF5Configurations({self.source!r}, {len(self)} configurations)"
