"""Preprocessing extxyz into sharded HDF5: upstream's files, split and order; statistics
equal to those run_train computes; parallel writing changes nothing; no half-written output."""
import random
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms

from mace.core.atomic_numbers import AtomicNumberTable
from mace.core.errors import UserInputError
from mace.data import load_from_xyz, random_train_valid_split
from mace.data.datasets import DataSettings
from mace.data.hdf5 import HDF5Configurations
from mace.data.preprocess import PreprocessSettings, preprocess
from mace.data.statistics import average_num_neighbors, read_statistics, resolve_e0s, scale_and_shift
from tests.data.frames import KEYS, make_frames, write_xyz

SEED = 5


@pytest.fixture
def files(tmp_path):
    return {
        "train": write_xyz(tmp_path / "train.xyz", make_frames(11, seed=1)),
        "test": write_xyz(tmp_path / "test.xyz", make_frames(3, seed=2)),
    }


def settings_for(files, prefix, **changes):
    data = DataSettings(train_file=files["train"], test_file=files.get("test"), valid_fraction=0.3, seed=SEED, **KEYS)
    values = dict(data=data, h5_prefix=prefix, num_process=2, compute_statistics=True, r_max=3.0, e0s="average",
                  work_dir=str(Path(prefix).parent))
    return PreprocessSettings(**{**values, **changes})


def energies(configs):
    return [config.energy for config in configs]


def expected_sets(files):
    """Upstream's order: the seeded split, then Python's random (seeded) shuffles train, then valid."""
    _, configs = load_from_xyz(files["train"], **KEYS)
    train, valid, _ = random_train_valid_split(configs, 0.3, SEED)
    generator = random.Random(SEED)
    generator.shuffle(train)
    generator.shuffle(valid)
    return train, valid


def test_writes_upstreams_files_with_its_split_order_and_shards(tmp_path, files):
    prefix = f"{tmp_path}/out/"
    result = preprocess(settings_for(files, prefix))
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "statistics.json", "test/test_0.h5", "test/test_1.h5", "train/train_0.h5", "train/train_1.h5",
        "val/val_0.h5", "val/val_1.h5",
    ]
    assert result.files["train"] == [tmp_path / "out/train/train_0.h5", tmp_path / "out/train/train_1.h5"]
    train, valid = expected_sets(files)
    assert energies(HDF5Configurations(tmp_path / "out/train")) == energies(train)
    assert energies(HDF5Configurations(tmp_path / "out/val")) == energies(valid)
    assert energies(HDF5Configurations(tmp_path / "out/test")) == energies(load_from_xyz(files["test"], **KEYS)[1])
    assert [len(HDF5Configurations(p)) for p in result.files["train"]] == [4, 4]  # 8 of 11 train, in halves
    with h5py.File(result.files["valid"][0], "r") as handle:
        assert bool(handle.attrs["drop_last"]) is True  # 3 validation configurations: odd, as upstream marks it
    _, _, held_out = random_train_valid_split(list(range(11)), 0.3, SEED)
    assert np.loadtxt(tmp_path / f"valid_indices_{SEED}.txt", dtype=int).tolist() == held_out


def test_statistics_are_those_run_train_computes_on_the_stored_training_set(tmp_path, files):
    preprocess(settings_for(files, f"{tmp_path}/out/"))
    statistics = read_statistics(tmp_path / "out/statistics.json")
    train = list(HDF5Configurations(tmp_path / "out/train"))
    table = AtomicNumberTable([1, 6, 8])
    e0s = resolve_e0s("average", train, {}, table)
    scale, shift = scale_and_shift("rms_forces_scaling", train, e0s)
    assert statistics.atomic_energies == e0s
    assert statistics.avg_num_neighbors == average_num_neighbors(train, 3.0)
    assert (statistics.std, statistics.mean) == (scale, shift)
    assert statistics.atomic_numbers == [1, 6, 8] and statistics.r_max == 3.0


