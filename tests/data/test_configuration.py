"""Reading labelled structures, clear user errors, splits and reference energies."""
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mace.data import (
    Configuration,
    check_labels,
    compute_average_e0s,
    config_from_atoms,
    group_by_config_type,
    has_label,
    load_from_xyz,
    random_train_valid_split,
)
from mace.core.atomic_numbers import atomic_number_table_from_zs
from mace.core.errors import UserInputError

HEADER = 'Properties=species:S:1:pos:R:3:forces:R:3 {info} pbc="F F F"'


def write_frames(path, frames) -> str:
    """Write frames given as (info string, [(symbol, x, y, z, fx, fy, fz), ...])."""
    lines = []
    for info, atoms in frames:
        lines += [str(len(atoms)), HEADER.format(info=info)]
        lines += [" ".join(str(v) for v in atom) for atom in atoms]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


WATER = [("O", 0, 0, 0, 0.1, 0, 0), ("H", 0.96, 0, 0, -0.05, 0, 0), ("H", 0, 0.96, 0, -0.05, 0, 0)]


def test_reads_energy_and_forces_moved_into_calculator_by_ase(tmp_path):
    path = write_frames(tmp_path / "w.xyz", [("energy=-10.5 config_type=md", WATER)] * 2)
    _, configs = load_from_xyz(path)
    assert len(configs) == 2
    config = configs[0]
    assert config.energy == -10.5 and config.config_type == "md"
    np.testing.assert_allclose(config.forces[:, 0], [0.1, -0.05, -0.05])
    assert config.atomic_numbers.tolist() == [8, 1, 1]
    assert (config.energy_weight, config.forces_weight) == (1.0, 1.0)
    assert (config.stress_weight, config.virials_weight) == (0.0, 0.0)
    assert config.pbc == (False, False, False) and not config.cell.any()


def test_custom_keys_and_absent_forces(tmp_path):
    atoms = [a[:4] for a in WATER]
    text = "3\nProperties=species:S:1:pos:R:3 REF_energy=-3.0\n" + "\n".join(
        " ".join(map(str, a)) for a in atoms
    )
    (tmp_path / "r.xyz").write_text(text + "\n")
    _, configs = load_from_xyz(str(tmp_path / "r.xyz"), energy_key="REF_energy")
    assert configs[0].energy == -3.0
    assert configs[0].forces is None and configs[0].forces_weight == 0.0
    keys = {"energy": "REF_energy", "forces": "forces"}
    with pytest.raises(UserInputError, match="r.xyz has no forces under key 'forces' in any frame.*--forces_key"):
        check_labels(configs, "r.xyz", keys, required=("energy", "forces"))
    check_labels(configs, "r.xyz", keys, required=("energy",))


def test_config_from_atoms_stress_voigt_weights_and_calculator():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=np.eye(3) * 5, pbc=True)
    atoms.info.update(config_type="bulk", REF_stress=[1, 2, 3, 4, 5, 6], config_weight=2.0)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.ones((2, 3)))
    config = config_from_atoms(atoms, stress_key="REF_stress", config_type_weights={"bulk": 3.0})
    assert config.energy == -1.0 and config.forces.shape == (2, 3)
    np.testing.assert_array_equal(config.stress, [[1, 6, 5], [6, 2, 4], [5, 4, 3]])
    assert config.stress_weight == 1.0 and config.weight == 6.0
    assert config.pbc == (True, True, True)


def test_configuration_zeroes_weights_of_absent_labels():
    config = Configuration(np.array([1]), np.zeros((1, 3)), energy=None, energy_weight=5.0)
    assert config.energy_weight == 0.0 and config.forces_weight == 0.0


def test_isolated_atoms_give_e0s_and_are_dropped(tmp_path):
    frames = [
        ("energy=-13.6 config_type=IsolatedAtom", [("H", 0, 0, 0, 0, 0, 0)]),
        ("energy=-2040.0 config_type=IsolatedAtom", [("O", 0, 0, 0, 0, 0, 0)]),
        ("energy=-2080.0", WATER),
    ]
    path = write_frames(tmp_path / "iso.xyz", frames)
    e0s, configs = load_from_xyz(path, extract_atomic_energies=True)
    assert e0s == {1: -13.6, 8: -2040.0} and len(configs) == 1
    _, kept = load_from_xyz(path, extract_atomic_energies=True, keep_isolated_atoms=True)
    assert len(kept) == 3
    e0s, configs = load_from_xyz(path)
    assert e0s == {} and len(configs) == 3


def test_missing_file_is_a_user_error(tmp_path):
    missing = tmp_path / "nope.xyz"
    with pytest.raises(UserInputError, match="nope.xyz does not exist"):
        load_from_xyz(str(missing))


def test_empty_file_is_a_user_error(tmp_path):
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(UserInputError, match="empty.xyz contains no configurations"):
        load_from_xyz(str(tmp_path / "empty.xyz"))


