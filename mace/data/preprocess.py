"""Preprocessing: extxyz data into sharded HDF5 files and a statistics file, in upstream's
layout (``mace.data.hdf5``) and file names, written by parallel processes.

Under the output prefix P (a folder with a trailing ``/``, or a name prefix, as upstream):
``Ptrain/train_{i}.h5``, ``Pval/val_{i}.h5``, ``Ptest/test_{i}.h5`` (one shard per process;
consecutive runs of the set, in order), and with statistics ``Pstatistics.json``. Nothing
is replaced unless every file was written: shards are written to temporaries and renamed
together at the end.
"""
import logging
import multiprocessing
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mace.core.atomic_numbers import AtomicNumberTable
from mace.core.errors import UserInputError
from mace.core.files import atomic_outputs, remove_stale_temporaries
from mace.data.configuration import Configuration
from mace.data.datasets import DataSettings, Datasets, dataset_elements, load_datasets, read_xyz, write_valid_indices
from mace.data.hdf5 import is_hdf5_source, write_configurations
from mace.data.statistics import (
    DataStatistics,
    average_from_counts,
    neighbour_counts,
    resolve_e0s,
    scale_and_shift,
    write_statistics,
)

# (folder, file stem) of each set, as upstream names them.
SET_FILES = {"train": ("train", "train"), "valid": ("val", "val"), "test": ("test", "test")}
STATISTICS_NAME = "statistics.json"


@dataclass(frozen=True)
class PreprocessSettings:
    """What to read (``data``: files, split, keys) and how to write it: ``h5_prefix`` is
    prepended to the output paths as a string (upstream's convention); ``num_process``
    shards per set and processes; ``shuffle`` the training and validation sets (Python's
    ``random`` seeded with ``data.seed``, as upstream); the statistics use ``r_max``,
    ``e0s`` (None: the training file's isolated atoms; 'average'; or a dict),
    ``atomic_numbers`` (default: those of the training and validation sets) and ``scaling``."""

    data: DataSettings
    h5_prefix: str = ""
    num_process: int = 1
    shuffle: bool = True
    compute_statistics: bool = False
    r_max: float = 5.0
    e0s: Union[None, str, Dict[int, float]] = None
    atomic_numbers: Optional[List[int]] = None
    scaling: str = "rms_forces_scaling"
    work_dir: str = "."


@dataclass
class PreprocessResult:
    files: Dict[str, List[Path]] = field(default_factory=dict)
    statistics: Optional[DataStatistics] = None


def shard_path(prefix: str, role: str, index: int) -> Path:
    folder, stem = SET_FILES[role]
    return Path(f"{prefix}{folder}") / f"{stem}_{index}.h5"


def _chunks(configs: Sequence[Configuration], shards: int) -> List[List[Configuration]]:
    """Consecutive runs of ``configs``, the first ones one longer where it does not divide
    (numpy's array_split, as upstream); at least one (maybe empty), at most one per configuration."""
    count = max(1, min(shards, len(configs)))
    return [[configs[i] for i in part] for part in np.array_split(np.arange(len(configs)), count)]


def _write_shard(path: str, configs: List[Configuration], drop_last: bool, cutoff: Optional[float]) -> Tuple[int, int]:
    """Write one shard (in a worker process); with ``cutoff``, return its neighbour counts."""
    write_configurations(path, configs, drop_last)
    return neighbour_counts(configs, cutoff) if cutoff is not None else (0, 0)


def _pool_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _run_tasks(tasks: List[Tuple[str, List[Configuration], bool, Optional[float]]], processes: int) -> List[Tuple[int, int]]:
    if processes <= 1 or len(tasks) <= 1:
        return [_write_shard(*task) for task in tasks]
    with _pool_context().Pool(min(processes, len(tasks))) as pool:
        return pool.starmap(_write_shard, tasks)


def _stale_shards(prefix: str, role: str, written: int) -> List[Path]:
    """Shards of this set left by an earlier run with more processes (they would be read as part of it)."""
    folder, stem = SET_FILES[role]
    pattern = re.compile(rf"{re.escape(stem)}_(\d+)\.h5")
    directory = Path(f"{prefix}{folder}")
    if not directory.is_dir():
        return []
    return sorted(
        path for path in directory.iterdir()
        if (match := pattern.fullmatch(path.name)) and int(match.group(1)) >= written
    )


