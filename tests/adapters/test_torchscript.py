"""TorchScript files of fine-tuned models run without this package: full fine-tuning, MMEA,
ELoRA and LoRA models, compiled and saved (``mace.modules.export``), are loaded with
``torch.jit.load`` in a fresh Python that never imports ``mace`` (nor e3nn) and predict the
energies, forces and stress of the eager model (float64, 1e-10)."""
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from mace.adapters import inject_adapters
from mace.adapters.mmea import MMEALinear, _block_slices
from mace.data import Configuration
from mace.modules.export import save_scripted, script_model
from mace.modules.loading import load_model, save_model
from tests.adapters.conftest import perturb_trainable
from tests.modules.helpers import batch_of, random_molecule, tiny_model

METHODS = ("none", "mmea", "elora", "lora")
TOLERANCE = 1e-10

# Run by a fresh interpreter from an empty folder, without PYTHONPATH: argv is the inputs file,
# the outputs file, then the TorchScript files.
LOADER = r"""
import sys
import torch

inputs = torch.load(sys.argv[1], weights_only=True)
outputs = {}
for path in sys.argv[3:]:
    model = torch.jit.load(path)
    molecule = model(dict(inputs["molecule"]), training=False, compute_force=True)
    crystal = model(dict(inputs["crystal"]), training=False, compute_force=True, compute_stress=True)
    outputs[path] = {
        "molecule": {key: molecule[key].detach() for key in ("energy", "forces", "node_energy")},
        "crystal": {key: crystal[key].detach() for key in ("energy", "forces", "stress")},
    }
foreign = sorted(name for name in sys.modules if name.split(".")[0] in ("mace", "e3nn"))
assert not foreign, f"the TorchScript files imported {foreign}"
torch.save(outputs, sys.argv[2])
"""


def sample_inputs(model: torch.nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    rng = np.random.default_rng(3)
    molecule = random_molecule(rng, num_atoms=7)
    cell = np.diag([4.2, 4.5, 4.8]) + 0.2 * rng.random((3, 3))
    crystal = Configuration(
        atomic_numbers=molecule.atomic_numbers, positions=molecule.positions + 2.0, cell=cell, pbc=(True, True, True)
    )
    return {"molecule": batch_of([molecule], model), "crystal": batch_of([crystal], model)}




def eager_outputs(model: torch.nn.Module, inputs: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
    molecule = model(dict(inputs["molecule"]), training=False, compute_force=True)
    crystal = model(dict(inputs["crystal"]), training=False, compute_force=True, compute_stress=True)
    return {
        "molecule": {key: molecule[key].detach() for key in ("energy", "forces", "node_energy")},
        "crystal": {key: crystal[key].detach() for key in ("energy", "forces", "stress")},
    }


def fine_tuned(method: str) -> torch.nn.Module:
    """A tiny model adapted with ``method`` ('none': full fine-tuning), trainable weights moved."""
    torch.manual_seed(0)
    model = tiny_model()
    if method != "none":
        inject_adapters(model, method)
    perturb_trainable(model, std=0.05, seed=1)
    return model


def max_difference(first: Dict[str, Dict[str, torch.Tensor]], second: Dict[str, Dict[str, torch.Tensor]]) -> float:
    return max(float((first[s][k] - second[s][k]).abs().max()) for s in first for k in first[s])


def test_torchscript_files_of_every_method_predict_as_the_eager_model_without_this_package(tmp_path: Path) -> None:
    models = {method: fine_tuned(method) for method in METHODS}
    inputs = sample_inputs(models["none"])
    torch.save(inputs, tmp_path / "inputs.pt")
    for method, model in models.items():
        save_scripted(model, tmp_path / f"{method}_compiled.model")
    run_folder = tmp_path / "empty"
    run_folder.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt"),
         *(str(tmp_path / f"{method}_compiled.model") for method in METHODS)],
        cwd=run_folder, env=dict(environment, OMP_NUM_THREADS="1"), check=True, capture_output=True, text=True,
    )
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    for method, model in models.items():
        expected = eager_outputs(model, inputs)
        assert max_difference(expected, outputs[str(tmp_path / f"{method}_compiled.model")]) < TOLERANCE, method
    eager_none, eager_mmea = (eager_outputs(models[m], inputs) for m in ("none", "mmea"))
    assert max_difference(eager_none, eager_mmea) > 1e-4  # the adapters do change the predictions


@pytest.mark.parametrize("method", ["elora", "lora"])
def test_low_rank_updates_are_compiled_folded_in_and_the_model_is_left_as_it_was(method: str) -> None:
    model = fine_tuned(method)
    before = copy.deepcopy(model.state_dict())
    scripted = script_model(model)
    names = {name for name, _ in scripted.named_parameters()}
    assert not any("lora_" in name for name in names) and "node_embedding.linear.weight" in names
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    inputs = sample_inputs(model)
    assert max_difference(eager_outputs(model, inputs), eager_outputs(scripted, inputs)) < TOLERANCE


def test_mmea_model_files_of_the_earlier_layout_load_run_and_compile(tmp_path: Path) -> None:
    """Files written before MMEALinear kept plain block tuples hold (start, mul, Irrep) blocks."""
    model = fine_tuned("mmea")
    inputs = sample_inputs(model)
    expected = eager_outputs(model, inputs)
    for wrapper in (m for m in model.modules() if isinstance(m, MMEALinear)):
        wrapper.output_blocks = _block_slices(wrapper.base.irreps_out)
    save_model(model, tmp_path / "earlier.model")
    loaded = load_model(tmp_path / "earlier.model")
    assert all(len(block) == 4 for m in loaded.modules() if isinstance(m, MMEALinear) for block in m.output_blocks)
    assert max_difference(expected, eager_outputs(loaded, inputs)) == 0.0
    assert max_difference(expected, eager_outputs(script_model(loaded), inputs)) < TOLERANCE
