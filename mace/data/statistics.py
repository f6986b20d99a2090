"""Data statistics that set up a model: E0s, average neighbour count, energy scale and shift."""
import ast
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from mace.data.configuration import Configuration, compute_average_e0s, has_label
from mace.data.neighborhood import get_neighborhood
from mace.core.atomic_numbers import AtomicNumberTable
from mace.core.errors import UserInputError


def resolve_e0s(
    spec: Union[None, str, Dict[int, float]],
    train: Sequence[Configuration],
    isolated_atom_e0s: Dict[int, float],
    table: AtomicNumberTable,
) -> Dict[int, float]:
    """E0 per element: least squares ('average'), an explicit dict, or isolated-atom frames."""
    if spec == "average":
        e0s = compute_average_e0s(train, table)
        logging.info("E0s from least squares over the training set: %s", format_e0s(e0s))
        return e0s
    if isinstance(spec, dict):
        source, e0s = "--E0s", {int(z): float(e) for z, e in spec.items()}
    else:
        source, e0s = "the IsolatedAtom frames of the training file", dict(isolated_atom_e0s)
    missing = [z for z in table.zs if z not in e0s]
    if missing:
        hint = "" if spec is not None else " (pass --E0s=average or a dict of energies)"
        raise UserInputError(f"{source} give(s) no E0 for atomic numbers {missing}{hint}")
    logging.info("E0s from %s: %s", source, format_e0s(e0s))
    return {z: e0s[z] for z in table.zs}


def format_e0s(e0s: Dict[int, float]) -> str:
    return ", ".join(f"{z}: {e:.4f}" for z, e in sorted(e0s.items()))


def neighbour_counts(configs: Iterable[Configuration], cutoff: float) -> Tuple[int, int]:
    """(edges within the cutoff, atoms) summed over ``configs``: integers, so the counts of
    parts of a set add up to exactly those of the whole."""
    edges = atoms = 0
    for config in configs:
        edge_index, _, _, _ = get_neighborhood(config.positions, cutoff, config.pbc, config.cell)
        edges += edge_index.shape[1]
        atoms += config.num_atoms
    return edges, atoms


def average_from_counts(edges: int, atoms: int) -> float:
    return edges / max(atoms, 1)


def average_num_neighbors(configs: Iterable[Configuration], cutoff: float) -> float:
    """Mean number of neighbours within the cutoff over all atoms (the message normaliser)."""
    return average_from_counts(*neighbour_counts(configs, cutoff))


def interaction_energies_per_atom(configs: Sequence[Configuration], e0s: Dict[int, float]) -> np.ndarray:
    """(E - sum of E0s) / n_atoms of each frame whose energy trains (see :func:`has_label`)."""
    return np.array(
        [
            (c.energy - sum(e0s[int(z)] for z in c.atomic_numbers)) / c.num_atoms
            for c in configs
            if has_label(c, "energy")
        ]
    )


def scale_and_shift(
    scaling: str, configs: Sequence[Configuration], e0s: Dict[int, float]
) -> Tuple[float, float]:
    """(scale, shift) of the interaction energy per atom, as --scaling chooses.

    rms_forces_scaling: shift = mean interaction energy per atom, scale = RMS force component;
    std_scaling: shift and scale = mean and std of the interaction energy per atom. Frames
    without the label (or with zero weight for it) are left out.
    """
    if scaling == "no_scaling":
        return 1.0, 0.0
    energies = interaction_energies_per_atom(configs, e0s)
    shift = float(np.mean(energies)) if energies.size else 0.0
    if scaling == "std_scaling":
        scale = float(np.std(energies)) if energies.size else 1.0
    elif scaling == "rms_forces_scaling":
        forces: List[np.ndarray] = [c.forces.reshape(-1) for c in configs if has_label(c, "forces")]
        scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2))) if forces else 1.0
    else:
        raise UserInputError(f"--scaling {scaling!r} is not one of std_scaling, rms_forces_scaling, no_scaling")
    if not np.isfinite(scale) or scale < 1e-12:
        logging.warning("The %s scale is %g; using 1.0 instead", scaling, scale)
        scale = 1.0
    return scale, shift


# --------------------------------------------------------------------------------------
# The statistics file of preprocessed data (upstream's statistics.json)
# --------------------------------------------------------------------------------------

STATISTICS_KEYS = ("atomic_energies", "avg_num_neighbors", "mean", "std", "atomic_numbers")


