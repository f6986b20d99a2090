"""Radius graph with periodic images, in MACE's edge conventions.

Edges are ``[sender; receiver]`` with Cartesian ``shifts = unit_shifts @ cell``; the model
forms edge vectors as ``positions[receiver] - positions[sender] + shifts``. Only the pair
of an atom with its own unshifted copy is dropped: an atom does see its periodic images.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
from matscipy.neighbours import neighbour_list

from mace.core.errors import UserInputError


def _padded_cell(
    positions: np.ndarray, cutoff: float, pbc: np.ndarray, cell: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Cell and origin for matscipy whose non-periodic directions enclose all atoms.

    matscipy needs a full cell but is only efficient when atoms lie inside it. Each
    non-periodic row is replaced by a vector orthogonal to the periodic rows (and to each
    other), long enough to span the atoms plus a cutoff of margin on both sides; the origin
    is moved so the atoms sit inside. Periodic rows are kept, so shifts along them are exact.
    """
    padded = cell.copy()
    origin = np.zeros(3)
    for axis, direction in zip(np.flatnonzero(~pbc), _orthonormal_complement(cell[pbc])):
        projections = positions @ direction
        start = projections.min() - cutoff
        padded[axis] = direction * (projections.max() + cutoff - start)
        origin += direction * start
    return padded, origin


def _orthonormal_complement(rows: np.ndarray) -> np.ndarray:
    """Orthonormal vectors spanning the space orthogonal to ``rows`` (a k x 3 array)."""
    if rows.shape[0] == 0:
        return np.identity(3)
    _, _, vt = np.linalg.svd(rows)
    return vt[rows.shape[0]:]


def _check_periodic_cell(pbc: np.ndarray, cell: np.ndarray) -> None:
    if np.linalg.matrix_rank(cell[pbc]) < np.count_nonzero(pbc):
        raise UserInputError(
            f"The cell vectors of the periodic directions (pbc={pbc.tolist()}) are zero or "
            "linearly dependent; a periodic structure needs a valid Lattice."
        )


def get_neighborhood(
    positions: np.ndarray,
    cutoff: float,
    pbc: Optional[Sequence[bool]] = None,
    cell: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff``, including periodic images.

    Returns ``edge_index`` (2, E) int64 as [sender; receiver], Cartesian ``shifts`` (E, 3),
    integer ``unit_shifts`` (E, 3) and the cell used for the search (the given cell, with
    non-periodic rows replaced by padding vectors). Shifts along non-periodic directions are
    always zero, so they do not depend on that padding.
    """
    positions = np.ascontiguousarray(positions, dtype=float)
    pbc_array = np.array((False,) * 3 if pbc is None else pbc, dtype=bool)
    base_cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=float)
    _check_periodic_cell(pbc_array, base_cell)
    search_cell, origin = _padded_cell(positions, cutoff, pbc_array, base_cell)
    sender, receiver, unit_shifts = neighbour_list(
        quantities="ijS",
        positions=positions,
        cutoff=float(cutoff),
        pbc=pbc_array,
        cell=search_cell,
        cell_origin=origin,
    )
    keep = ~((sender == receiver) & np.all(unit_shifts == 0, axis=1))
    edge_index = np.stack((sender[keep], receiver[keep])).astype(np.int64)
    unit_shifts = unit_shifts[keep].astype(np.int64)
    shifts = unit_shifts @ search_cell
    return edge_index, shifts, unit_shifts, search_cell
