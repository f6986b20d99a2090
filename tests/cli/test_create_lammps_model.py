"""``python -m mace.cli.create_lammps_model``: the TorchScript file LAMMPS's ``pair_style mace``
loads has the interface the pair style calls (buffers, forward arguments, outputs), and its
energies, forces and virials are the eager model's."""
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pytest
import torch

from mace.adapters import inject_adapters
from mace.calculators import LAMMPS_MACE  # upstream's public path
from mace.cli import create_lammps_model
from mace.data import Configuration
from mace.modules import load_model, save_model
from mace.modules.export import save_scripted
from tests.adapters.conftest import float64_single_thread_without_jit_optimisation  # noqa: F401 (autouse)
from tests.adapters.conftest import perturb_trainable
from mace.modules.heads import select_head
from tests.modules.helpers import ELEMENTS, batch_of, multihead_model, random_molecule, tiny_model
from tests.shared import shared_folder_or_skip, upstream_python_or_skip

# An upstream mace-torch 0.3.16 to write reference files with; the test that needs it skips without it.
# What pair_mace.cpp puts in the graph it passes (one graph, cell 3x3).
LAMMPS_KEYS = ("batch", "cell", "edge_index", "energy", "forces", "node_attrs", "positions", "ptr", "shifts",
               "unit_shifts", "weight")


def crystal() -> Configuration:
    rng = np.random.default_rng(11)
    molecule = random_molecule(rng, num_atoms=7)
    cell = np.diag([4.3, 4.6, 4.9]) + 0.3 * rng.random((3, 3))
    return Configuration(atomic_numbers=molecule.atomic_numbers, positions=molecule.positions + 2.0, cell=cell,
                         pbc=(True, True, True))


def lammps_input(batch: Dict[str, torch.Tensor], dtype: torch.dtype = torch.float64) -> Dict[str, torch.Tensor]:
    data = {key: batch[key].clone() for key in LAMMPS_KEYS}
    data["cell"] = data["cell"].view(3, 3)
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in data.items()}


def create(argv: Sequence[str], capsys) -> int:
    with pytest.raises(SystemExit) as exit_info:
        create_lammps_model.main(list(argv))
    return exit_info.value.code


def saved_model(path: Path, method: str = "none") -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_model()
    if method != "none":
        inject_adapters(model, method)
        perturb_trainable(model, std=0.05)
    save_model(model, path)
    return model


def test_the_lammps_file_has_the_interface_and_predictions_of_the_model(tmp_path: Path, capsys) -> None:
    model = saved_model(tmp_path / "tiny.model")
    assert create([str(tmp_path / "tiny.model")], capsys) == 0
    assert "tiny.model-lammps.pt" in capsys.readouterr().out
    lammps = torch.jit.load(str(tmp_path / "tiny.model-lammps.pt"))
    assert lammps.atomic_numbers.tolist() == list(ELEMENTS)
    assert float(lammps.r_max) == 4.0 and int(lammps.num_interactions) == 2
    attributes = dict(lammps.named_parameters())
    assert attributes["model.node_embedding.linear.weight"].dtype == torch.float64  # the pair style's dtype probe

    batch = batch_of([crystal()], model)
    expected = model(dict(batch), compute_virials=True)
    num_atoms = batch["positions"].shape[0]
    output = lammps(lammps_input(batch), torch.ones(num_atoms, dtype=torch.bool), True)
    assert set(output) == {"total_energy_local", "node_energy", "forces", "virials"}
    assert output["total_energy_local"].shape == (1,) and output["virials"].shape == (1, 3, 3)
    for ours, key in (("total_energy_local", "energy"), ("node_energy", "node_energy"), ("forces", "forces"),
                      ("virials", "virials")):
        assert float((output[ours].detach() - expected[key].detach()).abs().max()) < 1e-10, ours

    without_virials = lammps(lammps_input(batch), torch.ones(num_atoms, dtype=torch.bool), False)
    assert float((without_virials["forces"] - expected["forces"].detach()).abs().max()) < 1e-10
    assert without_virials["virials"].shape == (3, 3) and not bool(without_virials["virials"].any())


def test_only_local_atoms_count_towards_the_energy_and_forces_are_its_gradient() -> None:
    """With domain decomposition LAMMPS passes ghost atoms as nodes, masked out of the energy."""
    torch.manual_seed(0)
    model = tiny_model()
    lammps = LAMMPS_MACE(model)
    batch = batch_of([crystal()], model)
    local = torch.tensor([True, False, True, True, False, True, False])
    output = lammps(lammps_input(batch), local, False)

    positions = batch["positions"].clone().requires_grad_(True)
    reference = model(dict(batch, positions=positions), compute_force=False)
    local_energy = reference["node_energy"][local].sum()
    (gradient,) = torch.autograd.grad(local_energy, positions)
    assert float((output["total_energy_local"].detach() - local_energy.detach()).abs().max()) < 1e-12
    assert float((output["forces"].detach() + gradient).abs().max()) < 1e-12


