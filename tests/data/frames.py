"""Small labelled extxyz data made in the test: molecules and periodic cells of H, C and O,
with every label the data layer reads, some frames without a label, two config_types and
per-frame weights, so a round trip through HDF5 has every field to get wrong."""
from pathlib import Path
from typing import List

import ase.io
import numpy as np
from ase import Atoms

KEYS = dict(energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress", virials_key="REF_virials")


def make_frames(count: int, seed: int = 0) -> List[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        size = int(rng.integers(3, 7))
        periodic = index % 3 == 2
        atoms = Atoms(
            numbers=rng.choice([1, 6, 8], size=size),
            positions=rng.uniform(0.0, 3.0, (size, 3)),
            cell=np.diag(rng.uniform(4.0, 5.0, 3)) if periodic else np.zeros((3, 3)),
            pbc=periodic,
        )
        atoms.info["config_type"] = "bulk" if periodic else "molecule"
        if index != 4:  # one frame without an energy: it trains with zero energy weight
            atoms.info["REF_energy"] = float(rng.normal(-100.0, 5.0))
        atoms.arrays["REF_forces"] = rng.normal(0.0, 1.0, (size, 3))
        if periodic:
            atoms.info["REF_stress"] = rng.normal(0.0, 0.1, 6)
            atoms.info["REF_virials"] = rng.normal(0.0, 0.1, (3, 3)).reshape(-1)
        if index == 1:
            atoms.info["config_weight"] = 2.5
            atoms.info["config_forces_weight"] = 0.5
        frames.append(atoms)
    return frames


def write_xyz(path: Path, frames: List[Atoms]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, frames, format="extxyz")
    return str(path)
