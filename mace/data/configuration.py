"""Labelled structures read from extended XYZ files, train/valid splits and reference energies.

Everything a user can get wrong here (missing file, malformed frame, NaN or inf label,
unknown element, a label key that no frame of a file has) raises
:class:`~mace.core.errors.UserInputError` naming the file, frame index and key, so the
command line can report it in one sentence. A label that only some frames lack is not an
error: as upstream, those frames get zero weight for it (:func:`check_labels` warns once
per file and label).
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import ase.io
import numpy as np
from ase import Atoms

from mace.core.atomic_numbers import AtomicNumberTable
from mace.core.errors import UserInputError

T = TypeVar("T")

DEFAULT_CONFIG_TYPE = "Default"
DEFAULT_HEAD = "Default"
ISOLATED_ATOM_CONFIG_TYPE = "IsolatedAtom"
LABELS = ("energy", "forces", "stress", "virials")


def to_3x3(values: Any, name: str) -> np.ndarray:
    """Stress/virial as a 3x3 matrix from 3x3, 9 values, or Voigt-6 (xx, yy, zz, yz, xz, xy)."""
    array = np.asarray(values, dtype=float)
    if array.size == 9:
        return array.reshape(3, 3)
    if array.size == 6:
        xx, yy, zz, yz, xz, xy = array.ravel()
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise UserInputError(f"'{name}' has {array.size} values; expected 6 (Voigt) or 9 (3x3).")


@dataclass
class Configuration:
    """One structure with its optional labels and the loss weights that go with them.

    A weight of a label that is absent is forced to 0 so that the loss ignores the zero
    placeholder the graph carries instead.
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None
    virials: Optional[np.ndarray] = None
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: Tuple[bool, bool, bool] = (False, False, False)
    weight: float = 1.0
    energy_weight: float = 1.0
    forces_weight: float = 1.0
    stress_weight: float = 1.0
    virials_weight: float = 1.0
    config_type: str = DEFAULT_CONFIG_TYPE

    def __post_init__(self) -> None:
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=float).reshape(-1, 3)
        self.cell = np.asarray(self.cell, dtype=float).reshape(3, 3)
        self.pbc = tuple(bool(p) for p in self.pbc)
        if self.stress is not None:
            self.stress = to_3x3(self.stress, "stress")
        if self.virials is not None:
            self.virials = to_3x3(self.virials, "virials")
        self._zero_weights_of_absent_labels()

    def _zero_weights_of_absent_labels(self) -> None:
        for label in ("energy", "forces", "stress", "virials"):
            if getattr(self, label) is None:
                setattr(self, f"{label}_weight", 0.0)

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)

    # Upstream's Configuration keeps its labels in two dicts and names its head; scripts
    # written against it read these. Views of the fields above, not a second store.

    @property
    def properties(self) -> Dict[str, Any]:
        """{label: value} of energy, forces, stress (3x3) and virials (3x3); None where absent."""
        return {label: getattr(self, label) for label in LABELS}

    @property
    def property_weights(self) -> Dict[str, float]:
        """{label: loss weight} of the same labels (0 where a label is absent)."""
        return {label: getattr(self, f"{label}_weight") for label in LABELS}

    @property
    def head(self) -> str:
        """The head the labels belong to; this fork's models have one, upstream's "Default"."""
        return DEFAULT_HEAD


class LazyConfigurations(Sequence[Configuration]):
    """Configurations kept in storage and read one at a time on access (an HDF5 file, say),
    so that memory does not grow with their number. Graphs of them are built on access too
    (:func:`~mace.data.graph.graphs_of`); splits and groups are views (:meth:`subset`)."""

    def subset(self, indices: Sequence[int]) -> "LazyConfigurations":
        """The configurations at ``indices``, in that order, still read on access."""
        raise NotImplementedError

    def element_arrays(self) -> Iterator[np.ndarray]:
        """The atomic numbers of each configuration (subclasses read only those)."""
        return (config.atomic_numbers for config in self)

    def config_types(self) -> List[str]:
        """The config_type of each configuration (subclasses read only those)."""
        return [config.config_type for config in self]


