"""The training, validation and test sets of a run, read as its :class:`DataSettings` say."""
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mace.data.configuration import (
    LABELS,
    Configuration,
    LazyConfigurations,
    group_by_config_type,
    load_from_xyz,
    random_train_valid_split,
)
from mace.data.hdf5 import HDF5Configurations, is_hdf5_source
from mace.core.errors import UserInputError
from mace.core.files import atomic_write

NamedSet = Tuple[str, Sequence[Configuration]]

# Labels every file a run trains or validates on must have in at least one frame (a key no
# frame has is most likely a mistyped --energy_key / --forces_key); frames that lack them
# train with zero weight for them, as upstream.
REQUIRED_LABELS = ("energy", "forces")


@dataclass
class Datasets:
    """``valid_indices``: which frames of the training file a seeded split held out (None
    with --valid_file). A set read from HDF5 is a :class:`LazyConfigurations`, read on access."""

    train: Sequence[Configuration]
    valid: Sequence[Configuration]
    tests: List[NamedSet] = field(default_factory=list)
    isolated_atom_e0s: Dict[int, float] = field(default_factory=dict)
    valid_indices: Optional[List[int]] = None

    def all_sets(self) -> List[Sequence[Configuration]]:
        return [self.train, self.valid, *(configs for _, configs in self.tests)]


@dataclass(frozen=True)
class DataSettings:
    """Where a run's configurations come from and under which keys their labels are stored
    (upstream's flag names and defaults); ``seed`` draws the validation split. A file ending
    in .h5 / .hdf5, or a folder of them, is preprocessed data (``mace.data.hdf5``): its
    labels and weights were read when it was written, so the keys do not apply to it."""

    train_file: str
    valid_file: Optional[str] = None
    valid_fraction: float = 0.1
    test_file: Optional[str] = None
    test_dir: Optional[str] = None
    seed: int = 123
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
    virials_key: str = "virials"
    config_type_weights: Mapping[str, float] = field(default_factory=lambda: {"Default": 1.0})
    keep_isolated_atoms: bool = False


def read_xyz(path: str, settings: DataSettings, **kwargs: Any) -> Tuple[Dict[int, float], List[Configuration]]:
    return load_from_xyz(
        path,
        energy_key=settings.energy_key,
        forces_key=settings.forces_key,
        stress_key=settings.stress_key,
        virials_key=settings.virials_key,
        config_type_weights=dict(settings.config_type_weights),
        **kwargs,
    )


def _read_set(path: str, settings: DataSettings, **kwargs: Any) -> Tuple[Dict[int, float], Sequence[Configuration]]:
    """Configurations of an extxyz file (with the E0s of its isolated atoms when asked), or
    of preprocessed HDF5 data, read on access (no isolated atoms: preprocessing took them out)."""
    if is_hdf5_source(path):
        return {}, HDF5Configurations(path)
    return read_xyz(path, settings, **kwargs)


def _split(configs: Sequence[Configuration], fraction: float, seed: int) -> Tuple[Sequence[Configuration], Sequence[Configuration], List[int]]:
    """The seeded split of :func:`random_train_valid_split`; of a set read on access, as views."""
    if isinstance(configs, LazyConfigurations):
        train, valid, indices = random_train_valid_split(range(len(configs)), fraction, seed)
        return configs.subset(train), configs.subset(valid), indices
    return random_train_valid_split(configs, fraction, seed)


def _config_type_groups(configs: Sequence[Configuration]) -> List[NamedSet]:
    if not isinstance(configs, LazyConfigurations):
        return group_by_config_type(configs)
    groups: Dict[str, List[int]] = {}
    for index, config_type in enumerate(configs.config_types()):
        groups.setdefault(config_type, []).append(index)
    return [(config_type, configs.subset(indices)) for config_type, indices in groups.items()]


def test_sets(settings: DataSettings) -> List[NamedSet]:
    """One set per test file (test_dir: every .xyz in it), split further by config_type; a
    test file may be preprocessed data too (an .h5 file or a folder of them)."""
    paths: List[Path] = []
    if settings.test_file:
        paths.append(Path(settings.test_file))
    if settings.test_dir:
        directory = Path(settings.test_dir)
        if not directory.is_dir():
            raise UserInputError(f"--test_dir {directory} is not a folder")
        paths.extend(sorted(directory.glob("*.xyz")))
    sets: List[NamedSet] = []
    for path in paths:
        _, configs = _read_set(str(path), settings)
        groups = _config_type_groups(configs)
        if len(groups) == 1:
            sets.append((path.stem, groups[0][1]))
        else:
            sets.extend((f"{path.stem}:{config_type}", group) for config_type, group in groups)
    return sets


