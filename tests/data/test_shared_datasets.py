"""Every file layout the project ships data in reads with the keys the commands use."""
import numpy as np
import pytest

from mace.data import compute_average_e0s, graph_from_configuration, load_from_xyz
from mace.core.atomic_numbers import atomic_number_table_from_zs
from mace.core.errors import UserInputError


def test_rmd17_reference_keys(shared_dir):
    path = shared_dir / "repro_data/dataset/dataset_rmd17/revised_aspirin/train.xyz"
    _, configs = load_from_xyz(str(path), energy_key="REF_energy", forces_key="REF_forces")
    assert len(configs) == 100
    assert all(c.num_atoms == 21 and c.forces.shape == (21, 3) for c in configs)
    assert configs[0].energy == pytest.approx(-17618.231318982824)
    assert configs[0].pbc == (True, True, True)
    np.testing.assert_array_equal(configs[0].cell, np.diag([20.0] * 3))
    z_table = atomic_number_table_from_zs(configs[0].atomic_numbers)
    e0s = compute_average_e0s(configs, z_table)
    counts = {z: np.count_nonzero(configs[0].atomic_numbers == z) for z in z_table.zs}
    mean_energy = np.mean([c.energy for c in configs])
    assert sum(counts[z] * e0s[z] for z in e0s) == pytest.approx(mean_energy)


def test_rmd17_with_default_energy_key_names_the_keys_present(shared_dir):
    path = shared_dir / "repro_data/dataset/dataset_rmd17/revised_aspirin/valid.xyz"
    with pytest.raises(UserInputError, match="has no energy under key 'energy' in any frame .*REF_energy"):
        load_from_xyz(str(path), required_labels=("energy", "forces"), role="train")


def test_botnet_keys_moved_to_calculator_by_ase(shared_dir):
    path = shared_dir / "repro_data/dataset/dataset_3BPA/train_300K.xyz"
    _, configs = load_from_xyz(str(path))
    assert len(configs) == 500
    assert all(c.energy is not None and c.forces.shape == (27, 3) for c in configs)
    assert configs[0].pbc == (False, False, False)


def test_botnet_energy_only_test_set(shared_dir):
    path = shared_dir / "repro_data/dataset/dataset_acac/test_H_transfer.xyz"
    _, configs = load_from_xyz(str(path))
    assert len(configs) == 15 and all(c.energy is not None for c in configs)
    assert all(c.forces is None and c.forces_weight == 0.0 for c in configs)


@pytest.mark.parametrize(
    "relative, zs",
    [
        ("repro_data/dataset/dataset_acac/isolated_atoms.xyz", [1, 6, 8]),
        ("repro_data/dataset/dataset_3BPA/iso_atoms.xyz", [1, 6, 7, 8]),
    ],
)
def test_isolated_atom_files_read_as_single_atoms(shared_dir, relative, zs):
    e0s, configs = load_from_xyz(str(shared_dir / relative), extract_atomic_energies=True)
    # Their config_type is not upstream's "IsolatedAtom", so they stay configurations.
    assert e0s == {}
    assert sorted(int(c.atomic_numbers[0]) for c in configs) == zs
    assert all(c.num_atoms == 1 and c.forces is None for c in configs)


@pytest.mark.parametrize("name", ["off23arch_v035__aspirin20", "small_v0316__acac10"])
def test_conformance_configurations_build_graphs(shared_dir, name):
    path = shared_dir / f"conformance/predictions/{name}.xyz"
    _, configs = load_from_xyz(str(path), energy_key="MACE_energy", forces_key="MACE_forces")
    z_table = atomic_number_table_from_zs(np.concatenate([c.atomic_numbers for c in configs]))
    graph = graph_from_configuration(configs[0], z_table, cutoff=5.0)
    sender, receiver = graph["edge_index"]
    vectors = graph["positions"][receiver] - graph["positions"][sender] + graph["shifts"]
    lengths = vectors.norm(dim=1)
    assert 0 < len(lengths) and lengths.max() < 5.0
