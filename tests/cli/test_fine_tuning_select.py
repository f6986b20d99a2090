"""fine_tuning_select end to end: what it selects and writes (random and fps with a tiny model),
the descriptors file read back with --descriptors, and clean failures that write nothing."""
from pathlib import Path
from typing import List, Sequence, Set

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

from mace.calculators import MACECalculator
from mace.cli import fine_tuning_select
from mace.modules import save_model
from tests.modules.helpers import random_molecule, tiny_model

pytestmark = pytest.mark.usefixtures("float64_default")

NUM_PT = 12  # six molecules of H and C, then six of H, C and O (most with O)


def molecules(rng: np.random.Generator, count: int, elements: Sequence[int]) -> List[Atoms]:
    configs = [random_molecule(rng, num_atoms=5, elements=elements) for _ in range(count)]
    return [Atoms(numbers=c.atomic_numbers, positions=c.positions) for c in configs]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """pt.xyz (with a REF_energy in each frame) and ft.xyz (two molecules of H and C) in tmp_path."""
    rng = np.random.default_rng(7)
    pretraining = molecules(rng, NUM_PT // 2, (1, 6)) + molecules(rng, NUM_PT // 2, (1, 6, 8))
    for index, atoms in enumerate(pretraining):
        atoms.info["REF_energy"] = -float(index)
    finetuning = [Atoms(numbers=[1, 6, 1], positions=[[0, 0, 0], [1.1, 0, 0], [2.2, 0, 0]]),
                  Atoms(numbers=[6, 6], positions=[[0, 0, 0], [1.3, 0, 0]])]
    ase.io.write(tmp_path / "pt.xyz", pretraining, format="extxyz")
    ase.io.write(tmp_path / "ft.xyz", finetuning, format="extxyz")
    return tmp_path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.model"
    save_model(tiny_model(), path)
    return path


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        fine_tuning_select.main([str(a) for a in argv])
    return exit_info.value.code


def pretraining_index(atoms: Atoms, pretraining: List[Atoms]) -> int:
    return next(i for i, pt in enumerate(pretraining) if np.allclose(pt.positions, atoms.positions))


def files_under(folder: Path) -> Set[Path]:
    return set(folder.rglob("*"))


def test_random_selection_writes_the_tagged_selection_and_the_combined_file(data: Path) -> None:
    output = data / "out" / "replay.xyz"
    code = run("--configs_pt", data / "pt.xyz", "--configs_ft", data / "ft.xyz", "--filtering_type", "combinations",
               "--num_samples", 3, "--subselect", "random", "--weight_pt", 0.5, "--head_pt", "pt_head",
               "--head_ft", "ft_head", "--weight_ft", 2.0, "--output", output)
    assert code == 0
    pretraining = ase.io.read(data / "pt.xyz", index=":")
    selected = ase.io.read(output, index=":")
    indices = [pretraining_index(atoms, pretraining) for atoms in selected]
    assert len(set(indices)) == 3 and all(set(pretraining[i].numbers) <= {1, 6} for i in indices)
    for atoms, index in zip(selected, indices):
        assert atoms.info["pretrained"] is True and atoms.info["config_weight"] == 0.5
        assert atoms.info["head"] == "pt_head" and atoms.info["REF_energy"] == -index
    combined = ase.io.read(data / "out" / "replay_combined.xyz", index=":")
    assert len(combined) == 5
    assert [pretraining_index(atoms, pretraining) for atoms in combined[:3]] == indices
    for atoms in combined[3:]:
        assert atoms.info["pretrained"] is False and atoms.info["config_weight"] == 2.0 and atoms.info["head"] == "ft_head"
    assert [a.get_chemical_formula() for a in combined[3:]] == ["CH2", "C2"]
    assert not (data / "out" / "replay_descriptors.npy").exists()  # random: no descriptors computed


def test_fps_writes_descriptors_that_match_the_calculators_and_read_back(data: Path, model_file: Path) -> None:
    output = data / "fps" / "replay.xyz"
    code = run("--configs_pt", data / "pt.xyz", "--num_samples", 4, "--model", model_file, "--output", output)
    assert code == 0
    pretraining = ase.io.read(data / "pt.xyz", index=":")
    selected = ase.io.read(output, index=":")
    assert len(selected) == 4 and all(atoms.info["pretrained"] is True and "head" not in atoms.info for atoms in selected)
    assert len(ase.io.read(data / "fps" / "replay_combined.xyz", index=":")) == 4  # no fine-tuning data
    rows = np.load(data / "fps" / "replay_descriptors.npy", allow_pickle=False)
    # per element H, C, O: the mean of 16 invariant features (8 per layer, two layers)
    assert rows.shape == (4, 3 * 16) and rows.dtype == np.float64

    calculator = MACECalculator(model_paths=str(model_file), default_dtype="float64")
    for atoms, row in zip(selected, rows):
        per_atom = calculator.get_descriptors(pretraining[pretraining_index(atoms, pretraining)], invariants_only=True)
        for block, z in zip(row.reshape(3, 16), (1, 6, 8)):
            expected = per_atom[atoms.numbers == z].mean(axis=0) if (atoms.numbers == z).any() else np.zeros(16)
            np.testing.assert_allclose(block, expected, atol=1e-10)

    # The written file, read back with --descriptors, gives what computing them gives (the model is not read).
    argv = ["--configs_pt", output, "--num_samples", 2, "--seed", 3]
    assert run(*argv, "--descriptors", data / "fps" / "replay_descriptors.npy", "--model", data / "absent.model",
               "--output", data / "loaded.xyz") == 0
    assert run(*argv, "--model", model_file, "--output", data / "computed.xyz") == 0
    loaded, computed = ase.io.read(data / "loaded.xyz", index=":"), ase.io.read(data / "computed.xyz", index=":")
    assert len(loaded) == 2 and [pretraining_index(a, selected) for a in loaded] == [pretraining_index(a, selected) for a in computed]
    assert not (data / "loaded_descriptors.npy").exists() and (data / "computed_descriptors.npy").exists()


def expect_clean_failure(data: Path, capsys, argv: Sequence[object], *names: str) -> None:
    """Exit code 1, one line on stderr naming each of ``names``, and no file written."""
    before = files_under(data)
    assert run(*argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1 and all(name in err for name in names)
    assert files_under(data) == before


def test_an_output_that_is_not_extxyz_is_refused(data: Path, capsys) -> None:
    expect_clean_failure(data, capsys, ["--configs_pt", data / "pt.xyz", "--subselect", "random",
                                        "--output", data / "out" / "replay.txt"], "replay.txt")


def test_a_missing_pretraining_file_is_refused(data: Path, capsys) -> None:
    expect_clean_failure(data, capsys, ["--configs_pt", data / "absent.xyz", "--output", data / "out.xyz"],
                         "absent.xyz")


def test_filtering_without_elements_is_refused(data: Path, capsys) -> None:
    expect_clean_failure(data, capsys, ["--configs_pt", data / "pt.xyz", "--filtering_type", "inclusive",
                                        "--output", data / "out.xyz"], "--filter_atomic_numbers_pt")


def test_filter_atomic_numbers_select_when_no_finetuning_data_is_given(data: Path) -> None:
    assert run("--configs_pt", data / "pt.xyz", "--filtering_type", "inclusive", "--filter_atomic_numbers_pt", "[8]",
               "--output", data / "out.xyz") == 0
    pretraining = ase.io.read(data / "pt.xyz", index=":")
    selected = ase.io.read(data / "out.xyz", index=":")
    assert [pretraining_index(a, pretraining) for a in selected] == [i for i, a in enumerate(pretraining) if 8 in a.numbers]


def test_pickled_descriptors_are_refused(data: Path, capsys) -> None:
    np.save(data / "upstream.npy", np.array([{"H": np.zeros(3)}] * NUM_PT, dtype=object), allow_pickle=True)
    expect_clean_failure(data, capsys, ["--configs_pt", data / "pt.xyz", "--num_samples", 2, "--descriptors",
                                        data / "upstream.npy", "--output", data / "out.xyz"], "upstream.npy", "pickle")


def test_descriptors_with_a_wrong_row_count_are_refused(data: Path, capsys) -> None:
    np.save(data / "short.npy", np.zeros((NUM_PT - 1, 4)))
    expect_clean_failure(data, capsys, ["--configs_pt", data / "pt.xyz", "--num_samples", 2, "--descriptors",
                                        data / "short.npy", "--output", data / "out.xyz"], "short.npy", "11 rows")
