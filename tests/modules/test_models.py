"""Symmetries, derivatives, batching and save/load of models built from hyperparameters."""
from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3

from mace.data import Configuration
from mace.modules import load_model, save_model
from mace.core.errors import UserInputError
from mace.modules.builder import ModelSettings, build_model

from .helpers import batch_of, random_molecule, tiny_model


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


def energy_and_forces(model, configs):
    output = model(batch_of(configs, model))
    return output["energy"].detach(), output["forces"].detach()


def transformed(config: Configuration, matrix: np.ndarray, translation=np.zeros(3), order=None) -> Configuration:
    order = np.arange(config.num_atoms) if order is None else order
    return Configuration(
        atomic_numbers=config.atomic_numbers[order],
        positions=config.positions[order] @ matrix.T + translation,
    )


@pytest.mark.parametrize("scale_shift", [True, False])
def test_rotation_and_reflection_equivariance(scale_shift: bool) -> None:
    model = tiny_model(scale_shift=scale_shift)
    rng = np.random.default_rng(1)
    for _ in range(3):
        molecule = random_molecule(rng)
        rotation = o3.rand_matrix().numpy()
        for matrix in (rotation, -rotation):
            energy, forces = energy_and_forces(model, [molecule])
            energy_t, forces_t = energy_and_forces(model, [transformed(molecule, matrix)])
            assert abs(energy.item()) > 1e-3
            assert torch.allclose(energy, energy_t, atol=1e-10, rtol=0)
            assert torch.allclose(forces @ torch.tensor(matrix).T, forces_t, atol=1e-10, rtol=0)


def test_translation_and_permutation_invariance() -> None:
    model = tiny_model()
    rng = np.random.default_rng(2)
    molecule = random_molecule(rng, num_atoms=7)
    order = rng.permutation(7)
    energy, forces = energy_and_forces(model, [molecule])
    energy_t, forces_t = energy_and_forces(model, [transformed(molecule, np.eye(3), np.array([3.0, -1.0, 7.5]), order)])
    assert torch.allclose(energy, energy_t, atol=1e-10, rtol=0)
    assert torch.allclose(forces[order], forces_t, atol=1e-10, rtol=0)


def test_forces_are_minus_energy_gradient_by_finite_differences() -> None:
    model = tiny_model()
    molecule = random_molecule(np.random.default_rng(3), num_atoms=5)
    _, forces = energy_and_forces(model, [molecule])
    step = 1e-5
    for atom in range(molecule.num_atoms):
        for axis in range(3):
            shifted = []
            for sign in (1, -1):
                positions = molecule.positions.copy()
                positions[atom, axis] += sign * step
                shifted.append(energy_and_forces(model, [Configuration(molecule.atomic_numbers, positions)])[0].item())
            numerical = -(shifted[0] - shifted[1]) / (2 * step)
            assert abs(numerical - forces[atom, axis].item()) < 1e-6


def test_batch_equals_single_evaluations() -> None:
    model = tiny_model()
    rng = np.random.default_rng(4)
    molecules = [random_molecule(rng, num_atoms=n) for n in (3, 6, 5, 8)]
    energies, forces = energy_and_forces(model, molecules)
    singles = [energy_and_forces(model, [m]) for m in molecules]
    assert torch.allclose(energies, torch.cat([e for e, _ in singles]), atol=1e-12, rtol=0)
    assert torch.allclose(forces, torch.cat([f for _, f in singles]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("correlation,max_L,num_interactions", [(1, 0, 1), (2, 2, 3), (3, 1, 2)])
def test_other_shapes_are_equivariant(correlation: int, max_L: int, num_interactions: int) -> None:
    model = tiny_model(correlation=correlation, max_L=max_L, num_interactions=num_interactions)
    molecule = random_molecule(np.random.default_rng(5))
    matrix = -o3.rand_matrix().numpy()
    energy, forces = energy_and_forces(model, [molecule])
    energy_t, forces_t = energy_and_forces(model, [transformed(molecule, matrix)])
    assert torch.allclose(energy, energy_t, atol=1e-10, rtol=0)
    assert torch.allclose(forces @ torch.tensor(matrix).T, forces_t, atol=1e-10, rtol=0)


def test_saved_model_loads_and_predicts_the_same(tmp_path: Path) -> None:
    model = tiny_model()
    molecule = random_molecule(np.random.default_rng(6))
    save_model(model, tmp_path / "tiny.model")
    loaded = load_model(tmp_path / "tiny.model")
    assert type(loaded) is type(model)
    for a, b in zip(energy_and_forces(model, [molecule]), energy_and_forces(loaded, [molecule])):
        assert torch.equal(a, b)


def test_stress_matches_finite_difference_of_strain() -> None:
    model = tiny_model()
    rng = np.random.default_rng(7)
    molecule = random_molecule(rng, num_atoms=5)
    cell = np.diag([4.5, 5.0, 5.5])
    crystal = Configuration(molecule.atomic_numbers, molecule.positions % 4.5, cell=cell, pbc=(True, True, True))
    output = model(batch_of([crystal], model), compute_stress=True)
    stress = output["stress"][0].detach().numpy()
    volume = abs(np.linalg.det(cell))
    step = 1e-5
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * step / 2
            strain[j, i] += sign * step / 2
            strained = Configuration(crystal.atomic_numbers, crystal.positions @ strain.T, cell=cell @ strain.T, pbc=crystal.pbc)
            energies.append(model(batch_of([strained], model), compute_force=False)["energy"].item())
        assert abs((energies[0] - energies[1]) / (2 * step) / volume - stress[i, j]) < 1e-7


def test_missing_or_bad_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        load_model(tmp_path / "absent.model")
    (tmp_path / "broken.model").write_bytes(b"not a model")
    with pytest.raises(UserInputError, match="broken.model"):
        load_model(tmp_path / "broken.model")


def test_an_isolated_atom_predicts_exactly_its_e0_with_model_mace() -> None:
    """--model=MACE as run_train builds it: upstream's first block (RealAgnosticInteractionBlock,
    no self-connection) gives an atom without neighbours no features in any layer, and MACE has
    no shift, so the atom's energy is its E0 alone (ScaleShiftMACE would add its shift)."""
    e0s = {1: -1.5, 6: -10.0, 8: -20.0}
    settings = ModelSettings(model="MACE", hidden_irreps="8x0e + 8x1o", r_max=4.0, radial_MLP=[16])
    torch.manual_seed(0)
    model = build_model(settings, [1, 6, 8], e0s, avg_num_neighbors=5.0, scale=1.3, shift=0.7)
    for z, e0 in e0s.items():
        atom = Configuration(atomic_numbers=np.array([z]), positions=np.zeros((1, 3)))
        energy, forces = energy_and_forces(model, [atom])
        assert energy.item() == e0
        assert torch.equal(forces, torch.zeros_like(forces))