def has_label(config: Configuration, label: str) -> bool:
    """Whether ``label`` of ``config`` takes part in training: present, with a non-zero weight.

    The one rule for losses, error metrics and data statistics (E0s, scale and shift):
    a frame without the label, or whose weight for it is zero, is left out of all of them.
    """
    return getattr(config, label) is not None and getattr(config, f"{label}_weight") > 0


def _lookup(atoms: Atoms, key: str) -> Optional[Any]:
    """Value stored under ``key`` in info, arrays, or the calculator.

    ASE >= 3.23 moves the standard names (energy, forces, stress, ...) out of info/arrays
    into a SinglePointCalculator when reading extxyz, so all three places are searched.
    """
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    return _calculator_results(atoms).get(key)


def _calculator_results(atoms: Atoms) -> Dict[str, Any]:
    return getattr(atoms.calc, "results", None) or {}


def available_keys(atoms: Atoms) -> List[str]:
    """Names a user could pass as label keys for this frame, for error messages."""
    keys = set(atoms.info) | (set(atoms.arrays) - {"numbers", "positions"})
    return sorted(keys | set(_calculator_results(atoms)))


def _read_energy(atoms: Atoms, key: str) -> Optional[float]:
    value = _lookup(atoms, key)
    if value is None:
        return None
    try:
        return float(np.asarray(value, dtype=float).item())
    except (TypeError, ValueError):
        raise UserInputError(f"energy '{key}' is {value!r}, not a number.") from None


def _read_forces(atoms: Atoms, key: str) -> Optional[np.ndarray]:
    value = _lookup(atoms, key)
    if value is None:
        return None
    forces = np.asarray(value, dtype=float)
    if forces.shape != (len(atoms), 3):
        raise UserInputError(
            f"forces '{key}' have shape {forces.shape}, expected ({len(atoms)}, 3)."
        )
    return forces


def _read_matrix(atoms: Atoms, key: str) -> Optional[np.ndarray]:
    value = _lookup(atoms, key)
    return None if value is None else to_3x3(value, key)


def _check_geometry(atoms: Atoms) -> None:
    if len(atoms) == 0:
        raise UserInputError("the structure has no atoms.")
    for axis, periodic in enumerate(atoms.pbc):
        if periodic and not np.any(atoms.cell[axis]):
            raise UserInputError(
                f"the structure is periodic along cell vector {axis} (pbc={atoms.pbc.tolist()}) "
                "but that vector is zero; give a Lattice or set pbc to F there."
            )


def config_from_atoms(
    atoms: Atoms,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    virials_key: str = "virials",
    config_type_weights: Optional[Dict[str, float]] = None,
) -> Configuration:
    """Configuration from one ASE frame; missing labels become None with zero loss weight.

    The overall weight is the frame's ``config_weight`` (default 1) times the weight of its
    ``config_type``; ``config_energy_weight`` etc. in the info scale single labels, as upstream.
    """
    _check_geometry(atoms)
    config_type = str(atoms.info.get("config_type", DEFAULT_CONFIG_TYPE))
    type_weights = config_type_weights or {}
    info = atoms.info
    return Configuration(
        atomic_numbers=atoms.get_atomic_numbers(),
        positions=atoms.get_positions(),
        energy=_read_energy(atoms, energy_key),
        forces=_read_forces(atoms, forces_key),
        stress=_read_matrix(atoms, stress_key),
        virials=_read_matrix(atoms, virials_key),
        cell=np.array(atoms.get_cell()),
        pbc=tuple(atoms.get_pbc()),
        weight=float(info.get("config_weight", 1.0)) * type_weights.get(config_type, 1.0),
        energy_weight=float(info.get("config_energy_weight", 1.0)),
        forces_weight=float(info.get("config_forces_weight", 1.0)),
        stress_weight=float(info.get("config_stress_weight", 1.0)),
        virials_weight=float(info.get("config_virials_weight", 1.0)),
        config_type=config_type,
    )


