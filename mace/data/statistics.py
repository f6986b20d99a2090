"""Data statistics that set up a model: E0s, average neighbour count, energy scale and shift."""
import logging
from typing import Dict, List, Sequence, Tuple, Union

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
        e0s = compute_average_e0s(list(train), table)
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


def average_num_neighbors(configs: Sequence[Configuration], cutoff: float) -> float:
    """Mean number of neighbours within the cutoff over all atoms (the message normaliser)."""
    edges = atoms = 0
    for config in configs:
        edge_index, _, _, _ = get_neighborhood(config.positions, cutoff, config.pbc, config.cell)
        edges += edge_index.shape[1]
        atoms += config.num_atoms
    return edges / max(atoms, 1)


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
