"""HDF5 data in upstream's layout: what we write reads back to the same configurations and
bitwise the same graphs; files in upstream's layout (written here with h5py from the
layout's facts) read as upstream means them; reading is lazy, per process, and fails clearly."""
import multiprocessing
import pickle
from pathlib import Path

import ase.io
import h5py
import numpy as np
import pytest
import torch

from mace.core.atomic_numbers import AtomicNumberTable
from mace.core.errors import UserInputError
from mace.data import graph_from_configuration, load_from_xyz, make_loader
from mace.data.graph import LazyGraphs, graphs_of
from mace.data.hdf5 import HDF5Configurations, hdf5_files, is_hdf5_source, write_configurations
from tests.data.frames import KEYS, make_frames, write_xyz

TABLE = AtomicNumberTable([1, 6, 8])
FIELDS = ("energy", "weight", "energy_weight", "forces_weight", "stress_weight", "virials_weight", "config_type", "pbc")
ARRAYS = ("atomic_numbers", "positions", "cell", "forces", "stress", "virials")
pytestmark = pytest.mark.usefixtures("float64_default")  # graphs compared in every bit of the data


@pytest.fixture
def configs(tmp_path):
    _, configs = load_from_xyz(write_xyz(tmp_path / "frames.xyz", make_frames(9)), **KEYS)
    return configs


