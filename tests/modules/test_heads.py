"""Multi-head models: each head's predictions, cutting one head out, choosing heads, and
upstream 0.3.16's own multi-head files."""
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import ase.io
import numpy as np
import pytest
import torch

from mace.calculators import MACECalculator
from mace.core.errors import UserInputError
from mace.modules.export import script_model
from mace.modules.heads import ModelHeads, expand_heads, foundation_head_index, head_index, select_head
from mace.modules.loading import load_model, save_model
from mace.modules.models import model_heads
from mace.modules.predict import predict
from tests.modules.helpers import HEADS, batch_of, multihead_model, random_molecule, tiny_model
from tests.shared import upstream_python_or_skip

pytestmark = pytest.mark.usefixtures("float64_default")


def energy_and_forces(model, batch: Dict[str, torch.Tensor]) -> Tuple[np.ndarray, np.ndarray]:
    output = model(dict(batch), compute_force=True)
    return output["energy"].detach().numpy(), output["forces"].detach().numpy()


def with_heads(batch: Dict[str, torch.Tensor], heads) -> Dict[str, torch.Tensor]:
    return {**batch, "head": torch.as_tensor(heads, dtype=torch.long)}


@pytest.fixture
def molecules():
    rng = np.random.default_rng(0)
    return [random_molecule(rng, num_atoms=n) for n in (5, 6, 7)]


def test_each_head_predicts_what_its_cut_out_model_predicts(molecules) -> None:
    model = multihead_model()
    batch = batch_of(molecules, model)
    energies = []
    for index in range(len(HEADS)):
        energy, forces = energy_and_forces(model, with_heads(batch, [index] * len(molecules)))
        single = select_head(model, index)
        assert model_heads(single) == [HEADS[index]] and len(model_heads(model)) == 3
        single_energy, single_forces = energy_and_forces(single, with_heads(batch, [0] * len(molecules)))
        np.testing.assert_allclose(single_energy, energy, atol=1e-10, rtol=0)
        np.testing.assert_allclose(single_forces, forces, atol=1e-10, rtol=0)
        energies.append(energy)
    assert np.abs(energies[0] - energies[1]).min() > 1e-3 and np.abs(energies[1] - energies[2]).min() > 1e-3


@pytest.mark.parametrize("scale_shift", [True, False])
def test_expanded_heads_each_predict_what_the_one_head_model_predicts(molecules, scale_shift: bool) -> None:
    """Upstream's start of a replay fine-tune: every head a copy of the foundation's; cutting
    one out again gives back the same readout weights."""
    model = tiny_model(scale_shift=scale_shift)
    expanded = expand_heads(model, ["pt_head", "Default"])
    assert model_heads(expanded) == ["pt_head", "Default"]
    batch = batch_of(molecules, model)
    energy, forces = energy_and_forces(model, batch)
    for heads in ([0, 0, 0], [1, 1, 1], [1, 0, 1]):
        expanded_energy, expanded_forces = energy_and_forces(expanded, with_heads(batch, heads))
        np.testing.assert_allclose(expanded_energy, energy, atol=1e-10, rtol=0)
        np.testing.assert_allclose(expanded_forces, forces, atol=1e-10, rtol=0)
    for index in range(2):
        back = select_head(expanded, index)
        for original, cut in zip(model.readouts, back.readouts):
            for (name, weight), (_, cut_weight) in zip(original.named_parameters(), cut.named_parameters()):
                torch.testing.assert_close(cut_weight, weight, atol=1e-12, rtol=0, msg=name)


def test_a_batch_mixing_heads_gives_each_graph_its_own_heads_prediction(molecules) -> None:
    model = multihead_model()
    batch = batch_of(molecules, model)
    mixed, _ = energy_and_forces(model, with_heads(batch, [2, 0, 1]))
    for graph, head in enumerate([2, 0, 1]):
        alone, _ = energy_and_forces(model, with_heads(batch, [head] * len(molecules)))
        assert mixed[graph] == pytest.approx(alone[graph], abs=1e-10)