@pytest.mark.parametrize(
    "text",
    [
        "hello world\nnot xyz\n",
        "3\nProperties=species:S:1:pos:R:3 energy=1\nH 0 0 0\n",
        "1\nProperties=species:S:1:pos:R:3 energy=1\nH 0 0 0\n1\nenergy=2\nH 0 zero 0\n",
    ],
)
def test_malformed_file_is_a_user_error_naming_the_file(tmp_path, text):
    (tmp_path / "broken.xyz").write_text(text)
    with pytest.raises(UserInputError, match="broken.xyz is not a valid extended XYZ file"):
        load_from_xyz(str(tmp_path / "broken.xyz"))


def test_frames_without_a_label_get_zero_weight_and_one_warning_per_label(tmp_path, caplog):
    frames = [("energy=-1.0", WATER), ("other=2.0 config_type=md", WATER), ("energy=-2.0", WATER),
              ("other=3.0", WATER)]
    path = write_frames(tmp_path / "noe.xyz", frames)
    with caplog.at_level("WARNING"):
        _, configs = load_from_xyz(path, required_labels=("energy", "forces"), role="train")
    assert [c.energy_weight for c in configs] == [1.0, 0.0, 1.0, 0.0]
    assert configs[1].energy is None and configs[1].properties["energy"] is None
    assert configs[1].property_weights["energy"] == 0.0 and configs[0].property_weights["energy"] == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{path}: 2 of 4 frames have no 'energy'; they train with zero energy weight"]
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_from_xyz(path, required_labels=("energy",), role="validate")
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 2 of 4 frames have no 'energy'; they are validated with zero energy weight"
    ]
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_from_xyz(path)  # no role (test files, scripts): no check, no warning
    assert caplog.records == []


def test_check_labels_counts_each_label_and_refuses_a_key_no_frame_has(caplog):
    def frame(**labels) -> Configuration:
        return Configuration(np.array([8, 1, 1]), np.zeros((3, 3)), **labels)

    forces = np.zeros((3, 3))
    configs = [frame(energy=-1.0, forces=forces, stress=np.zeros(6)), frame(forces=forces),
               frame(energy=-2.0), frame(energy=-3.0, forces=forces)]
    keys = {"energy": "E", "forces": "F", "stress": "S", "virials": "V"}
    with caplog.at_level("WARNING"):
        check_labels(configs, "t.xyz", keys)
    assert [r.getMessage() for r in caplog.records] == [
        "t.xyz: 1 of 4 frames have no 'E'; they train with zero energy weight",
        "t.xyz: 1 of 4 frames have no 'F'; they train with zero forces weight",
        "t.xyz: 3 of 4 frames have no 'S'; they train with zero stress weight",
    ]  # virials: no frame has them and they are not required, so nothing to say
    with pytest.raises(UserInputError, match=r"t.xyz has no energy under key 'E' in any frame "
                                             r"\(keys present in frame 0: a, b\); pass the right --energy_key"):
        check_labels([frame(forces=forces)] * 2, "t.xyz", keys, keys_present=["a", "b"])


def test_a_key_no_frame_has_names_the_file_the_key_and_the_keys_present(tmp_path):
    frames = [("other=2.0 config_type=md", WATER), ("other=1.0", WATER)]
    path = write_frames(tmp_path / "noe.xyz", frames)
    with pytest.raises(UserInputError) as error:
        load_from_xyz(path, energy_key="energy", required_labels=("energy", "forces"), role="train")
    message = str(error.value)
    assert f"{path} has no energy under key 'energy' in any frame" in message
    assert "config_type" in message and "other" in message and "--energy_key" in message
    _, configs = load_from_xyz(path)
    assert configs[1].energy is None and configs[1].energy_weight == 0.0


def test_has_label_needs_the_label_and_a_non_zero_weight():
    labelled = Configuration(np.array([1]), np.zeros((1, 3)), energy=-1.0)
    assert has_label(labelled, "energy") and not has_label(labelled, "forces")
    assert not has_label(Configuration(np.array([1]), np.zeros((1, 3)), energy=-1.0, energy_weight=0.0), "energy")