@dataclass(frozen=True)
class DataStatistics:
    """What a model takes from its training data, computed once when the data is
    preprocessed: E0 per element, the neighbour normaliser, the energy shift (``mean``) and
    scale (``std``), the elements and the cutoff the neighbours were counted with."""

    atomic_energies: Dict[int, float]
    avg_num_neighbors: float
    mean: float
    std: float
    atomic_numbers: List[int]
    r_max: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        """Upstream's JSON: E0s and elements as Python literals in strings (repr keeps every
        float exact), the rest as numbers."""
        return {
            "atomic_energies": str({int(z): float(e) for z, e in self.atomic_energies.items()}),
            "avg_num_neighbors": float(self.avg_num_neighbors),
            "mean": float(self.mean),
            "std": float(self.std),
            "atomic_numbers": str([int(z) for z in self.atomic_numbers]),
            "r_max": None if self.r_max is None else float(self.r_max),
        }


def write_statistics(path: Union[str, Path], statistics: DataStatistics) -> None:
    """The JSON file of ``statistics`` (written as is: callers write it to a temporary)."""
    Path(path).write_text(json.dumps(statistics.to_json(), indent=2) + "\n", encoding="utf-8")


# numpy scalars in a literal, as str() of a dict writes them under numpy 2: np.float64(-1.5)
NUMPY_SCALAR = re.compile(r"\b(?:np|numpy)\.\w+\(([^()]*)\)")


def _literal_or_value(value: Any, path: Path, key: str) -> Any:
    """Upstream writes the E0s and the elements as Python literals inside strings (its E0s
    as ``{np.int64(1): np.float64(-13.6)}`` under numpy 2, which are read as the numbers)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(NUMPY_SCALAR.sub(r"\1", value))
    except (ValueError, SyntaxError):
        raise UserInputError(f"statistics file {path}: '{key}' is not a valid literal: {value!r}") from None


def _statistics_e0s(value: Any, path: Path) -> Dict[int, float]:
    if isinstance(value, str) and value.endswith(".json"):  # upstream allows a file of E0s here
        e0s_path = Path(value)  # as upstream: relative to the working folder
        try:
            value = json.loads(e0s_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserInputError(f"statistics file {path}: cannot read its E0s file {e0s_path}: {error}") from None
    value = _literal_or_value(value, path, "atomic_energies")
    try:
        e0s = {int(z): float(energy) for z, energy in dict(value).items()}
    except (TypeError, ValueError):
        raise UserInputError(f"statistics file {path}: 'atomic_energies' must map atomic numbers to energies") from None
    if not all(math.isfinite(energy) for energy in e0s.values()):
        raise UserInputError(f"statistics file {path}: 'atomic_energies' holds NaN or inf")
    return e0s


def _statistics_number(raw: Dict[str, Any], key: str, path: Path) -> float:
    try:
        value = float(raw[key])
    except (TypeError, ValueError):
        raise UserInputError(f"statistics file {path}: '{key}' is {raw[key]!r}, not a number") from None
    if not math.isfinite(value):
        raise UserInputError(f"statistics file {path}: '{key}' is {value}")
    return value


def read_statistics(path: Union[str, Path]) -> DataStatistics:
    """The statistics file ``preprocess_data`` writes, ours or upstream's."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserInputError(f"cannot read the statistics file {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise UserInputError(f"statistics file {path} is not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"statistics file {path} must hold a JSON object")
    missing = [key for key in STATISTICS_KEYS if key not in raw]
    if missing:
        raise UserInputError(f"statistics file {path} lacks {', '.join(missing)}")
    zs = _literal_or_value(raw["atomic_numbers"], path, "atomic_numbers")
    if not isinstance(zs, (list, tuple)) or not all(isinstance(z, int) for z in zs):
        raise UserInputError(f"statistics file {path}: 'atomic_numbers' must be a list of integers")
    r_max = raw.get("r_max")
    return DataStatistics(
        atomic_energies=_statistics_e0s(raw["atomic_energies"], path),
        avg_num_neighbors=_statistics_number(raw, "avg_num_neighbors", path),
        mean=_statistics_number(raw, "mean", path),
        std=_statistics_number(raw, "std", path),
        atomic_numbers=sorted(int(z) for z in zs),
        r_max=None if r_max is None else _statistics_number(raw, "r_max", path),
    )

