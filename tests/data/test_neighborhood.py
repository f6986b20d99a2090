"""The neighbour list must equal a brute-force search over all periodic images."""
import itertools

import numpy as np
import pytest

from mace.data import get_neighborhood
from mace.core.errors import UserInputError


def _image_range(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Images per axis that provably contain every pair within the cutoff.

    |n @ cell_p| >= sigma_min * |n|_inf and a pair needs |n @ cell_p| < cutoff + max distance.
    """
    max_distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1).max()
    sigma_min = np.linalg.svd(cell[pbc], compute_uv=False).min()
    reach = int(np.ceil((cutoff + max_distance) / sigma_min))
    return [range(-reach, reach + 1) if periodic else [0] for periodic in pbc]


def brute_force_edges(positions, cutoff, pbc, cell) -> set:
    """(sender, receiver, unit shift) for all pairs closer than cutoff, self-pair excluded."""
    edges = set()
    for shift in itertools.product(*_image_range(positions, cell, pbc, cutoff)):
        offset = np.array(shift) @ cell
        for i, j in itertools.product(range(len(positions)), repeat=2):
            if i == j and not any(shift):
                continue
            if np.linalg.norm(positions[j] - positions[i] + offset) < cutoff:
                edges.add((i, j, *shift))
    return edges


def edge_set(edge_index: np.ndarray, unit_shifts: np.ndarray) -> set:
    return {(int(i), int(j), *map(int, s)) for (i, j), s in zip(edge_index.T, unit_shifts)}


def random_cell(rng: np.random.Generator, length: float) -> np.ndarray:
    return np.diag([length] * 3) + rng.uniform(-0.3, 0.3, (3, 3)) * length


@pytest.mark.parametrize(
    "pbc, cell_length, cutoff",
    [
        ((True, True, True), 3.0, 4.0),  # cutoff beyond the cell: many images, self-images
        ((True, True, True), 9.0, 3.0),
        ((True, False, True), 4.0, 3.5),
        ((False, False, True), 2.5, 3.0),
    ],
)
def test_periodic_matches_brute_force(pbc, cell_length, cutoff):
    rng = np.random.default_rng(7)
    pbc = np.array(pbc)
    cell = random_cell(rng, cell_length)
    cell[~pbc] = 0.0
    positions = rng.uniform(-0.5, 1.5, (6, 3)) @ random_cell(rng, cell_length)
    edge_index, shifts, unit_shifts, search_cell = get_neighborhood(positions, cutoff, pbc, cell)
    assert edge_set(edge_index, unit_shifts) == brute_force_edges(positions, cutoff, pbc, cell)
    np.testing.assert_allclose(shifts, unit_shifts @ cell, atol=1e-12)
    np.testing.assert_array_equal(search_cell[pbc], cell[pbc])
    assert edge_index.dtype == np.int64 and edge_index.shape[0] == 2


@pytest.mark.parametrize("cell", [None, np.zeros((3, 3)), np.diag([50.0] * 3)])
def test_non_periodic_matches_brute_force(cell):
    rng = np.random.default_rng(3)
    positions = rng.uniform(-6.0, 4.0, (25, 3))
    edge_index, shifts, unit_shifts, _ = get_neighborhood(positions, 3.0, None, cell)
    expected = {
        (i, j, 0, 0, 0)
        for i, j in itertools.permutations(range(len(positions)), 2)
        if np.linalg.norm(positions[j] - positions[i]) < 3.0
    }
    assert edge_set(edge_index, unit_shifts) == expected
    assert not shifts.any()


def test_edge_vectors_follow_receiver_minus_sender_convention():
    cell = np.diag([4.0, 4.0, 4.0])
    positions = np.array([[0.2, 0.2, 0.2], [3.8, 0.2, 0.2]])
    edge_index, shifts, _, _ = get_neighborhood(positions, 1.0, (True, True, True), cell)
    sender, receiver = edge_index
    vectors = positions[receiver] - positions[sender] + shifts
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 0.4, atol=1e-12)
    assert sorted(zip(sender.tolist(), receiver.tolist())) == [(0, 1), (1, 0)]


def test_single_atom_in_small_cell_sees_its_images():
    edge_index, _, unit_shifts, _ = get_neighborhood(
        np.zeros((1, 3)), 1.5, (True, True, True), np.identity(3)
    )
    assert len(unit_shifts) == 18  # 6 face neighbours at 1, 12 edge neighbours at sqrt(2)
    assert np.all(edge_index == 0)


def test_periodic_direction_without_cell_vector_is_rejected():
    cell = np.diag([5.0, 5.0, 0.0])
    with pytest.raises(UserInputError, match="periodic"):
        get_neighborhood(np.zeros((2, 3)), 3.0, (True, True, True), cell)
