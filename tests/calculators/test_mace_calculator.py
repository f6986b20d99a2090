"""The ASE calculator gives the model's energies and forces, and stress that matches strain derivatives."""
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.optimize import BFGS

from mace.calculators import MACECalculator


def test_energy_forces_match_upstream_predictions(shared_dir: Path) -> None:
    model = shared_dir / "conformance" / "models" / "small_v0316.model"
    frames = ase.io.read(shared_dir / "conformance" / "predictions" / "small_v0316__aspirin20.xyz", index=":3")
    calculator = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    for atoms in frames:
        reference_energy = atoms.info["MACE_energy"]
        reference_forces = atoms.arrays["MACE_forces"].copy()
        atoms.calc = calculator
        assert abs(atoms.get_potential_energy() - reference_energy) < 1e-6
        np.testing.assert_allclose(atoms.get_forces(), reference_forces, atol=1e-6)


def test_stress_of_a_periodic_cell_and_a_relaxation(shared_dir: Path) -> None:
    model = shared_dir / "conformance" / "models" / "small_v0316.model"
    calculator = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    crystal = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                       [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]],
                    cell=np.diag([4.2, 4.4, 4.6]), pbc=True)
    crystal.calc = calculator
    stress = crystal.get_stress(voigt=False)
    step = 1e-5
    for i in range(3):
        energies = []
        for sign in (1, -1):
            strained = crystal.copy()
            strain = np.eye(3)
            strain[i, i] += sign * step
            strained.set_cell(crystal.cell @ strain, scale_atoms=True)
            strained.calc = calculator
            energies.append(strained.get_potential_energy())
        assert abs((energies[0] - energies[1]) / (2 * step) / crystal.get_volume() - stress[i, i]) < 1e-6

    molecule = Atoms("CH4", positions=crystal.positions + [[0, 0, 0], [0.2, 0, 0.1], [0, 0, 0], [0, -0.1, 0], [0, 0, 0]])
    molecule.calc = calculator
    start_energy = molecule.get_potential_energy()
    start_force = np.abs(molecule.get_forces()).max()
    BFGS(molecule, logfile=None).run(fmax=1e-3, steps=30)
    assert molecule.get_potential_energy() < start_energy
    assert np.abs(molecule.get_forces()).max() < start_force
