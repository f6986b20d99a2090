"""Upstream users' Python scripts run unchanged: mace_off / mace_mp / mace_omol with local
files, committees, descriptors, and clear refusals of what this version does not support."""
import urllib.error
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from scipy.spatial.transform import Rotation

from mace.adapters.prepare import PUBLISHED_MODELS
from mace.calculators import MACECalculator, mace_mp, mace_off, mace_omol
from mace.calculators.foundations_models import PUBLISHED_NAMES
from mace.core.errors import UserInputError
from mace.modules import save_model
from tests.modules.helpers import batch_of, random_molecule, tiny_model


@pytest.fixture(autouse=True)
def keep_default_dtype():
    """The calculator sets torch's default dtype (as upstream does); restore it after each test."""
    before = torch.get_default_dtype()
    yield
    torch.set_default_dtype(before)


@pytest.fixture
def no_network(monkeypatch, tmp_path: Path) -> List[str]:
    """An empty cache in tmp and no network: every download attempt is recorded and fails."""
    monkeypatch.setenv("MACE_CACHE", str(tmp_path / "cache"))
    attempts: List[str] = []

    def unreachable(url, *args, **kwargs):
        attempts.append(str(url))
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr("urllib.request.urlopen", unreachable)
    return attempts


def saved_tiny_model(path: Path, seed: int, **kwargs) -> Path:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    save_model(tiny_model(**kwargs), path)
    return path


def molecule(seed: int = 0, num_atoms: int = 6) -> Atoms:
    config = random_molecule(np.random.default_rng(seed), num_atoms=num_atoms)
    return Atoms(numbers=config.atomic_numbers, positions=config.positions)


def periodic(atoms: Atoms) -> Atoms:
    crystal = atoms.copy()
    crystal.set_cell(np.diag([5.5, 6.0, 6.5]))
    crystal.center()
    crystal.pbc = True
    return crystal


@pytest.mark.filterwarnings("ignore:Use thermalize_momenta:DeprecationWarning")
def test_an_upstream_md_script_runs_with_mace_off_and_a_local_model(tmp_path: Path) -> None:
    path = saved_tiny_model(tmp_path / "tiny.model", seed=1)
    atoms = molecule()
    atoms.calc = mace_off(model=str(path), device="")
    assert atoms.calc.default_dtype == "float64" and atoms.calc.device.type in ("cpu", "cuda")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    start = atoms.get_positions()
    energies = []
    dynamics = VelocityVerlet(atoms, timestep=0.2 * units.fs, logfile=None)
    dynamics.attach(lambda: energies.append(atoms.get_total_energy()))
    dynamics.run(5)
    assert len(energies) == 6 and np.isfinite(energies).all()
    assert not np.allclose(atoms.get_positions(), start)
    assert np.isfinite(atoms.get_forces()).all() and atoms.get_forces().shape == (len(atoms), 3)


def test_mace_mp_with_a_local_model_defaults_to_float32(tmp_path: Path) -> None:
    path = saved_tiny_model(tmp_path / "tiny.model", seed=1)
    atoms = molecule()
    reference = MACECalculator(model_paths=path, device="cpu", default_dtype="float64").get_potential_energy(atoms)
    calc = mace_mp(model=path, device="cpu")
    assert calc.default_dtype == "float32" and calc.models[0].r_max.dtype == torch.float32
    assert abs(calc.get_potential_energy(atoms) - reference) < 1e-3
    raw = mace_off(model=path, device="cpu", return_raw_model=True)
    assert isinstance(raw, torch.nn.Module) and raw.r_max.dtype == torch.float64


def test_energy_node_energy_and_the_files_dtype(tmp_path: Path) -> None:
    """node_energy is each atom's energy above its E0 (as upstream); '' keeps the file's dtype."""
    path = saved_tiny_model(tmp_path / "tiny.model", seed=2)
    atoms = molecule()
    calc = MACECalculator(model_paths=str(path))
    assert calc.default_dtype == "float64"
    e0s = {1: -1.5, 6: -10.0, 8: -20.0}  # the tiny model's E0s
    energy = calc.get_potential_energy(atoms)
    node_energy = calc.get_property("node_energy", atoms)
    assert calc.results["free_energy"] == energy
    assert abs(node_energy.sum() + sum(e0s[int(z)] for z in atoms.numbers) - energy) < 1e-10
    assert "stress" not in calc.results and "energies" not in calc.results

    torch.manual_seed(3)
    save_model(tiny_model().float(), tmp_path / "single.model")
    assert MACECalculator(model_paths=tmp_path / "single.model").default_dtype == "float32"


