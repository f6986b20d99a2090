"""MACECalculator with TorchScript: compiled files (``NAME_compiled.model``) and
``compile_mode="script"`` give the results of the model file."""
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from mace.calculators import LAMMPS_MACE, MACECalculator
from mace.modules import save_model
from mace.modules.export import save_scripted
from tests.modules.helpers import random_molecule, tiny_model

KEYS = ("energy", "forces", "stress", "node_energy")


@pytest.fixture(autouse=True)
def keep_default_dtype():
    """The calculator sets torch's default dtype (as upstream does); restore it after each test."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    torch.manual_seed(2)
    model = tiny_model()
    save_model(model, tmp_path / "tiny.model")
    save_scripted(model, tmp_path / "tiny_compiled.model")
    return tmp_path


def crystal() -> Atoms:
    config = random_molecule(np.random.default_rng(4), num_atoms=6)
    atoms = Atoms(numbers=config.atomic_numbers, positions=config.positions, cell=np.diag([5.0, 5.5, 6.0]), pbc=True)
    atoms.center()
    return atoms


def results(calculator: MACECalculator) -> dict:
    atoms = crystal()
    atoms.calc = calculator
    atoms.get_potential_energy()
    return {key: np.asarray(calculator.results[key]) for key in KEYS}


def test_a_torchscript_file_and_compile_mode_script_give_the_model_file_s_results(files: Path) -> None:
    expected = results(MACECalculator(model_paths=files / "tiny.model"))
    from_file = MACECalculator(model_paths=files / "tiny_compiled.model")
    compiled = MACECalculator(model_paths=files / "tiny.model", compile_mode="script")
    assert all(isinstance(calc.model, torch.jit.ScriptModule) for calc in (from_file, compiled))
    assert from_file.default_dtype == "float64" and from_file.r_max == 4.0
    for calculator in (from_file, compiled):
        actual = results(calculator)
        for key in KEYS:
            np.testing.assert_allclose(actual[key], expected[key], atol=1e-10, rtol=0, err_msg=key)


def test_what_a_torchscript_model_cannot_do_is_refused_clearly(files: Path) -> None:
    with pytest.raises(ValueError, match="compiled in torch.float64; it runs in that dtype only"):
        MACECalculator(model_paths=files / "tiny_compiled.model", default_dtype="float32")
    calculator = MACECalculator(model_paths=files / "tiny_compiled.model")
    with pytest.raises(NotImplementedError, match="get_descriptors needs the model file"):
        calculator.get_descriptors(crystal())
    torch.manual_seed(2)
    save_scripted(LAMMPS_MACE(tiny_model()), files / "tiny-lammps.pt")
    with pytest.raises(ValueError, match="another interface"):
        MACECalculator(model_paths=files / "tiny-lammps.pt")
