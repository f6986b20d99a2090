"""Error metrics of predictions against labels, and the final prettytable error tables."""
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from prettytable import PrettyTable

Batch = Dict[str, torch.Tensor]


@dataclass
class ErrorAccumulator:
    """Collects labelled and predicted values batch by batch (labels with zero weight are skipped)."""

    energy_errors: List[np.ndarray] = field(default_factory=list)
    atoms_per_graph: List[np.ndarray] = field(default_factory=list)
    forces_errors: List[np.ndarray] = field(default_factory=list)
    forces_reference: List[np.ndarray] = field(default_factory=list)
    stress_errors: List[np.ndarray] = field(default_factory=list)
    virials_errors: List[np.ndarray] = field(default_factory=list)

    def add(self, batch: Batch, output: Dict[str, Optional[torch.Tensor]]) -> None:
        has_energy = _numpy(batch["energy_weight"]) > 0
        atoms = _numpy(batch["ptr"][1:] - batch["ptr"][:-1])
        self.energy_errors.append((_numpy(output["energy"]) - _numpy(batch["energy"]))[has_energy])
        self.atoms_per_graph.append(atoms[has_energy])
        if output.get("forces") is not None:
            has_forces = _numpy(batch["forces_weight"])[_numpy(batch["batch"])] > 0
            self.forces_errors.append((_numpy(output["forces"]) - _numpy(batch["forces"]))[has_forces])
            self.forces_reference.append(_numpy(batch["forces"])[has_forces])
        for key, store in (("stress", self.stress_errors), ("virials", self.virials_errors)):
            if output.get(key) is not None:
                present = _numpy(batch[f"{key}_weight"]) > 0
                errors = _numpy(output[key]) - _numpy(batch[key])
                if key == "virials":
                    errors = errors / atoms.reshape(-1, 1, 1)
                store.append(errors[present])

    @classmethod
    def combined(cls, parts: Sequence["ErrorAccumulator"]) -> "ErrorAccumulator":
        """One accumulator holding every part's errors (the shards of a data-parallel evaluation)."""
        whole = cls()
        for item in fields(cls):
            setattr(whole, item.name, [array for part in parts for array in getattr(part, item.name)])
        return whole

    def metrics(self) -> Dict[str, float]:
        """MAE/RMSE of total and per-atom energies (eV), forces (eV/A), stress, relative force errors (%)."""
        result: Dict[str, float] = {}
        energy = _concat(self.energy_errors)
        if energy.size:
            per_atom = energy / _concat(self.atoms_per_graph)
            result.update(mae_rmse("e", energy))
            result.update(mae_rmse("e_per_atom", per_atom))
        forces = _concat(self.forces_errors)
        if forces.size:
            result.update(mae_rmse("f", forces))
            reference = _concat(self.forces_reference)
            result["rel_mae_f"] = 100.0 * result["mae_f"] / max(float(np.mean(np.abs(reference))), 1e-30)
            result["rel_rmse_f"] = 100.0 * result["rmse_f"] / max(float(np.sqrt(np.mean(reference**2))), 1e-30)
        for name, errors in (("stress", self.stress_errors), ("virials_per_atom", self.virials_errors)):
            values = _concat(errors)
            if values.size:
                result.update(mae_rmse(name, values))
        return result


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)


def mae_rmse(name: str, errors: np.ndarray) -> Dict[str, float]:
    """``mae_<name>`` and ``rmse_<name>`` of an array of errors (any shape), in the errors' unit."""
    return {f"mae_{name}": float(np.mean(np.abs(errors))), f"rmse_{name}": float(np.sqrt(np.mean(errors**2)))}


# Each table type: columns as (header, metric key, factor to the displayed unit).
TABLE_COLUMNS: Dict[str, List[Tuple[str, str, float]]] = {
    "TotalMAE": [("MAE E / meV", "mae_e", 1e3), ("MAE F / meV / A", "mae_f", 1e3), ("relative F MAE %", "rel_mae_f", 1.0)],
    "TotalRMSE": [("RMSE E / meV", "rmse_e", 1e3), ("RMSE F / meV / A", "rmse_f", 1e3), ("relative F RMSE %", "rel_rmse_f", 1.0)],
    "PerAtomMAE": [("MAE E / meV / atom", "mae_e_per_atom", 1e3), ("MAE F / meV / A", "mae_f", 1e3), ("relative F MAE %", "rel_mae_f", 1.0)],
    "PerAtomRMSE": [("RMSE E / meV / atom", "rmse_e_per_atom", 1e3), ("RMSE F / meV / A", "rmse_f", 1e3), ("relative F RMSE %", "rel_rmse_f", 1.0)],
    "PerAtomRMSEstressvirials": [
        ("RMSE E / meV / atom", "rmse_e_per_atom", 1e3),
        ("RMSE F / meV / A", "rmse_f", 1e3),
        ("relative F RMSE %", "rel_rmse_f", 1.0),
        ("RMSE Stress / meV / A^3", "rmse_stress", 1e3),
        ("RMSE Virials / meV / atom", "rmse_virials_per_atom", 1e3),
    ],
}


def format_metric(metrics: Dict[str, float], key: str, factor: float) -> str:
    return f"{metrics[key] * factor:.1f}" if key in metrics else "-"


def error_table(table_type: str, rows: Sequence[Tuple[str, Dict[str, float]]]) -> PrettyTable:
    """One row per data set (train, valid, each test set), columns chosen by ``table_type``."""
    columns = TABLE_COLUMNS[table_type]
    table = PrettyTable()
    table.field_names = ["config_type"] + [header for header, _, _ in columns]
    for name, metrics in rows:
        table.add_row([name] + [format_metric(metrics, key, factor) for _, key, factor in columns])
    return table


def evaluation_summary(table_type: str, loss: float, metrics: Dict[str, float]) -> str:
    """The per-evaluation log fragment: loss and the table type's energy and force errors."""
    names = {"mae_e": "MAE_E", "rmse_e": "RMSE_E", "mae_e_per_atom": "MAE_E_per_atom",
             "rmse_e_per_atom": "RMSE_E_per_atom", "mae_f": "MAE_F", "rmse_f": "RMSE_F"}
    parts = [f"loss={loss:.4f}"]
    for _, key, factor in TABLE_COLUMNS[table_type][:2]:
        unit = "meV / A" if key.endswith("_f") else ("meV / atom" if "per_atom" in key else "meV")
        parts.append(f"{names[key]}={format_metric(metrics, key, factor)} {unit}")
    return ", ".join(parts)