def test_a_committee_gives_the_members_mean_and_spread(tmp_path: Path) -> None:
    folder = tmp_path / "committee"
    folder.mkdir()
    paths = [saved_tiny_model(folder / f"mace_{i}.model", seed=10 + i) for i in range(3)]
    atoms = periodic(molecule(seed=4, num_atoms=5))
    members = []
    for path in paths:
        single = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        single.calculate(atoms)
        members.append(single.results)
    energies = np.array([r["energy"] for r in members])
    forces = np.stack([r["forces"] for r in members])
    stresses = np.stack([r["stress"] for r in members])
    assert np.ptp(energies) > 1e-6  # the members differ

    committee = MACECalculator(model_paths=str(folder / "mace_*.model"), device="cpu", default_dtype="float64")
    assert committee.num_models == 3
    atoms.calc = committee
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(), abs=1e-10)
    results = committee.results
    np.testing.assert_allclose(results["energies"], energies, atol=1e-10)
    np.testing.assert_allclose(results["energy_comm"], energies, atol=1e-10)
    assert results["energy_var"] == pytest.approx(np.var(energies), abs=1e-10)
    np.testing.assert_allclose(results["forces"], forces.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(results["forces_comm"], forces, atol=1e-10)
    np.testing.assert_allclose(results["forces_var"], forces.var(axis=0), atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), stresses.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(results["stress_comm"], stresses, atol=1e-10)
    np.testing.assert_allclose(results["stress_var"], stresses.var(axis=0), atol=1e-10)
    np.testing.assert_allclose(results["node_energy"], np.mean([r["node_energy"] for r in members], axis=0), atol=1e-10)
    assert {"energies", "energy_var", "forces_comm", "forces_var", "stress_var"} <= set(committee.implemented_properties)

    as_list = MACECalculator(model_paths=[str(p) for p in paths], device="cpu", default_dtype="float64")
    assert as_list.get_potential_energy(atoms) == pytest.approx(energies.mean(), abs=1e-10)
    with pytest.raises(ValueError, match="no model file"):
        MACECalculator(model_paths=str(folder / "absent_*.model"))


def test_committee_spread_carries_the_unit_conversion() -> None:
    torch.set_default_dtype(torch.float64)
    members = []
    for seed in (20, 21):
        torch.manual_seed(seed)
        members.append(tiny_model())
    atoms = molecule(seed=5)
    plain = MACECalculator(models=members)
    plain.calculate(atoms)
    converted = MACECalculator(models=members, energy_units_to_eV=2.0)
    converted.calculate(atoms)
    assert converted.results["energy"] == pytest.approx(2 * plain.results["energy"], abs=1e-10)
    assert converted.results["energy_var"] == pytest.approx(4 * plain.results["energy_var"], abs=1e-10)


def product_outputs(model: torch.nn.Module, atoms: Atoms) -> List[torch.Tensor]:
    """Each layer's product output, captured with forward hooks during an ordinary forward."""
    from mace.data import config_from_atoms

    captured: List[torch.Tensor] = []
    hooks = [p.register_forward_hook(lambda module, inputs, output: captured.append(output.detach())) for p in model.products]
    try:
        model(batch_of([config_from_atoms(atoms)], model), compute_force=False)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def test_descriptors_are_the_layers_node_features(tmp_path: Path) -> None:
    channels = 8
    path = saved_tiny_model(tmp_path / "tiny.model", seed=6, channels=channels, max_L=1, num_interactions=2)
    calc = MACECalculator(model_paths=path, device="cpu", default_dtype="float64")
    atoms = molecule(seed=7, num_atoms=7)

    invariants = calc.get_descriptors(atoms)
    assert isinstance(invariants, np.ndarray) and invariants.shape == (7, 2 * channels)

    first, last = product_outputs(calc.models[0], atoms)  # 8x0e+8x1o (0e first), then 8x0e
    assert first.shape == (7, 4 * channels) and last.shape == (7, channels)
    np.testing.assert_allclose(invariants, np.hstack([first[:, :channels], last]), atol=1e-12)
    np.testing.assert_allclose(calc.get_descriptors(atoms, invariants_only=False), np.hstack([first, last]), atol=1e-12)
    np.testing.assert_allclose(calc.get_descriptors(atoms, num_layers=1), first[:, :channels], atol=1e-12)
    assert calc.get_descriptors(atoms, invariants_only=False, num_layers=1).shape == (7, 4 * channels)
    with pytest.raises(ValueError, match="num_layers=3"):
        calc.get_descriptors(atoms, num_layers=3)

    rotated = atoms.copy()
    rotated.positions = atoms.positions @ Rotation.random(random_state=8).as_matrix().T + [0.3, -0.2, 0.1]
    np.testing.assert_allclose(calc.get_descriptors(rotated), invariants, atol=1e-10)
    assert not np.allclose(calc.get_descriptors(rotated, invariants_only=False), np.hstack([first, last]), atol=1e-6)

    atoms.calc = calc
    atoms.get_potential_energy()
    np.testing.assert_allclose(calc.get_descriptors(), invariants, atol=1e-12)  # the last atoms calculated

    other = saved_tiny_model(tmp_path / "other.model", seed=9, channels=channels, max_L=1, num_interactions=2)
    committee = MACECalculator(model_paths=[path, other])
    descriptors = committee.get_descriptors(atoms)
    assert isinstance(descriptors, list) and len(descriptors) == 2
    np.testing.assert_allclose(descriptors[0], invariants, atol=1e-12)


def test_descriptor_method_leaves_the_forward_unchanged() -> None:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(11)
    model = tiny_model()
    batch = batch_of([random_molecule(np.random.default_rng(12))], model)
    before = model(batch, compute_force=False)["energy"].detach().clone()
    features = model.node_features(batch)
    assert [f.shape[1] for f in features] == [irreps.dim for irreps in model.layer_irreps()]
    readouts = sum(readout(f).squeeze(-1) for readout, f in zip(model.readouts, features))
    assert torch.equal(model(batch, compute_force=False)["energy"], before)
    e0 = model.atomic_energies_fn(batch["node_attrs"])[:, 0]
    expected = (e0 + model.scale_shift(readouts, torch.zeros_like(batch["batch"]))).sum()
    assert torch.allclose(before.sum(), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("helper, name", [(mace_mp, "small"), (mace_mp, None), (mace_off, "medium"), (mace_off, "large")])
def test_a_published_name_offline_is_a_clear_error(no_network: List[str], helper, name) -> None:
    with pytest.raises(UserInputError, match="could not download") as error:
        helper(model=name)
    assert isinstance(error.value, RuntimeError)
    assert f"{helper.__name__}(model='{name or 'medium'}')" in str(error.value)
    assert len(no_network) == 1


def test_a_cached_published_model_needs_no_network(no_network: List[str], tmp_path: Path) -> None:
    url = PUBLISHED_MODELS[PUBLISHED_NAMES["mace_off"]["small"]]
    saved_tiny_model(tmp_path / "cache" / url.rsplit("/", 1)[-1], seed=13)
    calc = mace_off(model="small", device="cpu")
    assert np.isfinite(calc.get_potential_energy(molecule()))
    assert no_network == []


def test_unknown_names_list_the_known_ones(no_network: List[str]) -> None:
    with pytest.raises(ValueError, match=r"known: small, medium, large, small-0b, .*medium-mpa-0, .*mh-1\)"):
        mace_mp(model="medium-mpa-9")
    with pytest.raises(ValueError, match=r"known: extra_large\)"):
        mace_omol(model="large")
    with pytest.raises(ValueError, match="no such model file"):
        mace_off(model="/nowhere/absent.model")
    assert no_network == []


@pytest.mark.parametrize(
    "helper, name, key",
    [(mace_mp, "medium-mpa-0", "medium-mpa-0"), (mace_mp, "small-omat-0", "small-omat-0"),
     (mace_mp, "mace-matpes-r2scan-0", "mace-matpes-r2scan-0"), (mace_mp, "medium-0b3", "medium-0b3"),
     (mace_mp, "mh-1", "mh-1"), (mace_off, "small", "small_off"), (mace_omol, None, "mace_omol")],
)
def test_upstreams_published_names_resolve_to_the_table(no_network: List[str], helper, name, key) -> None:
    with pytest.raises(UserInputError, match="could not download") as error:
        helper(model=name)
    assert isinstance(error.value, RuntimeError)
    assert no_network == [PUBLISHED_MODELS[key]]


def test_every_mace_mp_name_of_upstream_is_in_the_table() -> None:
    for helper, names in PUBLISHED_NAMES.items():
        assert all(key in PUBLISHED_MODELS for key in names.values()), helper
    assert set(PUBLISHED_NAMES["mace_mp"]) == {
        "small", "medium", "large", "small-0b", "medium-0b", "small-0b2", "medium-0b2", "large-0b2",
        "medium-0b3", "medium-mpa-0", "small-omat-0", "medium-omat-0", "mace-matpes-pbe-0",
        "mace-matpes-r2scan-0", "mh-0", "mh-1",
    }


def test_dispersion_is_refused_not_ignored(tmp_path: Path, no_network: List[str]) -> None:
    path = saved_tiny_model(tmp_path / "tiny.model", seed=1)
    with pytest.raises(NotImplementedError, match="torch-dftd"):
        mace_mp(model=path, dispersion=True)
    assert no_network == []


def test_heads(tmp_path: Path) -> None:
    path = saved_tiny_model(tmp_path / "tiny.model", seed=1)
    assert MACECalculator(model_paths=path, head="Default").head == "Default"
    assert MACECalculator(model_paths=path).available_heads == ["Default"]
    with pytest.raises(ValueError, match=r"head='pt_head': head 'pt_head' is not in the model; its heads are \['Default'\]"):
        MACECalculator(model_paths=path, head="pt_head")

    torch.manual_seed(1)
    named = tiny_model()
    named.heads = ["mp_pbe"]
    assert MACECalculator(models=named, head="mp_pbe").head == "mp_pbe"
    assert MACECalculator(models=named).head == "mp_pbe"  # the only head
    with pytest.raises(ValueError, match=r"its heads are \['mp_pbe'\]"):
        MACECalculator(models=named, head="Default")
    several = tiny_model(heads=["pt_head", "omat"])
    with pytest.raises(ValueError, match=r"several heads \['pt_head', 'omat'\]: choose one"):
        MACECalculator(models=several)
    assert MACECalculator(models=several, head="omat").head == "omat"
    other = tiny_model(heads=["pt_head", "mp"])
    with pytest.raises(ValueError, match="name their heads differently"):
        MACECalculator(models=[several, other], head="omat")


@pytest.mark.parametrize(
    "option, message",
    [
        ({"compile_mode": "default"}, "compile_mode='default': torch.compile is not supported.*'script'"),
        ({"compile_mode": "reduce-overhead"}, "torch.compile is not supported"),
        ({"model_type": "DipoleMACE"}, "model_type='DipoleMACE'"),
        ({"enable_cueq": True}, "cuEquivariance"),
    ],
)
def test_unsupported_options_are_refused(tmp_path: Path, option, message) -> None:
    path = saved_tiny_model(tmp_path / "tiny.model", seed=1)
    with pytest.raises(NotImplementedError, match=message):
        MACECalculator(model_paths=path, **option)
    with pytest.raises(UserInputError, match=message):
        mace_off(model=path, **option)


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    path = saved_tiny_model(tmp_path / "tiny.model", seed=1)
    with pytest.raises(ValueError, match="default_dtype"):
        MACECalculator(model_paths=path, default_dtype="float16")
    with pytest.raises(ValueError, match="device"):
        MACECalculator(model_paths=path, device="tpu")
    with pytest.raises(ValueError, match="exactly one of model_paths"):
        MACECalculator()