def read_frames(path: str) -> List[Atoms]:
    """All frames of an extxyz file, turning every parser failure into a UserInputError."""
    if not os.path.exists(path):
        raise UserInputError(f"Data file {path} does not exist.")
    if not os.path.isfile(path):
        raise UserInputError(f"Data file {path} is not a regular file.")
    frames: List[Atoms] = []
    try:
        for atoms in ase.io.iread(path, index=":", format="extxyz"):
            frames.append(atoms)
    except KeyError as error:
        raise UserInputError(
            f"{path} frame {len(frames)} has unknown chemical symbol {error.args[0]!r}."
        ) from None
    except (OSError, ValueError, IndexError, TypeError) as error:
        raise UserInputError(
            f"{path} is not a valid extended XYZ file: {error} "
            f"(at or after frame {len(frames)})."
        ) from None
    if not frames:
        raise UserInputError(f"Data file {path} contains no configurations.")
    return frames


def non_finite_label(config: Configuration, keys: Dict[str, str]) -> Optional[str]:
    """Description of the first of ``keys`` ({label: file key}) holding NaN or inf, if any."""
    for label, key in keys.items():
        value = getattr(config, label)
        if value is not None and not np.isfinite(value).all():
            return f"{label} '{key}'"
    return None


def _is_isolated_atom(config: Configuration) -> bool:
    return config.num_atoms == 1 and config.config_type == ISOLATED_ATOM_CONFIG_TYPE


def load_from_xyz(
    path: str,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    virials_key: str = "virials",
    config_type_weights: Optional[Dict[str, float]] = None,
    extract_atomic_energies: bool = False,
    keep_isolated_atoms: bool = False,
    required_labels: Sequence[str] = (),
    role: Optional[str] = None,
) -> Tuple[Dict[int, float], List[Configuration]]:
    """Read every frame of an extxyz file as a Configuration.

    A frame without a label gets zero weight for it (as upstream). With ``role`` (what the
    frames are for: "train", "validate"), :func:`check_labels` then warns about labels some
    frames lack and refuses ``required_labels`` that no frame has.

    With ``extract_atomic_energies``, single-atom frames of config_type ``IsolatedAtom``
    provide the isolated-atom energies E0 (returned as {Z: energy}) and, as upstream, are
    removed from the configurations unless ``keep_isolated_atoms``. Without it they are
    ordinary configurations (as upstream does for validation and test files).
    """
    atomic_energies: Dict[int, float] = {}
    configs: List[Configuration] = []
    label_keys = {"positions": "positions", "energy": energy_key, "forces": forces_key,
                  "stress": stress_key, "virials": virials_key}
    frames = read_frames(path)
    for index, atoms in enumerate(frames):
        try:
            config = config_from_atoms(
                atoms, energy_key, forces_key, stress_key, virials_key, config_type_weights
            )
        except UserInputError as error:
            raise UserInputError(f"{path} frame {index}: {error}") from None
        non_finite = non_finite_label(config, label_keys)
        if non_finite is not None:
            # Caught here, a NaN cannot reach the loss (a misleading "lower --lr") or an error table.
            raise UserInputError(f"{path} frame {index}: {non_finite} holds NaN or inf; fix or remove the frame.")
        if extract_atomic_energies and _is_isolated_atom(config):
            atomic_energies[int(config.atomic_numbers[0])] = _isolated_energy(config, path, index)
            if not keep_isolated_atoms:
                continue
        configs.append(config)
    if atomic_energies:
        logging.info("Using isolated atom energies from %s: %s", path, atomic_energies)
    if role is not None:
        keys = {label: label_keys[label] for label in LABELS}
        check_labels(configs, path, keys, required_labels, role, available_keys(frames[0]))
    return atomic_energies, configs


def _isolated_energy(config: Configuration, path: str, index: int) -> float:
    if config.energy is None:
        raise UserInputError(f"{path} frame {index} is an isolated atom without an energy.")
    return config.energy


# How a warning about frames without a label says what they are used for.
ROLE_WORDS = {"train": "train", "validate": "are validated"}