def test_an_mmea_model_in_float32_tells_lammps_its_dtype(tmp_path: Path, capsys) -> None:
    model = saved_model(tmp_path / "mmea.model", "mmea")
    assert create([str(tmp_path / "mmea.model"), "--dtype", "float32", "--head", "Default"], capsys) == 0
    lammps = torch.jit.load(str(tmp_path / "mmea.model-lammps.pt"))
    attributes = {**dict(lammps.named_parameters()), **dict(lammps.named_buffers())}
    assert attributes["model.node_embedding.linear.weight"].dtype == torch.float32
    assert lammps.r_max.dtype == torch.float32
    batch = batch_of([crystal()], model)
    num_atoms = batch["positions"].shape[0]
    output = lammps(lammps_input(batch, torch.float32), torch.ones(num_atoms, dtype=torch.bool), True)
    expected = model(dict(batch), compute_virials=True)
    assert output["forces"].dtype == torch.float32
    assert float((output["forces"].detach().double() - expected["forces"].detach()).abs().max()) < 1e-4
    assert float((output["total_energy_local"].detach().double() - expected["energy"].detach()).abs().max()) < 1e-3


def test_a_multihead_model_runs_its_last_head_unless_another_is_named(tmp_path: Path, capsys) -> None:
    model = multihead_model()
    save_model(model, tmp_path / "multihead.model")
    batch = batch_of([crystal()], model)
    num_atoms = batch["positions"].shape[0]
    for argv, index in (([], 2), (["--head", "pt_head"], 0)):
        assert create([str(tmp_path / "multihead.model"), *argv], capsys) == 0
        lammps = torch.jit.load(str(tmp_path / "multihead.model-lammps.pt"))
        output = lammps(lammps_input(batch), torch.ones(num_atoms, dtype=torch.bool), False)
        expected = select_head(model, index)(dict(batch))
        assert float((output["total_energy_local"].detach() - expected["energy"].detach()).abs().max()) < 1e-10
        assert float((output["forces"].detach() - expected["forces"].detach()).abs().max()) < 1e-10


def test_what_cannot_be_written_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    model = saved_model(tmp_path / "tiny.model")
    save_scripted(model, tmp_path / "tiny_compiled.model")
    capsys.readouterr()
    for argv, message in (
        ([str(tmp_path / "tiny.model"), "--head", "pt_head"], "head 'pt_head' is not in the model; its heads are ['Default']"),
        ([str(tmp_path / "tiny.model"), "--format", "mliap"], "--format mliap: only 'libtorch'"),
        ([str(tmp_path / "tiny_compiled.model")], "already a TorchScript file"),
        ([str(tmp_path / "missing.model")], "does not exist"),
    ):
        assert create(argv, capsys) == 1
        assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny.model", "tiny_compiled.model"]


def test_the_file_gives_what_upstream_s_file_gives_for_an_upstream_model(tmp_path: Path, capsys) -> None:
    upstream_python = upstream_python_or_skip("the LAMMPS file against upstream's")
    for folder in ("upstream", "ours"):
        (tmp_path / folder).mkdir()
        shutil.copy(shared_folder_or_skip() / "conformance" / "models" / "small_v0316.model", tmp_path / folder)
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    upstream = subprocess.run([str(upstream_python), "-m", "mace.cli.create_lammps_model", "small_v0316.model"],
                              cwd=tmp_path / "upstream", env=environment, capture_output=True, text=True, timeout=600)
    assert upstream.returncode == 0, upstream.stderr[-2000:]
    assert create([str(tmp_path / "ours" / "small_v0316.model")], capsys) == 0
    theirs, ours = (torch.jit.load(str(tmp_path / folder / "small_v0316.model-lammps.pt")) for folder in ("upstream", "ours"))
    batch = batch_of([crystal()], load_model(tmp_path / "ours" / "small_v0316.model"))
    num_atoms = batch["positions"].shape[0]
    for local in (torch.ones(num_atoms, dtype=torch.bool), torch.arange(num_atoms) % 2 == 0):
        for compute_virials in (True, False):
            expected = theirs(lammps_input(batch), local, compute_virials)
            actual = ours(lammps_input(batch), local, compute_virials)
            assert set(actual) == set(expected)
            for key, value in expected.items():
                assert actual[key].shape == value.shape, key
                assert float((actual[key].detach() - value.detach()).abs().max()) < 1e-12, key
