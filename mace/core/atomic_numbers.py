"""The table of elements a model knows, mapping atomic numbers to one-hot channel indices."""
from typing import Iterable, Tuple

import numpy as np
import torch
from ase.data import chemical_symbols

from mace.core.errors import UserInputError


def _symbol(z: int) -> str:
    """Chemical symbol for messages; falls back to the number for nonsense values."""
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


class AtomicNumberTable:
    """Sorted, duplicate-free atomic numbers; position in the table is the one-hot channel."""

    def __init__(self, zs: Iterable[int]) -> None:
        self.zs: Tuple[int, ...] = tuple(sorted({int(z) for z in zs}))
        self._index = {z: i for i, z in enumerate(self.zs)}

    def __len__(self) -> int:
        return len(self.zs)

    def __repr__(self) -> str:
        return f"AtomicNumberTable({list(self.zs)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicNumberTable) and self.zs == other.zs

    def index_of(self, z: int) -> int:
        """Channel index of one element; unknown elements are a user error (wrong model/data)."""
        try:
            return self._index[int(z)]
        except KeyError:
            raise UserInputError(self._unknown_message([int(z)])) from None

    def z_to_index(self, atomic_numbers: np.ndarray) -> np.ndarray:
        """Channel indices for an array of atomic numbers, naming every unknown element at once."""
        atomic_numbers = np.asarray(atomic_numbers, dtype=np.int64)
        unknown = sorted(set(atomic_numbers.ravel().tolist()) - set(self.zs))
        if unknown:
            raise UserInputError(self._unknown_message(unknown))
        lookup = np.full(max(self.zs, default=0) + 1, -1, dtype=np.int64)
        lookup[list(self.zs)] = np.arange(len(self.zs))
        return lookup[atomic_numbers]

    def _unknown_message(self, unknown: Iterable[int]) -> str:
        missing = ", ".join(_symbol(z) for z in unknown)
        known = ", ".join(_symbol(z) for z in self.zs) or "none"
        return f"Element(s) {missing} not in the atomic number table (known elements: {known})."


def atomic_number_table_from_zs(zs: Iterable[int]) -> AtomicNumberTable:
    """Table of the distinct elements in ``zs`` (e.g. all atomic numbers of a training set)."""
    return AtomicNumberTable(zs)


def to_one_hot(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot rows (n, num_classes) in the default float dtype, as the node embedding expects."""
    one_hot = torch.nn.functional.one_hot(indices.reshape(-1).long(), num_classes=num_classes)
    return one_hot.to(torch.get_default_dtype())