@pytest.mark.parametrize("key, bad", [
    ("REF_energy", float("nan")),
    ("REF_forces", np.array([[0.1, 0, 0], [0, np.inf, 0], [0, 0, 0]])),
    ("REF_stress", np.array([1.0, 1, 1, 0, 0, np.nan])),
    ("REF_virials", np.full(9, -np.inf)),
])
def test_non_finite_label_names_file_frame_and_key(tmp_path, key, bad):
    frames = []
    for index in range(3):
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [0, 0.96, 0]])
        atoms.info.update(REF_energy=-10.0, REF_stress=np.zeros(6), REF_virials=np.zeros(9))
        atoms.arrays["REF_forces"] = np.zeros((3, 3))
        frames.append(atoms)
    (frames[2].info if key != "REF_forces" else frames[2].arrays)[key] = bad
    path = str(tmp_path / "labels.xyz")
    ase.io.write(path, frames, format="extxyz")
    keys = dict(energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress", virials_key="REF_virials")
    with pytest.raises(UserInputError, match=rf"labels\.xyz frame 2: \w+ '{key}' holds NaN or inf"):
        load_from_xyz(path, **keys)
    with pytest.raises(UserInputError, match=f"frame 2: .*'{key}'"):  # test files too
        load_from_xyz(path, role="train", required_labels=("energy", "forces"), **keys)


def test_unknown_chemical_symbol_in_file(tmp_path):
    path = write_frames(tmp_path / "xx.xyz", [("energy=1", [("Xx", 0, 0, 0, 0, 0, 0)])])
    with pytest.raises(UserInputError, match="xx.xyz frame 0 has unknown chemical symbol 'Xx'"):
        load_from_xyz(path)


def test_periodic_frame_without_cell_names_frame(tmp_path):
    header = 'Properties=species:S:1:pos:R:3 energy=1 pbc="T T T"'
    (tmp_path / "p.xyz").write_text(f"1\n{header}\nH 0 0 0\n")
    with pytest.raises(UserInputError, match="p.xyz frame 0: the structure is periodic"):
        load_from_xyz(str(tmp_path / "p.xyz"))


def test_split_is_reproducible_and_matches_upstream_sizes():
    items = list(range(100))
    train, valid, valid_indices = random_train_valid_split(items, 0.5, seed=123)
    again = random_train_valid_split(items, 0.5, seed=123)
    assert (train, valid, valid_indices) == again
    assert len(valid) == 50 and sorted(train + valid) == items and valid == valid_indices
    assert random_train_valid_split(items, 0.5, seed=1)[1] != valid


def test_split_uses_upstream_generator():
    indices = list(range(10))
    np.random.default_rng(5).shuffle(indices)
    _, valid, _ = random_train_valid_split(list(range(10)), 0.3, seed=5)
    assert valid == indices[7:]


@pytest.mark.parametrize("fraction, size", [(0.0, 10), (1.0, 10), (1.5, 10), (0.1, 5)])
def test_split_rejects_bad_fraction_or_empty_split(fraction, size):
    with pytest.raises(UserInputError, match="valid_fraction"):
        random_train_valid_split(list(range(size)), fraction, seed=0)


def test_group_by_config_type_keeps_first_appearance_order():
    def config(kind: str) -> Configuration:
        return Configuration(np.array([1]), np.zeros((1, 3)), config_type=kind)

    groups = group_by_config_type([config("b"), config("a"), config("b")])
    assert [(name, len(items)) for name, items in groups] == [("b", 2), ("a", 1)]


def test_average_e0s_recover_per_element_energies():
    rng = np.random.default_rng(0)
    true_e0 = {1: -13.6, 6: -1029.5, 8: -2041.9}
    configs = []
    for _ in range(40):
        zs = rng.choice(list(true_e0), size=rng.integers(2, 12))
        energy = sum(true_e0[int(z)] for z in zs)
        configs.append(Configuration(zs, np.zeros((len(zs), 3)), energy=energy))
    e0s = compute_average_e0s(configs, atomic_number_table_from_zs(true_e0))
    assert set(e0s) == set(true_e0)
    for z, value in true_e0.items():
        assert e0s[z] == pytest.approx(value, abs=1e-8)


def test_average_e0s_leave_out_frames_without_an_energy_or_with_zero_energy_weight():
    true_e0 = {1: -13.6, 8: -2041.9}
    configs = [Configuration(np.array(zs), np.zeros((len(zs), 3)), energy=sum(true_e0[z] for z in zs))
               for zs in ([8, 1, 1], [8, 8], [1, 1], [8, 1])]
    configs.append(Configuration(np.array([8, 1]), np.zeros((2, 3))))  # no energy
    configs.append(Configuration(np.array([8]), np.zeros((1, 3)), energy=1e6, energy_weight=0.0))
    e0s = compute_average_e0s(configs, atomic_number_table_from_zs(true_e0))
    assert e0s == pytest.approx(true_e0, abs=1e-8)
    with pytest.raises(UserInputError, match="no configuration has an energy"):
        compute_average_e0s(configs[4:], atomic_number_table_from_zs(true_e0))


def test_average_e0s_single_composition_gives_minimum_norm_solution():
    zs = np.array([6, 1, 1, 1, 1])
    configs = [Configuration(zs, np.zeros((5, 3)), energy=e) for e in (-1000.0, -1002.0)]
    e0s = compute_average_e0s(configs, atomic_number_table_from_zs(zs))
    assert 1 * e0s[6] + 4 * e0s[1] == pytest.approx(-1001.0)
    assert e0s[1] == pytest.approx(4 * e0s[6])  # minimum norm: E0 proportional to counts
