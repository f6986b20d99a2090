"""Training losses over a batch (weighted by configuration and per-label weights).

Conventions as upstream: 'ef' compares total energies, the weighted losses compare
energies per atom; forces always per component; stress per component; virials per atom.
A label whose weight is zero (absent from the frame, see ``Configuration``) never enters a
loss: the weighted terms multiply by that weight, and the unweighted ones ('ef' energies,
'huber') leave such labels out through :func:`labelled`. Means run over the whole batch.
"""
from typing import Dict, Optional

import torch

Batch = Dict[str, torch.Tensor]
Output = Dict[str, Optional[torch.Tensor]]


def _atoms_per_graph(batch: Batch) -> torch.Tensor:
    return (batch["ptr"][1:] - batch["ptr"][:-1]).to(batch["energy"].dtype)


def _per_node(batch: Batch, per_graph: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-graph weight to nodes, shaped [n_nodes, 1] for force components."""
    return per_graph[batch["batch"]].unsqueeze(-1)


def labelled(batch: Batch, label: str) -> torch.Tensor:
    """1 for each graph whose ``label`` trains (weight above zero), else 0; per graph."""
    return (batch[f"{label}_weight"] > 0).to(batch["energy"].dtype)


def energy_squared_error(batch: Batch, output: Output, per_atom: bool, weighted: bool) -> torch.Tensor:
    """Mean squared energy error; ``weighted``: times configuration and energy weights,
    else unweighted over the graphs that have an energy."""
    difference = batch["energy"] - output["energy"]
    if per_atom:
        difference = difference / _atoms_per_graph(batch)
    weights = batch["weight"] * batch["energy_weight"] if weighted else labelled(batch, "energy")
    return torch.mean(weights * difference.square())


def forces_squared_error(batch: Batch, output: Output) -> torch.Tensor:
    weights = _per_node(batch, batch["weight"] * batch["forces_weight"])
    return torch.mean(weights * (batch["forces"] - output["forces"]).square())


def stress_squared_error(batch: Batch, output: Output) -> torch.Tensor:
    weights = (batch["weight"] * batch["stress_weight"]).view(-1, 1, 1)
    return torch.mean(weights * (batch["stress"] - output["stress"]).square())


def virials_squared_error(batch: Batch, output: Output) -> torch.Tensor:
    weights = (batch["weight"] * batch["virials_weight"]).view(-1, 1, 1)
    atoms = _atoms_per_graph(batch).view(-1, 1, 1)
    return torch.mean(weights * ((batch["virials"] - output["virials"]) / atoms).square())


class EnergyForcesLoss(torch.nn.Module):
    """'ef': w_E * mean (E - E_ref)^2 + w_F * mean |F - F_ref|^2 (configuration weights apply to forces)."""

    def __init__(self, energy_weight: float, forces_weight: float) -> None:
        super().__init__()
        self.energy_weight = energy_weight
        self.forces_weight = forces_weight

    def forward(self, batch: Batch, output: Output) -> torch.Tensor:
        return self.energy_weight * energy_squared_error(
            batch, output, per_atom=False, weighted=False
        ) + self.forces_weight * forces_squared_error(batch, output)


class WeightedEnergyForcesLoss(EnergyForcesLoss):
    """'weighted': per-atom energy errors, both terms weighted per configuration."""

    def forward(self, batch: Batch, output: Output) -> torch.Tensor:
        return self.energy_weight * energy_squared_error(
            batch, output, per_atom=True, weighted=True
        ) + self.forces_weight * forces_squared_error(batch, output)


class WeightedForcesLoss(torch.nn.Module):
    """'forces_only': energies do not enter the loss."""

    def __init__(self, forces_weight: float) -> None:
        super().__init__()
        self.forces_weight = forces_weight

    def forward(self, batch: Batch, output: Output) -> torch.Tensor:
        return self.forces_weight * forces_squared_error(batch, output)


class WeightedEnergyForcesStressLoss(EnergyForcesLoss):
    """'stress': the weighted loss plus w_S * mean |sigma - sigma_ref|^2."""

    def __init__(self, energy_weight: float, forces_weight: float, stress_weight: float) -> None:
        super().__init__(energy_weight, forces_weight)
        self.stress_weight = stress_weight

    def forward(self, batch: Batch, output: Output) -> torch.Tensor:
        return (
            self.energy_weight * energy_squared_error(batch, output, per_atom=True, weighted=True)
            + self.forces_weight * forces_squared_error(batch, output)
            + self.stress_weight * stress_squared_error(batch, output)
        )


class WeightedEnergyForcesVirialsLoss(EnergyForcesLoss):
    """'virials': the weighted loss plus w_V * mean |(W - W_ref) / n_atoms|^2."""

    def __init__(self, energy_weight: float, forces_weight: float, virials_weight: float) -> None:
        super().__init__(energy_weight, forces_weight)
        self.virials_weight = virials_weight

    def forward(self, batch: Batch, output: Output) -> torch.Tensor:
        return (
            self.energy_weight * energy_squared_error(batch, output, per_atom=True, weighted=True)
            + self.forces_weight * forces_squared_error(batch, output)
            + self.virials_weight * virials_squared_error(batch, output)
        )


class WeightedHuberEnergyForcesStressLoss(torch.nn.Module):
    """'huber': Huber losses (robust to outliers) on per-atom energies, forces and stress."""

    def __init__(self, energy_weight: float, forces_weight: float, stress_weight: float, huber_delta: float) -> None:
        super().__init__()
        self.energy_weight = energy_weight
        self.forces_weight = forces_weight
        self.stress_weight = stress_weight
        self.huber = torch.nn.HuberLoss(reduction="mean", delta=huber_delta)

    def forward(self, batch: Batch, output: Output) -> torch.Tensor:
        """Unweighted, as upstream 0.3.5, but labels a graph lacks count as exact (zero error)."""
        atoms = _atoms_per_graph(batch)
        energy_mask = labelled(batch, "energy")
        loss = self.energy_weight * self.huber(
            energy_mask * batch["energy"] / atoms, energy_mask * output["energy"] / atoms
        )
        forces_mask = _per_node(batch, labelled(batch, "forces"))
        loss = loss + self.forces_weight * self.huber(forces_mask * batch["forces"], forces_mask * output["forces"])
        if output.get("stress") is not None:
            stress_mask = labelled(batch, "stress").view(-1, 1, 1)
            loss = loss + self.stress_weight * self.huber(stress_mask * batch["stress"], stress_mask * output["stress"])
        return loss


def _huber(difference: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Elementwise Huber loss of ``difference`` with a delta that may differ per element."""
    size = difference.abs()
    return torch.where(size <= delta, 0.5 * difference.square(), delta * (size - 0.5 * delta))


# Upstream's conditional Huber loss on forces: the larger an atom's reference force (eV/A),
# the smaller the delta, by these factors of --huber_delta over [0, 100), [100, 200), [200, 300), beyond.
FORCE_HUBER_BOUNDS = (100.0, 200.0, 300.0)
FORCE_HUBER_FACTORS = (1.0, 0.7, 0.4, 0.1)


def conditional_huber_forces(reference: torch.Tensor, predicted: torch.Tensor, huber_delta: float) -> torch.Tensor:
    bounds = torch.tensor(FORCE_HUBER_BOUNDS, dtype=reference.dtype, device=reference.device)
    factors = torch.tensor(FORCE_HUBER_FACTORS, dtype=reference.dtype, device=reference.device)
    bucket = torch.bucketize(torch.linalg.norm(reference, dim=-1), bounds, right=True)
    delta = (huber_delta * factors[bucket]).unsqueeze(-1)
    return torch.mean(_huber(predicted - reference, delta))


class UniversalLoss(torch.nn.Module):
    """'universal' (upstream's loss of multi-head replay fine-tuning): Huber losses on per-atom
    energies, forces (delta shrinking with the reference force, :func:`conditional_huber_forces`)
    and stress, each label scaled by its per-frame weight inside the Huber function, as upstream
    (the configuration weight does not enter)."""

    def __init__(self, energy_weight: float, forces_weight: float, stress_weight: float, huber_delta: float) -> None:
        super().__init__()
        self.energy_weight = energy_weight
        self.forces_weight = forces_weight
        self.stress_weight = stress_weight
        self.huber_delta = huber_delta

    def forward(self, batch: Batch, output: Output) -> torch.Tensor:
        delta = torch.tensor(self.huber_delta, dtype=batch["energy"].dtype, device=batch["energy"].device)
        atoms = _atoms_per_graph(batch)
        energy_weights = batch["energy_weight"]
        energy = torch.mean(_huber(energy_weights * (output["energy"] - batch["energy"]) / atoms, delta))
        forces_weights = _per_node(batch, batch["forces_weight"])
        forces = conditional_huber_forces(forces_weights * batch["forces"], forces_weights * output["forces"], self.huber_delta)
        loss = self.energy_weight * energy + self.forces_weight * forces
        if output.get("stress") is not None:
            stress_weights = batch["stress_weight"].view(-1, 1, 1)
            loss = loss + self.stress_weight * torch.mean(_huber(stress_weights * (output["stress"] - batch["stress"]), delta))
        return loss


def needs_stress(loss_fn: torch.nn.Module) -> bool:
    return isinstance(loss_fn, (WeightedEnergyForcesStressLoss, WeightedHuberEnergyForcesStressLoss, UniversalLoss))


def needs_virials(loss_fn: torch.nn.Module) -> bool:
    return isinstance(loss_fn, WeightedEnergyForcesVirialsLoss)


def build_loss(name: str, energy_weight: float, forces_weight: float, stress_weight: float,
               virials_weight: float, huber_delta: float) -> torch.nn.Module:
    """The loss that --loss names, with the given label weights (main or SWA stage)."""
    if name == "ef":
        return EnergyForcesLoss(energy_weight, forces_weight)
    if name == "weighted":
        return WeightedEnergyForcesLoss(energy_weight, forces_weight)
    if name == "forces_only":
        return WeightedForcesLoss(forces_weight)
    if name == "stress":
        return WeightedEnergyForcesStressLoss(energy_weight, forces_weight, stress_weight)
    if name == "virials":
        return WeightedEnergyForcesVirialsLoss(energy_weight, forces_weight, virials_weight)
    if name == "huber":
        return WeightedHuberEnergyForcesStressLoss(energy_weight, forces_weight, stress_weight, huber_delta)
    if name == "universal":
        return UniversalLoss(energy_weight, forces_weight, stress_weight, huber_delta)
    raise ValueError(f"unsupported loss {name!r}")


def build_stage_two_loss(name: str, energy_weight: float, forces_weight: float, stress_weight: float,
                         virials_weight: float, huber_delta: float = 0.01) -> torch.nn.Module:
    """The SWA-stage loss for --loss ``name``, with the --swa_* weights, as upstream chooses it.

    Only 'stress', 'virials' and 'universal' keep their own form; every other loss ('ef', 'weighted',
    'huber', ...) becomes the weighted per-atom energy + forces loss. For 'ef' this matters:
    its total-energy error times --swa_energy_weight (1000) would weigh energies n_atoms^2
    times more than upstream does. 'forces_only' has no energy term to switch to.
    """
    if name == "forces_only":
        raise ValueError("--swa cannot be used with --loss=forces_only: the SWA stage weighs energies")
    if name == "stress":
        return WeightedEnergyForcesStressLoss(energy_weight, forces_weight, stress_weight)
    if name == "virials":
        return WeightedEnergyForcesVirialsLoss(energy_weight, forces_weight, virials_weight)
    if name == "universal":
        return UniversalLoss(energy_weight, forces_weight, stress_weight, huber_delta)
    return WeightedEnergyForcesLoss(energy_weight, forces_weight)
