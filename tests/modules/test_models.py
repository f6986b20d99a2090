"""Symmetries, derivatives, batching and save/load of models built from hyperparameters."""
from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3

from mace.data import Configuration
from mace.modules import load_model, save_model
from mace.core.errors import UserInputError
from mace.modules.blocks import (
    RealAgnosticDensityInteractionBlock,
    RealAgnosticDensityResidualInteractionBlock,
    RealAgnosticResidualNonLinearInteractionBlock,
)
from mace.modules.builder import ModelSettings, build_model
from mace.modules.radial import ChebychevBasis

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


# Architectures beyond the default residual blocks, by the options of the newest upstream
# foundation models (each with a random-weight tiny model).
ARCHITECTURES = {
    "residual": {},
    "density_zbl_agnesi": dict(
        interaction_cls_first=RealAgnosticDensityInteractionBlock,
        interaction_cls=RealAgnosticDensityResidualInteractionBlock,
        pair_repulsion=True, distance_transform="Agnesi",
    ),
    "nonlinear_soft_gaussian_last_readout": dict(
        interaction_cls_first=RealAgnosticResidualNonLinearInteractionBlock,
        interaction_cls=RealAgnosticResidualNonLinearInteractionBlock,
        distance_transform="Soft", radial_type="gaussian", use_last_readout_only=True,
    ),
    "chebyshev_agnesi_cutoff_on_mlp": dict(
        interaction_cls=RealAgnosticDensityResidualInteractionBlock,
        radial_type="chebyshev", distance_transform="Agnesi", apply_cutoff=False, pair_repulsion=True,
    ),
}


@pytest.mark.parametrize(
    "scale_shift, architecture",
    [(True, name) for name in ARCHITECTURES] + [(False, "residual"), (False, "density_zbl_agnesi")],
)
def test_rotation_and_reflection_equivariance(scale_shift: bool, architecture: str) -> None:
    model = tiny_model(scale_shift=scale_shift, **ARCHITECTURES[architecture])
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


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_forces_are_minus_energy_gradient_by_finite_differences(architecture: str) -> None:
    model = tiny_model(**ARCHITECTURES[architecture])
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


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_saved_model_loads_and_predicts_the_same(tmp_path: Path, architecture: str) -> None:
    model = tiny_model(**ARCHITECTURES[architecture])
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


def test_stress_of_a_molecule_without_cell_is_zero_not_infinite() -> None:
    """A molecule has no volume: its stress is 0 (losses weigh it out), while a crystal in the
    same batch keeps its stress."""
    model = tiny_model()
    molecule = random_molecule(np.random.default_rng(8), num_atoms=5)
    crystal = Configuration(molecule.atomic_numbers, molecule.positions % 4.5, cell=np.diag([4.5, 5.0, 5.5]), pbc=(True,) * 3)
    output = model(batch_of([molecule, crystal], model), compute_stress=True)
    assert torch.equal(output["stress"][0], torch.zeros(3, 3))
    alone = model(batch_of([crystal], model), compute_stress=True)["stress"][0]
    assert torch.allclose(output["stress"][1], alone, atol=1e-12, rtol=0)
    assert alone.abs().max() > 0


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


def test_chebyshev_basis_has_torch_s_values_and_a_derivative() -> None:
    """Upstream's values (torch.special's polynomials of the raw length), but differentiable:
    torch's own function has no gradient, so forces through it would miss the radial term."""
    basis = ChebychevBasis(r_max=5.0, num_basis=8)
    lengths = torch.linspace(0.1, 5.0, 23).unsqueeze(-1).requires_grad_(True)
    values = basis(lengths)
    expected = torch.special.chebyshev_polynomial_t(lengths.detach().repeat(1, 8), basis.n.repeat(23, 1))
    assert torch.allclose(values.detach(), expected, rtol=1e-12, atol=0)
    slope = torch.autograd.grad(values[:, 2].sum(), lengths)[0]  # T_3' = 12 r^2 - 3
    assert torch.allclose(slope, 12 * lengths.detach() ** 2 - 3, rtol=1e-12, atol=1e-12)