def test_a_multihead_model_stays_equivariant(molecules) -> None:
    model = multihead_model()
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(5)))[0]
    batch = with_heads(batch_of(molecules, model), [2, 2, 2])
    energy, forces = energy_and_forces(model, batch)
    rotated = {**batch, "positions": batch["positions"] @ rotation.T}
    rotated_energy, rotated_forces = energy_and_forces(model, rotated)
    np.testing.assert_allclose(rotated_energy, energy, atol=1e-10, rtol=0)
    np.testing.assert_allclose(rotated_forces, forces @ rotation.numpy().T, atol=1e-10, rtol=0)


def test_one_head_models_have_one_output_column_and_the_default_name() -> None:
    model = tiny_model()
    assert model_heads(model) == ["Default"]
    assert str(model.readouts[-1].linear_2.irreps_out) == "1x0e"
    assert select_head(model, 0) is model


def test_head_choice_follows_upstream() -> None:
    model = multihead_model()
    assert head_index(model, None) == 1  # the head named 'default', any case
    assert head_index(model, "mine") == 2
    assert foundation_head_index(model, None) == 1  # the first that is not the replay head
    with pytest.raises(UserInputError, match=r"head 'other' is not in the model; its heads are \['pt_head'"):
        head_index(model, "other")
    no_default = multihead_model(heads=["pt_head", "mine"])
    with pytest.raises(UserInputError, match="several heads"):
        head_index(no_default, None)
    assert foundation_head_index(no_default, None) == 1
    with pytest.raises(UserInputError, match="only the pretraining head"):
        foundation_head_index(tiny_model(heads=["pt_head"]), None)


def test_predict_eval_and_calculator_take_a_head(molecules, tmp_path: Path) -> None:
    model = multihead_model()
    path = tmp_path / "multihead.model"
    torch.save(model, path)
    expected = predict(select_head(model, 2), molecules[:1])[0]
    assert predict(model, molecules[:1], head="mine")[0].energy == pytest.approx(expected.energy, abs=1e-10)
    atoms = ase.Atoms(numbers=molecules[0].atomic_numbers, positions=molecules[0].positions)
    atoms.calc = MACECalculator(model_paths=path, head="mine", default_dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(expected.energy, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), expected.forces, atol=1e-10, rtol=0)
    node_e0 = {1: -2.0, 6: -9.0, 8: -21.0}  # 'mine': the third row of E0s
    np.testing.assert_allclose(
        atoms.calc.results["node_energy"],
        expected.node_energy - np.array([node_e0[int(z)] for z in molecules[0].atomic_numbers]),
        atol=1e-10,
    )
    with pytest.raises(UserInputError, match="head='nope'"):
        MACECalculator(model_paths=path, head="nope", default_dtype="float64")


# Run in upstream 0.3.16's environment: a three-head model built by upstream, saved, and
# upstream's calculator predictions of each head.
UPSTREAM_MULTIHEAD = """
import json, sys
import numpy as np, torch
import mace  # before e3nn, which then loads its constants under torch's weights_only default
from ase import Atoms
from e3nn import o3
from mace import modules
from mace.calculators import MACECalculator
torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
model = modules.ScaleShiftMACE(
    r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
    interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
    interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
    num_interactions=2, num_elements=3, hidden_irreps=o3.Irreps("8x0e+8x1o"), MLP_irreps=o3.Irreps("8x0e"),
    atomic_energies=np.array([[-1.5, -10.0, -20.0], [-1.0, -11.0, -19.0], [-2.0, -9.0, -21.0]]),
    avg_num_neighbors=5.0, atomic_numbers=[1, 6, 8], correlation=3, gate=torch.nn.functional.silu,
    radial_MLP=[16, 16], heads=["pt_head", "Default", "mine"],
    atomic_inter_scale=[1.3, 0.7, 1.1], atomic_inter_shift=[0.1, -0.2, 0.05])
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.3 * torch.randn_like(p))
torch.save(model, "multihead.model")
rng = np.random.default_rng(1)
atoms = Atoms(numbers=[8, 6, 1, 1, 6, 1], positions=rng.uniform(-1.6, 1.6, size=(6, 3)))
atoms.write("atoms.xyz")
predictions = {}
for head in ["pt_head", "Default", "mine"]:
    atoms.calc = MACECalculator(models=model, head=head, default_dtype="float64", device="cpu")
    predictions[head] = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist()}
json.dump(predictions, open("predictions.json", "w"))
"""