def _statistics(
    settings: PreprocessSettings, train: Sequence[Configuration], isolated: Dict[int, float],
    table: AtomicNumberTable, counts: Sequence[Tuple[int, int]],
) -> DataStatistics:
    e0s = resolve_e0s(settings.e0s, train, isolated, table)
    scale, shift = scale_and_shift(settings.scaling, train, e0s)
    edges = sum(edge for edge, _ in counts)
    atoms = sum(atom for _, atom in counts)
    return DataStatistics(
        atomic_energies=e0s, avg_num_neighbors=average_from_counts(edges, atoms), mean=shift, std=scale,
        atomic_numbers=list(table.zs), r_max=settings.r_max,
    )


def _read_sets(settings: PreprocessSettings) -> Tuple[Datasets, List[Configuration]]:
    data = settings.data
    for flag, path in (("--train_file", data.train_file), ("--valid_file", data.valid_file), ("--test_file", data.test_file)):
        if path is not None and is_hdf5_source(path):
            raise UserInputError(f"{flag} {path}: preprocess_data reads extxyz files, not HDF5 data or folders")
    datasets = load_datasets(replace(data, test_file=None, test_dir=None))
    tests: List[Configuration] = []
    if data.test_file is not None:
        _, tests = read_xyz(data.test_file, data)
    return datasets, tests


def preprocess(settings: PreprocessSettings) -> PreprocessResult:
    """Read, split and (optionally) shuffle the data, write every shard in parallel and,
    with ``compute_statistics``, the statistics; return the files written."""
    if settings.num_process < 1:
        raise UserInputError(f"--num_process must be at least 1, got {settings.num_process}")
    datasets, tests = _read_sets(settings)
    table = AtomicNumberTable(dataset_elements(datasets, settings.atomic_numbers))
    train, valid = list(datasets.train), list(datasets.valid)
    if settings.shuffle:
        generator = random.Random(settings.data.seed)
        generator.shuffle(train)
        generator.shuffle(valid)
    sets = {"train": train, "valid": valid, "test": tests} if settings.data.test_file else {"train": train, "valid": valid}
    cutoff = settings.r_max if settings.compute_statistics else None
    result = PreprocessResult()
    tasks: List[Tuple[str, List[Configuration], bool, Optional[float]]] = []
    targets: List[Path] = []
    for role, configs in sets.items():
        chunks = _chunks(configs, settings.num_process)
        result.files[role] = [shard_path(settings.h5_prefix, role, index) for index in range(len(chunks))]
        for path, chunk in zip(result.files[role], chunks):
            targets.append(path)
            tasks.append((path, chunk, len(configs) % 2 == 1, cutoff if role == "train" else None))
    statistics_path = Path(f"{settings.h5_prefix}{STATISTICS_NAME}")
    if settings.compute_statistics:
        targets.append(statistics_path)
    remove_stale_temporaries(targets)  # of a run killed while writing these
    with atomic_outputs(targets) as temporaries:
        counts = _run_tasks([(temporary, *task[1:]) for temporary, task in zip(temporaries, tasks)], settings.num_process)
        if settings.compute_statistics:
            result.statistics = _statistics(settings, train, datasets.isolated_atom_e0s, table, counts[: len(result.files["train"])])
            write_statistics(temporaries[-1], result.statistics)
    for role, paths in result.files.items():
        for stale in _stale_shards(settings.h5_prefix, role, len(paths)):
            logging.info("Removing %s, a shard of an earlier run with more processes", stale)
            stale.unlink()
        logging.info("%s: %d configurations in %d file(s) under %s", role, len(sets[role]), len(paths), paths[0].parent)
    if settings.compute_statistics:
        logging.info("Statistics written to %s", statistics_path)
    write_valid_indices(datasets, Path(settings.work_dir) / f"valid_indices_{settings.data.seed}.txt", settings.data.train_file)
    return result