def load_datasets(settings: DataSettings) -> Datasets:
    """Train/valid (file or seeded split) and tests; nothing is written (see :func:`write_valid_indices`).

    Frames of the training or validation file without an energy or forces train with zero
    weight for them (one warning per file and label); a file where no frame has one is an
    error. Test files are evaluated on the labels their frames have."""
    isolated, train = _read_set(
        settings.train_file, settings, extract_atomic_energies=True, keep_isolated_atoms=settings.keep_isolated_atoms,
        required_labels=REQUIRED_LABELS, role="train",
    )
    indices: Optional[List[int]] = None
    if settings.valid_file:
        _, valid = _read_set(settings.valid_file, settings, required_labels=REQUIRED_LABELS, role="validate")
    else:
        train, valid, indices = _split(train, settings.valid_fraction, settings.seed)
    datasets = Datasets(train=train, valid=valid, tests=test_sets(settings), isolated_atom_e0s=isolated, valid_indices=indices)
    logging.info(
        "Data: %d training, %d validation configurations; test sets: %s",
        len(train), len(valid), ", ".join(f"{name} ({len(c)})" for name, c in datasets.tests) or "none",
    )
    return datasets


def write_valid_indices(datasets: Datasets, path: Path, train_file: str) -> None:
    """Record the held-out frames of a seeded split. The run calls it only once every input
    (data, model, restart) has been validated, so bad input never replaces an earlier run's file."""
    if datasets.valid_indices is None:
        return
    indices = np.asarray(datasets.valid_indices, dtype=int)
    atomic_write(path, lambda temporary: np.savetxt(temporary, indices, fmt="%d"))
    logging.info(
        "Validation set: %d of %d configurations of %s (indices in %s)",
        len(datasets.valid), len(datasets.train) + len(datasets.valid), train_file, path,
    )


def _element_arrays(configs: Sequence[Configuration]) -> Iterator[np.ndarray]:
    if isinstance(configs, LazyConfigurations):
        return configs.element_arrays()  # reads nothing else
    return (config.atomic_numbers for config in configs)


def dataset_elements(datasets: Datasets, explicit: Optional[List[int]], *more: Datasets) -> List[int]:
    """Elements of the model: --atomic_numbers if given (must cover the data), else those in
    the data (of ``datasets`` and ``more``, the data of further heads)."""
    sets = [configs for each in (datasets, *more) for configs in each.all_sets()]
    present = sorted({int(z) for configs in sets for numbers in _element_arrays(configs) for z in numbers})
    if explicit is None:
        return present
    missing = sorted(set(present) - set(explicit))
    if missing:
        raise UserInputError(f"--atomic_numbers lacks elements present in the data: {missing}")
    return sorted(explicit)


def replay_settings(settings: DataSettings, train_file: str, valid_file: Optional[str]) -> DataSettings:
    """The data of a replayed pretraining head: read with the keys, split fraction and seed of
    the fine-tuning data (as upstream), without test sets."""
    return dataclasses.replace(settings, train_file=train_file, valid_file=valid_file, test_file=None, test_dir=None)


def with_label_weights_scaled(configs: Sequence[Configuration], factor: float, flag: str) -> Sequence[Configuration]:
    """``configs`` with every label weight times ``factor`` (``flag`` names the setting in errors)."""
    if factor == 1.0:
        return configs
    if isinstance(configs, LazyConfigurations):
        raise UserInputError(f"{flag} {factor}: label weights of preprocessed HDF5 data are fixed; give extxyz data")
    return [
        dataclasses.replace(config, **{f"{label}_weight": getattr(config, f"{label}_weight") * factor for label in LABELS})
        for config in configs
    ]


def upsampling_copies(num_finetuning: int, num_replay: int, threshold: float) -> int:
    """How often the fine-tuning configurations enter an epoch beside ``num_replay`` replayed
    ones: upstream repeats them 1 + int(threshold / ratio) times when their ratio falls below
    ``threshold`` (--real_pt_data_ratio_threshold), so they are not drowned out."""
    ratio = num_finetuning / max(num_replay, 1)
    if ratio >= threshold or num_finetuning == 0:
        return 1
    return 1 + int(threshold / ratio)