def test_upstream_multihead_files_predict_each_head_as_upstream(tmp_path: Path) -> None:
    upstream_python = upstream_python_or_skip("upstream-written multi-head models")
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    made = subprocess.run([str(upstream_python), "-c", UPSTREAM_MULTIHEAD], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    expected = json.loads((tmp_path / "predictions.json").read_text())
    atoms = ase.io.read(tmp_path / "atoms.xyz")
    model = load_model(tmp_path / "multihead.model", dtype=torch.float64)
    assert model_heads(model) == HEADS
    for index, head in enumerate(HEADS):
        for candidate in (MACECalculator(model_paths=tmp_path / "multihead.model", head=head, default_dtype="float64"),
                          MACECalculator(models=select_head(model, index), default_dtype="float64")):
            atoms.calc = candidate
            # upstream's own environment (its e3nn) sums in another order: 1e-11 relative
            assert atoms.get_potential_energy() == pytest.approx(expected[head]["energy"], rel=1e-10, abs=0)
            np.testing.assert_allclose(atoms.get_forces(), expected[head]["forces"], atol=1e-8, rtol=0)


def model_heads_pair():
    """A ModelHeads of two different one-head models on the same elements."""
    torch.manual_seed(7)
    first, second = tiny_model(), tiny_model()
    second.atomic_energies_fn.atomic_energies = torch.tensor([-1.0, -11.0, -19.0])
    return ModelHeads([first, second], ["foundation", "Default"]), first, second


def test_model_heads_predict_exactly_what_each_model_predicts(molecules) -> None:
    combined, first, second = model_heads_pair()
    assert model_heads(combined) == ["foundation", "Default"] and head_index(combined, None) == 1
    batch = batch_of(molecules, first)
    for heads in ([0, 0, 0], [1, 1, 1], [1, 0, 1]):
        output = combined(with_heads(batch, heads), compute_stress=False)
        for graph, head in enumerate(heads):
            alone = (first, second)[head](dict(batch))
            nodes = slice(int(batch["ptr"][graph]), int(batch["ptr"][graph + 1]))
            assert float(output["energy"][graph].detach()) == float(alone["energy"][graph].detach())  # bitwise
            assert torch.equal(output["forces"][nodes], alone["forces"][nodes])
            assert torch.equal(output["node_energy"][nodes], alone["node_energy"][nodes])
    scripted = script_model(combined)
    mixed = with_heads(batch, [1, 0, 1])
    for key in ("energy", "forces"):
        assert float((scripted(dict(mixed))[key] - combined(dict(mixed))[key]).detach().abs().max()) < 1e-12


def test_model_heads_files_load_and_the_calculator_chooses_their_head(molecules, tmp_path: Path) -> None:
    combined, first, _ = model_heads_pair()
    save_model(combined, tmp_path / "two.model")
    loaded = load_model(tmp_path / "two.model", dtype=torch.float64)
    expected = predict(first, molecules[:1])[0]
    assert predict(loaded, molecules[:1], head="foundation")[0].energy == expected.energy
    atoms = ase.Atoms(numbers=molecules[0].atomic_numbers, positions=molecules[0].positions)
    atoms.calc = MACECalculator(model_paths=tmp_path / "two.model", head="foundation", default_dtype="float64")
    assert atoms.get_potential_energy() == expected.energy
    assert atoms.calc.get_descriptors(atoms).shape[0] == len(atoms)
    no_default = ModelHeads([first, tiny_model()], ["foundation", "mine"])  # every head is checked on loading
    save_model(no_default, tmp_path / "named.model")
    named = load_model(tmp_path / "named.model", dtype=torch.float64)
    assert model_heads(named) == ["foundation", "mine"] and head_index(named, None) == 1  # the fine-tuned head
    with pytest.raises(ValueError, match="same elements"):
        ModelHeads([tiny_model(), tiny_model(atomic_numbers=(1, 6, 7))], ["a", "b"])