def test_one_process_and_three_write_the_same_data(tmp_path, files):
    one = preprocess(settings_for(files, f"{tmp_path}/one/", num_process=1))
    three = preprocess(settings_for(files, f"{tmp_path}/three/", num_process=3))
    assert len(one.files["train"]) == 1 and len(three.files["train"]) == 3
    for role in ("train", "valid", "test"):
        folder = one.files[role][0].parent.name
        assert energies(HDF5Configurations(tmp_path / "one" / folder)) == energies(HDF5Configurations(tmp_path / "three" / folder))
    assert one.statistics == three.statistics  # neighbour counts add up exactly over shards


def test_no_shuffle_keeps_the_split_order_and_a_valid_file_is_used_whole(tmp_path, files):
    files = {"train": files["train"], "valid": write_xyz(tmp_path / "valid.xyz", make_frames(2, seed=9))}
    settings = settings_for(files, f"{tmp_path}/out/", shuffle=False, compute_statistics=False)
    preprocess(replace(settings, data=replace(settings.data, valid_file=files["valid"], test_file=None)))
    assert energies(HDF5Configurations(tmp_path / "out/train")) == energies(load_from_xyz(files["train"], **KEYS)[1])
    assert energies(HDF5Configurations(tmp_path / "out/val")) == energies(load_from_xyz(files["valid"], **KEYS)[1])
    assert not (tmp_path / "out/test").exists() and not (tmp_path / "out/statistics.json").exists()


def test_isolated_atoms_give_the_e0s_and_are_left_out(tmp_path):
    frames = make_frames(6, seed=4)
    for z, energy in ((1, -13.6), (6, -1029.0), (8, -2042.0)):
        frames.append(Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]], info={"config_type": "IsolatedAtom", "REF_energy": energy}))
    files = {"train": write_xyz(tmp_path / "train.xyz", frames)}
    result = preprocess(settings_for(files, f"{tmp_path}/out/", e0s=None))
    assert result.statistics.atomic_energies == {1: -13.6, 6: -1029.0, 8: -2042.0}
    stored = list(HDF5Configurations(tmp_path / "out/train")) + list(HDF5Configurations(tmp_path / "out/val"))
    assert len(stored) == 6 and all(config.num_atoms > 1 for config in stored)


def test_a_failure_replaces_nothing_and_leaves_no_temporaries(tmp_path, files):
    prefix = f"{tmp_path}/out/"
    preprocess(settings_for(files, prefix))
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    other = {"train": write_xyz(tmp_path / "other.xyz", make_frames(7, seed=8)), "test": files["test"]}
    with pytest.raises(UserInputError, match="no E0"):  # after every shard was written: no E0s anywhere
        preprocess(settings_for(other, prefix, e0s=None))
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before


def test_shards_of_an_earlier_run_with_more_processes_are_removed(tmp_path, files):
    prefix = f"{tmp_path}/out/"
    preprocess(settings_for(files, prefix, num_process=3, compute_statistics=False))
    assert (tmp_path / "out/train/train_2.h5").exists()
    preprocess(settings_for(files, prefix, num_process=2, compute_statistics=False))
    assert sorted(p.name for p in (tmp_path / "out/train").iterdir()) == ["train_0.h5", "train_1.h5"]
    assert len(HDF5Configurations(tmp_path / "out/train")) == 8


def test_more_processes_than_configurations_write_one_shard_each(tmp_path, files):
    result = preprocess(settings_for(files, f"{tmp_path}/out/", num_process=5, compute_statistics=False))
    assert len(result.files["valid"]) == 3 and len(result.files["train"]) == 5 and len(result.files["test"]) == 3


def test_hdf5_input_is_refused(tmp_path, files):
    preprocess(settings_for(files, f"{tmp_path}/out/", compute_statistics=False))
    with pytest.raises(UserInputError, match="reads extxyz files"):
        preprocess(settings_for({"train": str(tmp_path / "out/train")}, f"{tmp_path}/again/"))
    with pytest.raises(UserInputError, match="--num_process must be at least 1"):
        preprocess(settings_for(files, f"{tmp_path}/again/", num_process=0))
    assert not (tmp_path / "again").exists()
