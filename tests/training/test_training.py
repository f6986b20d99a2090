"""Unit tests of the training pieces: losses, metrics, E0s, optimiser groups, checkpoints and
the Trainer loop (schedulers, patience, SWA stage, EMA, divergence, restore).

The Trainer tests use a tiny model on synthetic water molecules, so they need no shared data
and each epoch is one small batch.
"""
import copy
import dataclasses
import json
import logging
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

from mace.cli.run_train import HeadData, RunPaths, build_trainer
from mace.adapters import adapter_parameter_ids, freeze_blocks, inject_adapters
from mace.adapters.elora import make_radial_basis_trainable
from mace.data import Configuration, load_from_xyz
from mace.data.datasets import Datasets
from mace.data.loader import shuffle_state
from mace.modules.builder import ModelSettings, build_model
from mace.modules.loss import (
    EnergyForcesLoss,
    WeightedEnergyForcesLoss,
    WeightedForcesLoss,
    WeightedEnergyForcesStressLoss,
    WeightedEnergyForcesVirialsLoss,
    WeightedHuberEnergyForcesStressLoss,
    UniversalLoss,
    build_loss,
    build_stage_two_loss,
)
from mace.modules.models import MACE
from mace.cli.arg_parser import defining_settings, parse_args
from mace.core.atomic_numbers import AtomicNumberTable
from mace.training.checkpoint import CheckpointHandler
from mace.core.errors import UserInputError
from mace.training.metrics import TABLE_COLUMNS, ErrorAccumulator, error_table, evaluation_summary
from mace.training.optim import OptimizerSettings, build_optimizer, parameter_groups
from mace.training.reporting import evaluate_sets
from mace.data.statistics import interaction_energies_per_atom, resolve_e0s, scale_and_shift
from mace.training.train import SWASettings, Trainer, TrainingDivergedError, evaluate, output_request_for

Batch = Dict[str, torch.Tensor]

MODEL_FLAGS = [
    "--name=unit", "--train_file=unused.xyz", "--loss=ef", "--num_channels=8", "--max_L=0",
    "--correlation=2", "--r_max=4.0", "--max_ell=1", "--num_radial_basis=4", "--radial_MLP=[8]",
    "--batch_size=2", "--valid_batch_size=2", "--eval_interval=1",
]
WATER_E0S = {1: -0.5, 8: -13.0}


@pytest.fixture(autouse=True)
def float64_single_thread() -> Iterator[None]:
    """Training runs in float64 like run_train; one thread avoids oversubscribed CI cores."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------
# Hand-made batches for losses and metrics
# --------------------------------------------------------------------------------------


def hand_batch(rng: np.random.Generator, sizes: Sequence[int], weight: Sequence[float],
               energy_weight: Sequence[float], forces_weight: Sequence[float]) -> Tuple[Batch, Batch]:
    """(batch, output) with random labels and predictions for graphs of ``sizes`` atoms."""
    nodes = sum(sizes)
    ptr = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]))
    batch = {
        "ptr": ptr,
        "batch": torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)),
        "energy": torch.tensor(rng.normal(size=len(sizes))),
        "forces": torch.tensor(rng.normal(size=(nodes, 3))),
        "weight": torch.tensor(weight, dtype=torch.float64),
        "energy_weight": torch.tensor(energy_weight, dtype=torch.float64),
        "forces_weight": torch.tensor(forces_weight, dtype=torch.float64),
    }
    output = {"energy": torch.tensor(rng.normal(size=len(sizes))), "forces": torch.tensor(rng.normal(size=(nodes, 3)))}
    return batch, output


def numpy_parts(batch: Batch, output: Batch) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Energy errors, per-atom energy errors, force errors and per-node config weights."""
    atoms = np.diff(batch["ptr"].numpy())
    de = output["energy"].numpy() - batch["energy"].numpy()
    df = output["forces"].numpy() - batch["forces"].numpy()
    node_weight = (batch["weight"] * batch["forces_weight"]).numpy()[batch["batch"].numpy()]
    return de, de / atoms, df, node_weight


def test_ef_loss_uses_total_energies_and_weighted_force_components() -> None:
    batch, output = hand_batch(np.random.default_rng(0), [2, 3], [1.0, 2.0], [1.0, 1.0], [1.0, 0.5])
    de, _, df, node_weight = numpy_parts(batch, output)
    expected = 3.0 * np.mean(de**2) + 10.0 * np.mean(node_weight[:, None] * df**2)
    assert EnergyForcesLoss(3.0, 10.0)(batch, output).item() == pytest.approx(expected, rel=1e-12)


def test_weighted_loss_uses_per_atom_energies_with_config_weights() -> None:
    batch, output = hand_batch(np.random.default_rng(1), [2, 3], [1.0, 2.0], [0.5, 1.0], [1.0, 1.0])
    _, de_atom, df, node_weight = numpy_parts(batch, output)
    energy_weights = (batch["weight"] * batch["energy_weight"]).numpy()
    expected = 3.0 * np.mean(energy_weights * de_atom**2) + 10.0 * np.mean(node_weight[:, None] * df**2)
    weighted = WeightedEnergyForcesLoss(3.0, 10.0)(batch, output).item()
    assert weighted == pytest.approx(expected, rel=1e-12)
    assert weighted != pytest.approx(EnergyForcesLoss(3.0, 10.0)(batch, output).item())