def assert_same_configuration(read, expected):
    for name in FIELDS:
        assert getattr(read, name) == getattr(expected, name), name
    for name in ARRAYS:
        a, b = getattr(read, name), getattr(expected, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and np.array_equal(a, b), name


def assert_same_graph(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_round_trip_keeps_every_field_and_builds_bitwise_equal_graphs(tmp_path, configs):
    write_configurations(tmp_path / "set.h5", configs)
    read = HDF5Configurations(tmp_path / "set.h5")
    assert len(read) == len(configs)
    for stored, original in zip(read, configs):
        assert_same_configuration(stored, original)
        assert_same_graph(
            graph_from_configuration(stored, TABLE, cutoff=3.0), graph_from_configuration(original, TABLE, cutoff=3.0)
        )
    assert read[4].energy is None and read[4].energy_weight == 0.0  # the frame without an energy
    assert read[1].weight == 2.5 and read[1].forces_weight == 0.5


def test_written_file_has_upstreams_layout(tmp_path, configs):
    write_configurations(tmp_path / "set.h5", configs[:3], drop_last=True)
    with h5py.File(tmp_path / "set.h5", "r") as handle:
        assert list(handle) == ["config_batch_0"] and bool(handle.attrs["drop_last"]) is True
        assert sorted(handle["config_batch_0"]) == ["config_0", "config_1", "config_2"]
        group = handle["config_batch_0/config_0"]
        assert {"atomic_numbers", "positions", "cell", "pbc", "weight", "config_type", "properties", "property_weights"} <= set(group)
        assert {"energy", "forces", "stress", "virials"} <= set(group["properties"])
        assert group["properties/stress"][()] == b"None"  # a molecule: no stress, stored as upstream's "None"
        assert group["property_weights/stress"][()] == 0.0
        # upstream's reader gives a label without a weight the weight 1: ours are written absent, weight 0
        assert group["properties/dipole"][()] == b"None" and group["property_weights/dipole"][()] == 0.0
        assert group["config_type"][()] == b"molecule" and group["pbc"].dtype == bool


def write_upstream_style(path: Path, frames) -> None:
    """A file as upstream 0.3.16's preprocess_data writes it (from the layout's facts):
    labels it has but we lack, "None" for absent values, and a "head" property."""
    with h5py.File(path, "w") as handle:
        handle.attrs["drop_last"] = len(frames) % 2 == 1
        batch = handle.create_group("config_batch_0")
        for index, atoms in enumerate(frames):
            group = batch.create_group(f"config_{index}")
            group["atomic_numbers"] = atoms.numbers.astype(np.int64)
            group["positions"] = atoms.positions
            properties, weights = group.create_group("properties"), group.create_group("property_weights")
            values = {
                "energy": atoms.info.get("REF_energy"), "forces": atoms.arrays.get("REF_forces"),
                "stress": atoms.info.get("REF_stress"), "virials": atoms.info.get("REF_virials"),
                "dipole": None, "charges": None, "polarizability": None, "head": "",
            }
            for name, value in values.items():
                properties[name] = "None" if value is None else value
                weights[name] = 0.0 if value is None else 1.0
            group["cell"] = np.array(atoms.cell)
            group["pbc"] = np.array(atoms.pbc)
            group["weight"] = float(atoms.info.get("config_weight", 1.0))
            group["config_type"] = atoms.info["config_type"]


def test_reads_upstream_layout_as_the_extxyz_it_came_from(tmp_path):
    frames = make_frames(6, seed=3)
    for atoms in frames:
        atoms.info.pop("config_forces_weight", None)  # upstream stores it in property_weights; not written above
    _, expected = load_from_xyz(write_xyz(tmp_path / "up.xyz", frames), **KEYS)
    write_upstream_style(tmp_path / "up.h5", ase.io.read(tmp_path / "up.xyz", index=":"))  # as upstream read them
    read = HDF5Configurations(tmp_path / "up.h5")
    assert len(read) == len(expected)
    for stored, original in zip(read, expected):
        assert_same_configuration(stored, original)
    assert read[2].stress.shape == (3, 3)  # upstream keeps stress as the frame had it (Voigt 6)


def test_reads_the_older_layout_with_labels_beside_positions(tmp_path, configs):
    with h5py.File(tmp_path / "old.h5", "w") as handle:
        group = handle.create_group("config_batch_0").create_group("config_0")
        config = configs[2]
        for name in ("atomic_numbers", "positions", "cell", "forces", "stress", "virials"):
            group[name] = getattr(config, name)
        group["energy"], group["energy_weight"], group["forces_weight"] = config.energy, 1.0, 0.25
        group["stress_weight"], group["virials_weight"], group["weight"] = 1.0, 1.0, 1.0
        group["dipole"], group["charges"] = "None", "None"
        group["pbc"], group["config_type"] = np.array(config.pbc), config.config_type
    (read,) = list(HDF5Configurations(tmp_path / "old.h5"))
    assert read.energy == config.energy and np.array_equal(read.forces, config.forces)
    assert read.forces_weight == 0.25 and np.array_equal(read.stress, config.stress)


def test_folder_of_shards_reads_in_shard_order(tmp_path, configs):
    (tmp_path / "train").mkdir()
    for index, part in zip((10, 2, 0), (configs[6:], configs[3:6], configs[:3])):
        write_configurations(tmp_path / "train" / f"train_{index}.h5", part)
    (tmp_path / "train" / "notes.txt").write_text("not a shard")
    assert [p.name for p in hdf5_files(tmp_path / "train")] == ["train_0.h5", "train_2.h5", "train_10.h5"]
    read = HDF5Configurations(tmp_path / "train")
    assert len(read) == len(configs)
    for stored, original in zip(read, configs):
        assert_same_configuration(stored, original)
    assert read[-1].energy == configs[-1].energy
    assert [c.energy for c in read[2:5]] == [c.energy for c in configs[2:5]]
    with pytest.raises(IndexError):
        read[len(configs)]


def test_source_detection():
    assert is_hdf5_source("a/train_0.h5") and is_hdf5_source("b.HDF5") and not is_hdf5_source("train.xyz")


def test_subset_views_compose_and_group_by_config_type(tmp_path, configs):
    write_configurations(tmp_path / "set.h5", configs)
    read = HDF5Configurations(tmp_path / "set.h5")
    view = read.subset([8, 2, 5, 0]).subset([1, 3])
    assert [c.energy for c in view] == [configs[2].energy, configs[0].energy]
    assert read.config_types() == [c.config_type for c in configs]
    assert [list(z) for z in view.element_arrays()] == [list(configs[2].atomic_numbers), list(configs[0].atomic_numbers)]


def test_the_set_holds_no_configuration_in_memory(tmp_path):
    """Pickled (as it goes to a loader worker), a set is its paths and offsets: the same
    size for 5 configurations as for 50, even after every one of them was read."""
    sizes = []
    for count in (5, 50):
        _, configs = load_from_xyz(write_xyz(tmp_path / f"{count}.xyz", make_frames(count, seed=1)), **KEYS)
        write_configurations(tmp_path / f"set_{count:02d}.h5", configs)
        read = HDF5Configurations(tmp_path / f"set_{count:02d}.h5")
        assert [c.energy for c in read] == [c.energy for c in configs]
        sizes.append(len(pickle.dumps(read)))
    assert sizes[0] == sizes[1] < 2_000


def _first_energy_in_child(read, queue):
    queue.put(read[0].energy)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_process_opens_the_file_for_itself(tmp_path, configs):
    write_configurations(tmp_path / "set.h5", configs)
    read = HDF5Configurations(tmp_path / "set.h5")
    parent_energy = read[0].energy  # the parent's handle is open now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_first_energy_in_child, args=(read, queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == parent_energy
    assert read[1].energy == configs[1].energy  # the parent's handle still works


def test_lazy_graphs_batch_like_graphs_in_memory(tmp_path, configs):
    write_configurations(tmp_path / "set.h5", configs)
    lazy = graphs_of(HDF5Configurations(tmp_path / "set.h5"), TABLE, 3.0)
    eager = graphs_of(configs, TABLE, 3.0)
    assert isinstance(lazy, LazyGraphs) and isinstance(eager, list) and len(lazy) == len(eager)
    batches = [list(make_loader(graphs, batch_size=4, shuffle=True, seed=7, num_workers=workers))
               for graphs, workers in ((eager, 0), (lazy, 1))]
    for from_memory, from_file in zip(*batches):
        assert_same_graph(from_memory, from_file)
    assert len(lazy[1:3]) == 2
    assert make_loader(lazy, batch_size=4, shuffle=False).dataset is lazy  # not a list of built graphs


def test_errors_name_the_file(tmp_path, configs):
    with pytest.raises(UserInputError, match="does not exist"):
        HDF5Configurations(tmp_path / "missing.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="holds no .h5"):
        HDF5Configurations(tmp_path / "empty")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UserInputError, match="not a readable HDF5 file"):
        HDF5Configurations(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["data"] = np.zeros(3)
    with pytest.raises(UserInputError, match="config_batch_0"):
        HDF5Configurations(tmp_path / "other.h5")
    configs[1].forces[0, 0] = np.nan
    write_configurations(tmp_path / "nan.h5", configs)
    read = HDF5Configurations(tmp_path / "nan.h5")
    assert read[0].energy == configs[0].energy
    with pytest.raises(UserInputError, match=r"nan\.h5 /config_batch_0/config_1: forces .*NaN"):
        read[1]