def check_labels(
    configs: Sequence[Configuration],
    path: str,
    keys: Mapping[str, str],
    required: Iterable[str] = ("energy", "forces"),
    role: str = "train",
    keys_present: Sequence[str] = (),
) -> None:
    """Report the labels ({label: key in the file} of ``keys``) that frames of ``path`` lack.

    Labels that only some frames lack: one warning per label, counting them (those frames
    have zero weight for it, as upstream). A ``required`` label that no frame has is a
    UserInputError naming the file and the key: most likely the key flag is mistyped.
    ``role`` says what the frames are for ("train", "validate") in the warning;
    ``keys_present`` (the keys the first frame does have) goes into the error as a hint.
    """
    required = set(required)
    for label, key in keys.items():
        missing = sum(1 for config in configs if getattr(config, label) is None)
        if missing == 0 or not configs:
            continue
        if missing == len(configs):
            if label in required:
                hint = f" (keys present in frame 0: {', '.join(keys_present)})" if keys_present else ""
                raise UserInputError(
                    f"{path} has no {label} under key '{key}' in any frame{hint}; "
                    f"pass the right --{label}_key."
                )
            continue
        logging.warning(
            "%s: %d of %d frames have no '%s'; they %s with zero %s weight",
            path, missing, len(configs), key, ROLE_WORDS.get(role, role), label,
        )


def random_train_valid_split(
    items: Sequence[T], valid_fraction: float, seed: int
) -> Tuple[List[T], List[T], List[int]]:
    """Split reproducibly into (train, valid, valid_indices) for a given seed.

    Uses the same generator and arithmetic as upstream MACE (``np.random.default_rng(seed)``
    shuffling ``range(n)``; validation size ``int(valid_fraction * n)``, taken from the end),
    so the same seed selects the same validation frames as an upstream run.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise UserInputError(
            f"valid_fraction must be between 0 and 1 (exclusive), got {valid_fraction}."
        )
    size = len(items)
    train_size = size - int(valid_fraction * size)
    if train_size == size or train_size == 0:
        raise UserInputError(
            f"valid_fraction {valid_fraction} of {size} configurations leaves an empty "
            f"{'validation' if train_size == size else 'training'} set."
        )
    indices = list(range(size))
    np.random.default_rng(seed).shuffle(indices)
    train = [items[i] for i in indices[:train_size]]
    valid_indices = indices[train_size:]
    return train, [items[i] for i in valid_indices], valid_indices


def group_by_config_type(
    configs: Iterable[Configuration],
) -> List[Tuple[str, List[Configuration]]]:
    """Configurations grouped by config_type, groups in order of first appearance."""
    groups: Dict[str, List[Configuration]] = {}
    for config in configs:
        groups.setdefault(config.config_type, []).append(config)
    return list(groups.items())


def compute_average_e0s(
    configs: Iterable[Configuration], z_table: AtomicNumberTable
) -> Dict[int, float]:
    """Per-element reference energies E0 from a least-squares fit E ~ sum_z n_z E0_z.

    Frames without an energy, or with zero energy weight, are left out. When the composition matrix is rank deficient
    (e.g. rMD17, where every frame is the same molecule) ``numpy.linalg.lstsq`` returns the
    minimum-norm solution, exactly as upstream: the E0s then split the mean molecular
    energy over the elements in proportion to their counts rather than being physical.
    """
    rows: List[List[int]] = []
    labelled_energies: List[float] = []
    for config in configs:  # one pass, keeping no configuration (they may be read on access)
        if has_label(config, "energy"):
            rows.append([np.count_nonzero(config.atomic_numbers == z) for z in z_table.zs])
            labelled_energies.append(config.energy)
    if not rows:
        raise UserInputError("Cannot compute average E0s: no configuration has an energy.")
    counts = np.array(rows, dtype=float)
    energies = np.array(labelled_energies, dtype=float)
    e0s = np.linalg.lstsq(counts, energies, rcond=None)[0]
    return {z: float(e0) for z, e0 in zip(z_table.zs, e0s)}