def test_forces_only_loss_ignores_energies() -> None:
    batch, output = hand_batch(np.random.default_rng(2), [2, 3], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    loss = WeightedForcesLoss(10.0)
    before = loss(batch, output).item()
    output["energy"] = output["energy"] + 100.0
    assert loss(batch, output).item() == before
    _, _, df, _ = numpy_parts(batch, output)
    assert before == pytest.approx(10.0 * np.mean(df**2), rel=1e-12)


def _numpy_huber(difference: np.ndarray, delta: float) -> float:
    absolute = np.abs(difference)
    return float(np.mean(np.where(absolute <= delta, 0.5 * difference**2, delta * (absolute - 0.5 * delta))))


def test_huber_loss_matches_the_piecewise_formula_on_per_atom_energies_and_forces() -> None:
    batch, output = hand_batch(np.random.default_rng(3), [2, 3], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    output["forces"] = batch["forces"] + torch.tensor([[0.005], [0.5], [-0.002], [-2.0], [0.0]])
    _, de_atom, df, _ = numpy_parts(batch, output)
    delta = 0.01
    expected = 2.0 * _numpy_huber(de_atom, delta) + 5.0 * _numpy_huber(df, delta)
    loss = WeightedHuberEnergyForcesStressLoss(2.0, 5.0, 1.0, huber_delta=delta)
    assert loss(batch, output).item() == pytest.approx(expected, rel=1e-12)


def test_universal_loss_is_upstream_s_formula() -> None:
    """Label weights inside the Huber terms, the configuration weight left out, and the force
    delta shrinking to 0.7 / 0.4 / 0.1 of --huber_delta for reference forces of 100 / 200 / 300+ eV/A."""
    batch, output = hand_batch(np.random.default_rng(11), [2, 3], [5.0, 7.0], [1.0, 0.5], [2.0, 1.0])
    batch["forces"][1] = torch.tensor([0.0, 150.0, 0.0])  # weighted norm 300: the 0.1 bucket
    batch["forces"][2] = torch.tensor([120.0, 0.0, 0.0])  # forces weight 1: the 0.7 bucket
    batch["forces"][3] = torch.tensor([0.0, 0.0, 250.0])  # the 0.4 bucket
    output["forces"] = batch["forces"] + torch.tensor(np.random.default_rng(12).normal(scale=0.05, size=(5, 3)))
    batch["stress"] = torch.tensor(np.random.default_rng(13).normal(size=(2, 3, 3)))
    batch["stress_weight"] = torch.tensor([1.0, 0.0])
    output["stress"] = torch.tensor(np.random.default_rng(14).normal(size=(2, 3, 3)))
    delta = 0.01
    atoms = np.array([2.0, 3.0])
    energy_weights = batch["energy_weight"].numpy()
    energy = _numpy_huber(energy_weights * (output["energy"] - batch["energy"]).numpy() / atoms, delta)
    node_weights = batch["forces_weight"].numpy()[batch["batch"].numpy()][:, None]
    reference, predicted = node_weights * batch["forces"].numpy(), node_weights * output["forces"].numpy()
    factors = np.array([1.0, 0.1, 0.7, 0.4, 1.0])  # from the weighted reference force norms
    forces = np.mean([[_numpy_huber(predicted[i, k] - reference[i, k], delta * factors[i]) for k in range(3)] for i in range(5)])
    stress_weights = batch["stress_weight"].numpy()[:, None, None]
    stress = _numpy_huber(stress_weights * (output["stress"] - batch["stress"]).numpy(), delta)
    expected = 2.0 * energy + 30.0 * forces + 4.0 * stress
    loss = build_loss("universal", 2.0, 30.0, 4.0, 1.0, delta)
    assert type(loss) is UniversalLoss
    assert loss(batch, output).item() == pytest.approx(expected, rel=1e-12)
    assert build_stage_two_loss("universal", 2.0, 30.0, 4.0, 1.0, delta)(batch, output).item() == pytest.approx(expected, rel=1e-12)


def unlabelled_copy(batch: Batch, output: Batch, graph: int, label: str) -> Tuple[Batch, Batch]:
    """The batch with ``graph``'s ``label`` made absent (zero weight, zero placeholder), as a
    frame without the key reads; the output is returned unchanged alongside."""
    batch = dict(batch)
    weight = batch[f"{label}_weight"].clone()
    weight[graph] = 0.0
    batch[f"{label}_weight"] = weight
    values = batch[label].clone()
    if label == "energy":
        values[graph] = 0.0
    else:
        values[batch["batch"] == graph] = 0.0
    batch[label] = values
    return batch, output


def drop_graph(batch: Batch, output: Batch, graph: int) -> Tuple[Batch, Batch]:
    """The 2-graph batch with ``graph``'s energy kept out by hand (for the expected values)."""
    keep = 1 - graph
    nodes = batch["batch"] == keep
    sizes = np.diff(batch["ptr"].numpy())
    reduced = {
        "ptr": torch.tensor([0, sizes[keep]]), "batch": torch.zeros(int(sizes[keep]), dtype=torch.long),
        "energy": batch["energy"][[keep]], "forces": batch["forces"][nodes],
        "weight": batch["weight"][[keep]], "energy_weight": batch["energy_weight"][[keep]],
        "forces_weight": batch["forces_weight"][[keep]],
    }
    return reduced, {"energy": output["energy"][[keep]], "forces": output["forces"][nodes]}


ENERGY_LOSSES = {
    "ef": lambda forces_weight: EnergyForcesLoss(3.0, forces_weight),
    "weighted": lambda forces_weight: WeightedEnergyForcesLoss(3.0, forces_weight),
    "huber": lambda forces_weight: WeightedHuberEnergyForcesStressLoss(3.0, forces_weight, 1.0, huber_delta=0.01),
}


@pytest.mark.parametrize("name", sorted(ENERGY_LOSSES))
def test_a_frame_without_energy_adds_nothing_to_the_energy_term(name: str) -> None:
    """Its predicted energy may be anything: the loss is as if the frame's energy term were 0."""
    loss, energy_only = ENERGY_LOSSES[name](10.0), ENERGY_LOSSES[name](0.0)
    batch, output = hand_batch(np.random.default_rng(8), [2, 3], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    missing, _ = unlabelled_copy(batch, output, graph=1, label="energy")
    moved = dict(output, energy=output["energy"] + torch.tensor([0.0, 50.0]))
    assert loss(missing, moved).item() == pytest.approx(loss(missing, output).item(), rel=1e-12)
    kept, kept_output = drop_graph(batch, output, graph=1)
    # The mean still runs over both graphs (as upstream's weighted losses): half the one-graph term.
    assert energy_only(missing, output).item() == pytest.approx(0.5 * energy_only(kept, kept_output).item(), rel=1e-12)


@pytest.mark.parametrize("loss", [EnergyForcesLoss(3.0, 10.0), WeightedForcesLoss(10.0),
                                  WeightedHuberEnergyForcesStressLoss(3.0, 10.0, 1.0, huber_delta=0.01)])
def test_a_frame_without_forces_adds_nothing_to_the_forces_term(loss: torch.nn.Module) -> None:
    batch, output = hand_batch(np.random.default_rng(9), [2, 3], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    missing, _ = unlabelled_copy(batch, output, graph=0, label="forces")
    moved = dict(output, forces=output["forces"] + (batch["batch"] == 0).unsqueeze(-1) * 7.0)
    assert loss(missing, moved).item() == pytest.approx(loss(missing, output).item(), rel=1e-12)
    assert loss(missing, output).item() != pytest.approx(loss(batch, output).item())


def test_huber_stress_term_leaves_out_frames_without_stress() -> None:
    batch, output = hand_batch(np.random.default_rng(10), [2, 3], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    batch["stress"] = torch.zeros(2, 3, 3)
    batch["stress_weight"] = torch.tensor([1.0, 0.0])
    output["stress"] = torch.zeros(2, 3, 3)
    loss = WeightedHuberEnergyForcesStressLoss(0.0, 0.0, 1.0, huber_delta=0.01)
    assert loss(batch, dict(output, stress=output["stress"] + torch.tensor([0.0, 3.0]).view(-1, 1, 1))).item() == 0.0
    assert loss(batch, dict(output, stress=output["stress"] + torch.tensor([3.0, 0.0]).view(-1, 1, 1))).item() > 0.0


@pytest.mark.parametrize(
    "name, cls",
    [("ef", EnergyForcesLoss), ("weighted", WeightedEnergyForcesLoss), ("forces_only", WeightedForcesLoss),
     ("huber", WeightedHuberEnergyForcesStressLoss)],
)
def test_build_loss_maps_names_and_weights(name: str, cls: type) -> None:
    loss = build_loss(name, 2.0, 30.0, 4.0, 5.0, 0.01)
    assert type(loss) is cls
    assert loss.forces_weight == 30.0


def test_build_loss_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="dipole"):
        build_loss("dipole", 1.0, 1.0, 1.0, 1.0, 0.01)


def test_stage_two_of_ef_uses_the_weighted_per_atom_loss_with_the_swa_weights() -> None:
    batch, output = hand_batch(np.random.default_rng(5), [2, 3], [1.0, 2.0], [1.0, 1.0], [1.0, 1.0])
    atoms = np.array([2.0, 3.0])
    de = (batch["energy"] - output["energy"]).numpy()
    df = (batch["forces"] - output["forces"]).numpy()
    weights = batch["weight"].numpy()
    node_weights = weights[batch["batch"].numpy()]
    expected = 1000.0 * np.mean(weights * (de / atoms) ** 2) + 100.0 * np.mean(node_weights[:, None] * df**2)
    loss = build_stage_two_loss("ef", 1000.0, 100.0, 1.0, 1.0)
    assert type(loss) is WeightedEnergyForcesLoss
    assert loss(batch, output).item() == pytest.approx(expected, rel=1e-12)
    total_energy_form = EnergyForcesLoss(1000.0, 100.0)(batch, output).item()
    assert total_energy_form != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "name, cls",
    [("ef", WeightedEnergyForcesLoss), ("weighted", WeightedEnergyForcesLoss), ("huber", WeightedEnergyForcesLoss),
     ("stress", WeightedEnergyForcesStressLoss), ("virials", WeightedEnergyForcesVirialsLoss)],
)
def test_stage_two_loss_per_main_loss_is_upstream_s(name: str, cls: type) -> None:
    loss = build_stage_two_loss(name, 1000.0, 100.0, 10.0, 5.0)
    assert type(loss) is cls
    assert (loss.energy_weight, loss.forces_weight) == (1000.0, 100.0)


def test_stage_two_refuses_forces_only() -> None:
    with pytest.raises(ValueError, match="forces_only"):
        build_stage_two_loss("forces_only", 1000.0, 100.0, 1.0, 1.0)


def test_error_accumulator_matches_numpy_and_skips_unlabelled_graphs() -> None:
    rng = np.random.default_rng(4)
    first = hand_batch(rng, [2, 3], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0])  # graph 1: no energy label
    second = hand_batch(rng, [4], [1.0], [1.0], [0.0])  # no force labels
    accumulator = ErrorAccumulator()
    for batch, output in (first, second):
        accumulator.add(batch, output)
    metrics = accumulator.metrics()

    de1, de1_atom, df1, _ = numpy_parts(*first)
    de2, de2_atom, _, _ = numpy_parts(*second)
    energy = np.array([de1[0], de2[0]])
    energy_atom = np.array([de1_atom[0], de2_atom[0]])
    forces = df1.reshape(-1)
    reference = first[0]["forces"].numpy().reshape(-1)
    expected = {
        "mae_e": np.mean(np.abs(energy)), "rmse_e": np.sqrt(np.mean(energy**2)),
        "mae_e_per_atom": np.mean(np.abs(energy_atom)), "rmse_e_per_atom": np.sqrt(np.mean(energy_atom**2)),
        "mae_f": np.mean(np.abs(forces)), "rmse_f": np.sqrt(np.mean(forces**2)),
        "rel_mae_f": 100 * np.mean(np.abs(forces)) / np.mean(np.abs(reference)),
        "rel_rmse_f": 100 * np.sqrt(np.mean(forces**2)) / np.sqrt(np.mean(reference**2)),
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-12), key


@pytest.mark.parametrize("table_type", sorted(TABLE_COLUMNS))
def test_error_table_has_the_type_s_columns_and_one_row_per_set(table_type: str) -> None:
    metrics = {key: 0.0123 for _, key, _ in TABLE_COLUMNS[table_type]}
    table = error_table(table_type, [("train", metrics), ("valid", {})])
    assert table.field_names == ["config_type"] + [header for header, _, _ in TABLE_COLUMNS[table_type]]
    rows = table.rows
    assert [row[0] for row in rows] == ["train", "valid"]
    assert rows[1][1:] == ["-"] * len(TABLE_COLUMNS[table_type])  # missing metrics shown as '-'


def test_evaluation_summary_names_the_table_type_s_energy_and_force_errors() -> None:
    metrics = {"mae_e": 0.002, "mae_f": 0.03, "rmse_e_per_atom": 0.0004, "rmse_f": 0.05}
    assert evaluation_summary("TotalMAE", 1.5, metrics) == "loss=1.5000, MAE_E=2.0 meV, MAE_F=30.0 meV / A"
    summary = evaluation_summary("PerAtomRMSE", 1.5, metrics)
    assert "RMSE_E_per_atom=0.4 meV / atom" in summary and "RMSE_F=50.0 meV / A" in summary


# --------------------------------------------------------------------------------------
# E0s
# --------------------------------------------------------------------------------------

KNOWN_E0S = {1: -13.6, 6: -1029.5, 8: -2041.3}


def molecule(numbers: Sequence[int], energy: Optional[float], rng: np.random.Generator) -> Configuration:
    return Configuration(atomic_numbers=numbers, positions=rng.normal(size=(len(numbers), 3)), energy=energy)


def test_average_e0s_recover_known_per_element_energies() -> None:
    rng = np.random.default_rng(5)
    configs = []
    for _ in range(12):
        counts = rng.integers(1, 6, size=3)
        numbers = np.repeat([1, 6, 8], counts)
        configs.append(molecule(numbers, sum(KNOWN_E0S[int(z)] for z in numbers), rng))
    configs.append(molecule([1, 6], None, rng))  # unlabelled frames are left out of the fit
    e0s = resolve_e0s("average", configs, {}, AtomicNumberTable([1, 6, 8]))
    assert set(e0s) == {1, 6, 8}
    for z, value in KNOWN_E0S.items():
        assert e0s[z] == pytest.approx(value, abs=1e-8)


def test_data_statistics_leave_out_frames_without_the_label_or_with_zero_weight_for_it() -> None:
    rng = np.random.default_rng(11)
    e0s = {1: -0.5, 8: -13.0}
    labelled = [water(rng) for _ in range(4)]
    no_energy = dataclasses.replace(water(rng), energy=None)
    zero_energy_weight = dataclasses.replace(water(rng), energy=1e6, energy_weight=0.0)
    no_forces = dataclasses.replace(water(rng), forces=None)
    zero_forces_weight = dataclasses.replace(water(rng), forces=np.full((3, 3), 1e3), forces_weight=0.0)
    mixed = labelled + [no_energy, zero_energy_weight, no_forces, zero_forces_weight]
    energies = interaction_energies_per_atom(mixed, e0s)
    assert len(energies) == 6  # the four labelled frames and the two whose forces are missing
    assert np.max(np.abs(energies)) < 10.0
    scale, _ = scale_and_shift("rms_forces_scaling", mixed, e0s)
    forces = np.concatenate([c.forces.reshape(-1) for c in labelled + [no_energy, zero_energy_weight]])
    assert scale == pytest.approx(float(np.sqrt(np.mean(forces**2))), rel=1e-12)
    table = AtomicNumberTable([1, 8])
    assert resolve_e0s("average", mixed, {}, table) == pytest.approx(
        resolve_e0s("average", labelled + [no_forces, zero_forces_weight], {}, table))


def test_explicit_e0s_are_restricted_to_the_model_s_elements() -> None:
    e0s = resolve_e0s({1: -1, 6: -2.5, 8: -3.0, 7: -4.0}, [], {}, AtomicNumberTable([1, 6, 8]))
    assert e0s == {1: -1.0, 6: -2.5, 8: -3.0}
    assert all(isinstance(value, float) for value in e0s.values())


def _write_isolated_atom_file(path: Path) -> None:
    frames = []
    for symbol, z in (("H", 1), ("C", 6), ("O", 8)):
        atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        atom.info.update(REF_energy=KNOWN_E0S[z], config_type="IsolatedAtom")
        frames.append(atom)
    water = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    water.info["REF_energy"] = -2076.0
    water.arrays["REF_forces"] = np.zeros((3, 3))
    methane = Atoms("CH4", positions=np.random.default_rng(6).normal(size=(5, 3)))
    methane.info["REF_energy"] = -1085.0
    methane.arrays["REF_forces"] = np.zeros((5, 3))
    ase.io.write(path, frames + [water, methane], format="extxyz")


def test_isolated_atom_frames_give_the_e0s_and_leave_the_training_set(tmp_path: Path) -> None:
    path = tmp_path / "with_isolated.xyz"
    _write_isolated_atom_file(path)
    isolated, configs = load_from_xyz(str(path), energy_key="REF_energy", forces_key="REF_forces",
                                      extract_atomic_energies=True)
    assert [c.num_atoms for c in configs] == [3, 5]
    e0s = resolve_e0s(None, configs, isolated, AtomicNumberTable([1, 6, 8]))
    assert e0s == pytest.approx(KNOWN_E0S)
    _, kept = load_from_xyz(str(path), energy_key="REF_energy", extract_atomic_energies=True,
                            keep_isolated_atoms=True)
    assert [c.num_atoms for c in kept] == [1, 1, 1, 3, 5]


def test_missing_e0s_are_user_errors_naming_the_elements() -> None:
    table = AtomicNumberTable([1, 6, 8])
    with pytest.raises(UserInputError, match=r"--E0s.*\[8\]"):
        resolve_e0s({1: -1.0, 6: -2.0}, [], {}, table)
    with pytest.raises(UserInputError, match=r"IsolatedAtom.*\[6\].*--E0s=average"):
        resolve_e0s(None, [], {1: -1.0, 8: -2.0}, table)


# --------------------------------------------------------------------------------------
# A tiny model, the optimiser groups and checkpoints
# --------------------------------------------------------------------------------------


def water(rng: np.random.Generator) -> Configuration:
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + rng.normal(scale=0.05, size=(3, 3))
    return Configuration(atomic_numbers=[8, 1, 1], positions=positions, energy=-14.0 + rng.normal(scale=0.1),
                         forces=rng.normal(scale=0.5, size=(3, 3)))


@pytest.fixture(scope="module")
def water_configs() -> List[Configuration]:
    rng = np.random.default_rng(7)
    return [water(rng) for _ in range(4)]


@pytest.fixture(scope="module")
def tiny_template() -> MACE:
    """An 8-channel, scalar-only, two-layer model on H and O, built once per module."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    settings = ModelSettings(hidden_irreps="8x0e", correlation=2, r_max=4.0, max_ell=1, num_radial_basis=4, radial_MLP=[8])
    model = build_model(settings, [1, 8], WATER_E0S, avg_num_neighbors=2.0, scale=1.0, shift=0.0)
    torch.set_default_dtype(dtype)
    return model


@pytest.fixture
def tiny_model(tiny_template: MACE) -> MACE:
    return copy.deepcopy(tiny_template)


def _ids(params) -> set:
    return {id(p) for p in params}


def test_weight_decay_groups_follow_upstream_s_name_rule(tiny_model: MACE) -> None:
    make_radial_basis_trainable(tiny_model)
    groups = {group["name"]: group for group in parameter_groups(tiny_model, weight_decay=0.1)}
    decayed = _ids(p for group in groups.values() if group["weight_decay"] > 0 for p in group["params"])
    expected = _ids(block.linear.weight for block in tiny_model.interactions)
    expected |= _ids(tiny_model.products.parameters())
    assert decayed == expected
    assert groups["interactions_decay"]["weight_decay"] == groups["products"]["weight_decay"] == 0.1
    assert groups["embedding"]["weight_decay"] == groups["readouts"]["weight_decay"] == 0.0
    every = [p for group in groups.values() for p in group["params"]]
    radial = _ids(tiny_model.radial_embedding.parameters())
    assert len(radial) == 1 and not radial & _ids(every)
    assert len(every) == len(_ids(every)) == len(list(tiny_model.parameters())) - len(radial)


def test_adapter_lr_factor_gives_the_adapters_own_groups_at_a_scaled_rate(tiny_model: MACE) -> None:
    model = inject_adapters(tiny_model, "mmea")
    adapter_ids = adapter_parameter_ids(model)
    groups = parameter_groups(model, weight_decay=0.1, adapter_lr_factor=3.0)
    scaled = _ids(p for group in groups if group["lr_factor"] == 3.0 for p in group["params"])
    assert scaled == adapter_ids and len(adapter_ids) > 0
    assert all(group["name"].endswith("_adapters") == (group["lr_factor"] == 3.0) for group in groups)
    lower_order = _ids(p for p in model.products.parameters() if p.requires_grad) - adapter_ids
    assert lower_order and not lower_order & scaled
    unscaled = parameter_groups(model, weight_decay=0.1)
    assert all(group["lr_factor"] == 1.0 for group in unscaled)
    assert _ids(p for g in unscaled for p in g["params"]) == _ids(p for g in groups for p in g["params"])


def test_low_rank_b_factors_train_at_their_own_multiple_of_the_adapter_rate(tiny_model: MACE) -> None:
    model = inject_adapters(tiny_model, "mmea")
    b_ids = _ids(p for name, p in model.named_parameters() if name.split(".")[-1] == "lora_B" or ".lora_B." in name)
    adapter_ids = adapter_parameter_ids(model)
    assert b_ids and b_ids < adapter_ids
    optimizer = build_optimizer(model, OptimizerSettings(lr=0.01, adapter_lr_factor=2.0, low_rank_b_lr_factor=4.0))
    rate_of = {id(p): (round(group["lr"], 12), group["swa_lr_factor"]) for group in optimizer.param_groups for p in group["params"]}
    assert {rate_of[pid] for pid in b_ids} == {(0.08, 8.0)}
    assert {rate_of[pid] for pid in adapter_ids - b_ids} == {(0.02, 2.0)}
    assert {rate_of[pid] for pid in set(rate_of) - adapter_ids} == {(0.01, 1.0)}
    assert all(group["name"].endswith("_low_rank_b") == (group["swa_lr_factor"] == 8.0) for group in optimizer.param_groups)


def test_lr_params_factors_scale_each_block_and_the_swa_stage_ignores_them(tiny_model: MACE) -> None:
    factors = {"embedding_lr_factor": 0.5, "interactions_lr_factor": 2.0, "readouts_lr_factor": 0.0}
    optimizer = build_optimizer(tiny_model, OptimizerSettings(lr=0.01, lr_params_factors=factors))
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates == pytest.approx({
        "embedding": 0.005, "interactions_decay": 0.02, "interactions_no_decay": 0.02, "products": 0.01, "readouts": 0.0,
    })
    assert all(group["swa_lr_factor"] == 1.0 for group in optimizer.param_groups)


@pytest.mark.parametrize("level, frozen", [
    (None, []), (0, []), (-1, []), (1, ["node_embedding"]), (4, ["node_embedding"]),
    (5, ["node_embedding", "interactions"]), (6, ["node_embedding", "interactions", "products"]),
])
def test_freeze_stops_upstream_s_blocks_from_training_adapters_included(tiny_model: MACE, level, frozen) -> None:
    model = inject_adapters(tiny_model, "mmea")
    assert freeze_blocks(model, level) == frozen
    for name in ("node_embedding", "interactions", "products", "readouts"):
        trains = any(p.requires_grad for p in getattr(model, name).parameters())
        assert trains == (name not in frozen), name
    optimised = _ids(p for group in parameter_groups(model, weight_decay=0.0) for p in group["params"])
    assert not optimised & _ids(p for name in frozen for p in getattr(model, name).parameters())


def test_freezing_every_block_is_a_clear_error(tiny_model: MACE) -> None:
    assert freeze_blocks(tiny_model, 7) == ["node_embedding", "interactions", "products", "readouts"]
    with pytest.raises(UserInputError, match="lower --freeze"):
        build_optimizer(tiny_model, OptimizerSettings())


def test_frozen_parameters_get_no_optimiser_group(tiny_model: MACE) -> None:
    for p in tiny_model.readouts.parameters():
        p.requires_grad_(False)
    tiny_model.products[0].linear.weight.requires_grad_(False)
    groups = parameter_groups(tiny_model, weight_decay=0.1)
    assert "readouts" not in [group["name"] for group in groups]
    grouped = _ids(p for group in groups for p in group["params"])
    assert grouped == _ids(p for p in tiny_model.parameters() if p.requires_grad)
    assert id(tiny_model.products[0].linear.weight) not in grouped


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_uses_the_requested_class_with_amsgrad(tiny_model: MACE, name: str, cls: type) -> None:
    optimizer = build_optimizer(tiny_model, OptimizerSettings(optimizer=name, lr=0.003))
    assert type(optimizer) is cls
    assert all(group["lr"] == 0.003 and group["amsgrad"] for group in optimizer.param_groups)
    assert all(group["betas"] == (0.9, 0.999) for group in optimizer.param_groups)


def test_build_optimizer_takes_the_first_moment_decay_from_beta(tiny_model: MACE) -> None:
    optimizer = build_optimizer(tiny_model, OptimizerSettings(beta=0.97))
    assert all(group["betas"] == (0.97, 0.999) for group in optimizer.param_groups)


def _temporaries(folder: Path) -> List[Path]:
    return list(folder.rglob(".*.tmp"))


def test_checkpoint_handler_keeps_the_protected_best_and_the_latest(tmp_path: Path) -> None:
    handler = CheckpointHandler(str(tmp_path), "run_run-1")
    best = handler.save({"epoch": 0}, 0, swa=False)
    handler.save({"epoch": 1}, 1, swa=False, protected=(best,))
    latest = handler.save({"epoch": 2}, 2, swa=True, protected=(best,))
    assert [(epoch, swa) for epoch, swa, _ in handler.list()] == [(0, False), (2, True)]
    assert handler.latest() == latest == tmp_path / "run_run-1_epoch-2_swa.pt"
    assert CheckpointHandler.load(latest, torch.device("cpu")) == {"epoch": 2}
    assert _temporaries(tmp_path) == []


def test_checkpoint_handler_with_keep_keeps_every_file_and_ignores_other_runs(tmp_path: Path) -> None:
    handler = CheckpointHandler(str(tmp_path), "run_run-1", keep=True)
    (tmp_path / "run_run-12_epoch-5.pt").write_bytes(b"other run")
    for epoch in range(3):
        handler.save({"epoch": epoch}, epoch, swa=False)
    assert [epoch for epoch, _, _ in handler.list()] == [0, 1, 2]
    assert (tmp_path / "run_run-12_epoch-5.pt").exists()


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = CheckpointHandler(str(tmp_path), "run_run-1")
    path = handler.save({"epoch": 0, "value": 1}, 0, swa=False)
    real_save = torch.save

    def interrupted_save(obj: object, target: str) -> None:
        real_save({"partial": True}, target)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        handler.save({"epoch": 0, "value": 2}, 0, swa=False)
    monkeypatch.undo()
    assert CheckpointHandler.load(path, torch.device("cpu")) == {"epoch": 0, "value": 1}
    assert _temporaries(tmp_path) == []


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    handler = CheckpointHandler(str(tmp_path), "run_run-1")
    stale = tmp_path / ".run_run-1_epoch-3.pt.abc123.tmp"
    foreign = tmp_path / ".other_run-1_epoch-3.pt.abc123.tmp"
    stale.write_bytes(b"half")
    foreign.write_bytes(b"half")
    assert handler.remove_stale_temporaries() == [stale]
    assert not stale.exists() and foreign.exists()


# --------------------------------------------------------------------------------------
# The Trainer loop
# --------------------------------------------------------------------------------------


def make_trainer(tmp_path: Path, model: MACE, configs: List[Configuration], *flags: str) -> Trainer:
    """The Trainer run_train would build for these flags: 1 training and 1 validation batch."""
    args = parse_args(MODEL_FLAGS + [
        f"--checkpoints_dir={tmp_path / 'checkpoints'}", f"--results_dir={tmp_path / 'results'}", *flags,
    ])
    datasets = Datasets(train=configs[:2], valid=configs[2:4])
    torch.manual_seed(args.seed)
    return build_trainer(args, model, [HeadData("Default", datasets)], RunPaths.from_args(args), torch.device("cpu"), defining_settings(args))


def eval_lines(trainer: Trainer) -> List[dict]:
    lines = [json.loads(line) for line in trainer.results_path.read_text().splitlines()]
    return [line for line in lines if line["mode"] == "eval"]


def valid_loss(trainer: Trainer, epoch: int, averaged: bool) -> float:
    """The validation loss of the current weights, or of their moving average."""
    request = output_request_for(trainer.loss_fn, "PerAtomRMSE")
    with trainer.averaged_parameters() if averaged else nullcontext():
        return evaluate(trainer.model, trainer.valid_loaders["Default"], trainer.stage_loss(epoch), trainer.device, request)[0]


class CountingLoss(torch.nn.Module):
    """Delegates to a loss and counts calls; from call ``nan_from`` on it returns NaN."""

    def __init__(self, inner: torch.nn.Module, nan_from: Optional[int] = None) -> None:
        super().__init__()
        self.inner = inner
        self.nan_from = nan_from
        self.calls = 0

    def forward(self, batch: Batch, output: Batch) -> torch.Tensor:
        self.calls += 1
        loss = self.inner(batch, output)
        return loss * math.nan if self.nan_from is not None and self.calls >= self.nan_from else loss


def test_exponential_lr_decays_the_rate_every_epoch(tmp_path, tiny_model, water_configs) -> None:
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--scheduler=ExponentialLR",
                           "--lr_scheduler_gamma=0.5", "--lr=0.01", "--max_num_epochs=3")
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.ExponentialLR)
    trainer.run()
    lines = eval_lines(trainer)
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    for line in lines:  # the rate each epoch trained at
        assert line["lr"] == pytest.approx(0.01 * 0.5 ** line["epoch"], rel=1e-12)


def test_plateau_scheduler_steps_every_epoch_with_the_last_validation_loss(tmp_path, tiny_model, water_configs) -> None:
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--lr=0.01", "--lr_factor=0.5",
                           "--scheduler_patience=1", "--eval_interval=2")
    trainer.progress.last_valid_loss = 1.0
    rates = []
    for epoch in range(6):
        trainer._step_schedulers_before_epoch(epoch)
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    # Epoch 0 does not step; steps 1..5 all see the same (stale) loss: worse twice -> halve.
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005, 0.0025], rel=1e-12)


def test_patience_stops_training_after_evaluations_without_improvement(
    tmp_path, tiny_model, water_configs, caplog
) -> None:
    # An lr far below float64 resolution leaves the weights, and so the validation loss, unchanged.
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--lr=1e-300", "--patience=2", "--max_num_epochs=10")
    with caplog.at_level(logging.INFO):
        trainer.run()
    lines = eval_lines(trainer)
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert lines[0]["loss"] == lines[1]["loss"] == lines[2]["loss"]
    assert "Stopping: no improvement for 2 evaluations" in caplog.text
    assert trainer.progress.best == {"main": (lines[0]["loss"], 0)}


def test_patience_with_swa_jumps_to_the_swa_stage(tmp_path, tiny_model, water_configs) -> None:
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--lr=1e-300", "--swa_lr=1e-300", "--patience=1",
                           "--swa", "--start_swa=6", "--max_num_epochs=8")
    trainer.run()
    assert [line["epoch"] for line in eval_lines(trainer)] == [0, 1, 6, 7]
    assert set(trainer.progress.best) == {"main", "swa"}


def test_swa_stage_switches_loss_weights_and_learning_rate(tmp_path, tiny_model, water_configs, caplog) -> None:
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--swa", "--start_swa=2", "--max_num_epochs=4",
                           "--lr=0.01", "--swa_lr=0.002", "--energy_weight=1", "--swa_energy_weight=1000",
                           "--forces_weight=10", "--swa_forces_weight=20")
    assert (trainer.loss_fn.energy_weight, trainer.loss_fn.forces_weight) == (1.0, 10.0)
    assert (trainer.swa.loss_fn.energy_weight, trainer.swa.loss_fn.forces_weight) == (1000.0, 20.0)
    trainer.loss_fn = main_loss = CountingLoss(trainer.loss_fn)
    trainer.swa.loss_fn = swa_loss = CountingLoss(trainer.swa.loss_fn)
    with caplog.at_level(logging.INFO):
        trainer.run()
    # Two epochs per stage, each one training and one validation batch.
    assert (main_loss.calls, swa_loss.calls) == (4, 4)
    assert "Epoch 2: starting the SWA stage" in caplog.text
    lr_by_epoch = {line["epoch"]: line["lr"] for line in eval_lines(trainer)}
    assert lr_by_epoch[0] == lr_by_epoch[1] == 0.01
    assert lr_by_epoch[2] == pytest.approx(0.002) and lr_by_epoch[3] == pytest.approx(0.002)
    assert [(epoch, swa) for epoch, swa, _ in trainer.checkpoints.list()][-1] == (3, True)
    assert set(trainer.progress.best) == {"main", "swa"}


@pytest.mark.parametrize("reset", [True, False])
def test_swa_reset_optimizer_restarts_adam_at_the_swa_stage(tmp_path, tiny_model, water_configs, caplog, reset) -> None:
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--swa", "--start_swa=2", "--max_num_epochs=4",
                           f"--swa_reset_optimizer={reset}")
    with caplog.at_level(logging.INFO):
        trainer.run()
    # One training batch per epoch: a reset at epoch 2 leaves the two stage-two steps counted.
    steps = {float(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == ({2.0} if reset else {4.0})
    assert ("Epoch 2: optimiser moment estimates reset" in caplog.text) is reset


def test_swa_lr_schedules_constant_and_cosine() -> None:
    constant = SWASettings(start_epoch=8, loss_fn=torch.nn.Identity(), lr=0.01, end_epoch=12)
    cosine = SWASettings(start_epoch=8, loss_fn=torch.nn.Identity(), lr=0.01, end_epoch=12, schedule="cosine")
    assert [constant.lr_at(e) for e in range(8, 12)] == [0.01] * 4
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert [cosine.lr_at(e) for e in range(8, 12)] == pytest.approx(expected, rel=1e-12)
    assert expected[0] == 0.01 and expected[-1] < 0.002


def test_swa_warmup_raises_the_rate_linearly_then_keeps_the_schedule() -> None:
    warm = SWASettings(start_epoch=8, loss_fn=torch.nn.Identity(), lr=0.01, end_epoch=14, warmup_epochs=3)
    assert [warm.lr_at(e) for e in range(8, 14)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01], rel=1e-12)
    cosine = SWASettings(start_epoch=8, loss_fn=torch.nn.Identity(), lr=0.01, end_epoch=12, schedule="cosine", warmup_epochs=1)
    assert cosine.lr_at(8) == pytest.approx(0.005) and cosine.lr_at(9) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 4)))


def evaluated_rates(tmp_path, tiny_model, water_configs, *flags: str) -> dict:
    """The learning rate of each evaluated epoch of a run with stage two from epoch 2."""
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--swa", "--start_swa=2", "--lr=0.01", *flags)
    trainer.run()
    return {line["epoch"]: line["lr"] for line in eval_lines(trainer)}


def test_swa_warmup_flag_sets_each_stage_two_epoch_rate(tmp_path, tiny_model, water_configs) -> None:
    lr_by_epoch = evaluated_rates(tmp_path, tiny_model, water_configs, "--max_num_epochs=5", "--swa_lr=0.003", "--swa_warmup_epochs=2")
    assert lr_by_epoch[2] == pytest.approx(0.001) and lr_by_epoch[4] == pytest.approx(0.003)


def test_cosine_swa_stage_trains_each_epoch_at_its_scheduled_rate(tmp_path, tiny_model, water_configs) -> None:
    lr_by_epoch = evaluated_rates(tmp_path, tiny_model, water_configs, "--max_num_epochs=4", "--swa_lr=0.002", "--swa_lr_schedule=cosine")
    assert lr_by_epoch[2] == pytest.approx(0.002) and lr_by_epoch[3] == pytest.approx(0.001)


def test_ema_weights_are_evaluated_and_checkpointed(tmp_path, tiny_model, water_configs) -> None:
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--ema", "--ema_decay=0.5", "--max_num_epochs=3")
    trainer.run()
    last = eval_lines(trainer)[-1]
    assert last["loss"] == pytest.approx(valid_loss(trainer, 2, averaged=True), rel=1e-10)
    assert last["loss"] != pytest.approx(valid_loss(trainer, 2, averaged=False), rel=1e-6)
    state = CheckpointHandler.load(trainer.checkpoints.latest(), torch.device("cpu"))
    assert state["ema"] is not None and state["ema"]["decay"] == 0.5


def test_without_ema_the_raw_weights_are_evaluated(tmp_path, tiny_model, water_configs) -> None:
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--max_num_epochs=2")
    assert trainer.ema is None
    trainer.run()
    assert eval_lines(trainer)[-1]["loss"] == pytest.approx(valid_loss(trainer, 1, averaged=False), rel=1e-10)
    assert CheckpointHandler.load(trainer.checkpoints.latest(), torch.device("cpu"))["ema"] is None


def test_nan_loss_stops_training_and_names_the_last_good_checkpoint(tmp_path, tiny_model, water_configs) -> None:
    trainer = make_trainer(tmp_path, tiny_model, water_configs, "--max_num_epochs=3")
    trainer.loss_fn = CountingLoss(trainer.loss_fn, nan_from=3)  # epoch 0 trains and evaluates; epoch 1 fails
    with pytest.raises(TrainingDivergedError, match=r"Epoch 1: the training loss became nan") as error:
        trainer.run()
    assert str(trainer.checkpoints.path(0, swa=False)) in str(error.value)
    assert [line["epoch"] for line in eval_lines(trainer)] == [0]


def test_restore_continues_after_the_checkpointed_epoch(tmp_path, tiny_template, water_configs) -> None:
    first = make_trainer(tmp_path, copy.deepcopy(tiny_template), water_configs, "--ema", "--max_num_epochs=2")
    first.run()
    second = make_trainer(tmp_path, copy.deepcopy(tiny_template), water_configs, "--ema", "--max_num_epochs=3")
    second.restore(CheckpointHandler.load(second.checkpoints.latest(), torch.device("cpu")))
    assert second.progress.epoch == 2 and second.progress.best == first.progress.best
    for mine, theirs in zip(second.model.parameters(), first.model.parameters()):
        assert torch.equal(mine, theirs)
    second.run()
    assert [line["epoch"] for line in eval_lines(second)] == [0, 1, 2]


def test_a_restored_run_shuffles_and_ends_bitwise_as_the_uninterrupted_one(tmp_path, tiny_template) -> None:
    """Three batches per epoch: the restored shuffling state decides which frames train together."""
    rng = np.random.default_rng(11)
    configs = [water(rng) for _ in range(8)]

    def trainer_in(folder: Path) -> Trainer:
        args = parse_args(MODEL_FLAGS + [
            f"--checkpoints_dir={folder / 'checkpoints'}", f"--results_dir={folder / 'results'}",
            "--ema", "--max_num_epochs=3", "--keep_checkpoints",
        ])
        datasets = Datasets(train=configs[:6], valid=configs[6:])
        return build_trainer(
            args, copy.deepcopy(tiny_template), [HeadData("Default", datasets)], RunPaths.from_args(args), torch.device("cpu"),
            defining_settings(args),
        )

    whole = trainer_in(tmp_path / "whole")
    whole.run()
    resumed = trainer_in(tmp_path / "resumed")
    resumed.restore(CheckpointHandler.load(whole.checkpoints.path(0, swa=False), torch.device("cpu")))
    resumed.run()
    final = CheckpointHandler.load(whole.checkpoints.latest(), torch.device("cpu"))
    assert final["shuffle_generator"].dtype == torch.uint8
    assert torch.equal(shuffle_state(resumed.train_loader), final["shuffle_generator"])
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, whole.model.state_dict()[key]), key
    assert [line["loss"] for line in eval_lines(resumed)] == [line["loss"] for line in eval_lines(whole)[1:]]


def test_a_non_finite_prediction_in_an_error_table_names_the_set_and_configuration(tiny_model, water_configs) -> None:
    overlapping = copy.deepcopy(water_configs[0])
    overlapping.positions[1] = overlapping.positions[0]  # a zero-length edge
    sets = [("train", water_configs[:2]), ("test", [water_configs[1], overlapping])]
    loss = EnergyForcesLoss(energy_weight=1.0, forces_weight=1.0)
    request = output_request_for(loss, "PerAtomRMSE")
    with pytest.raises(UserInputError, match=r"Error table of the test set: .*non-finite.*configuration 1"):
        evaluate_sets(tiny_model, sets, loss, 2, torch.device("cpu"), request)
