"""Choosing the pretraining configurations a fine-tune replays (``mace.cli.fine_tuning_select``).

Three steps, as upstream 0.3.16's tool: keep the configurations whose elements fit those of
the fine-tuning data (:func:`filter_mask`), take ``num_samples`` of them by farthest point
sampling on descriptors or at random (:func:`select_configurations`), and tag the frames so
that a multi-head fine-tune knows which data is which (:func:`tag_frames`). Randomness comes
from the ``numpy.random.Generator`` passed in, so a seed gives the same selection every time.
"""
from dataclasses import dataclass
from typing import AbstractSet, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from ase import Atoms

from mace.core.errors import UserInputError

# filtering type -> whether a configuration with elements S is kept, given the elements E.
_FILTERS: Dict[str, Callable[[AbstractSet[int], AbstractSet[int]], bool]] = {
    "none": lambda config, wanted: True,
    "combinations": lambda config, wanted: config <= wanted,  # only wanted elements, not all needed
    "exclusive": lambda config, wanted: config == wanted,  # exactly the wanted elements
    "inclusive": lambda config, wanted: wanted <= config,  # all wanted elements, others allowed
}
FILTERING_TYPES = tuple(_FILTERS)
SUBSELECT_METHODS = ("fps", "random")

# Given a list of candidate indices, their descriptors (one row each) for farthest point sampling.
DescriptorSource = Callable[[List[int]], np.ndarray]


@dataclass
class Selection:
    """The chosen configurations (indices into the pretraining frames, in the order chosen)
    and, when farthest point sampling chose them, their descriptor rows (same order)."""

    indices: List[int]
    descriptors: Optional[np.ndarray] = None


def filtering_elements(finetuning_frames: Sequence[Atoms], atomic_numbers: Optional[Iterable[int]]) -> List[int]:
    """The elements to filter by: those of the fine-tuning data when there is any (as
    upstream), else the atomic numbers given; sorted, possibly empty."""
    if finetuning_frames:
        return sorted({int(z) for atoms in finetuning_frames for z in atoms.numbers})
    return sorted(set(atomic_numbers or ()))


def filter_mask(frames: Sequence[Atoms], elements: Iterable[int], filtering_type: str) -> List[bool]:
    """Whether each frame passes ``filtering_type`` against ``elements`` (see ``_FILTERS``)."""
    if filtering_type not in _FILTERS:
        raise UserInputError(f"--filtering_type must be one of {', '.join(FILTERING_TYPES)}, not '{filtering_type}'")
    wanted = set(elements)
    if filtering_type != "none" and not wanted:
        raise UserInputError(
            f"--filtering_type {filtering_type} needs elements to filter by: "
            "give fine-tuning configurations (--configs_ft) or --filter_atomic_numbers_pt"
        )
    keep = _FILTERS[filtering_type]
    return [keep({int(z) for z in atoms.numbers}, wanted) for atoms in frames]


def select_configurations(
    mask: Sequence[bool],
    num_samples: Optional[int],
    method: str,
    allow_padding: bool,
    rng: np.random.Generator,
    descriptors_of: DescriptorSource,
) -> Selection:
    """The frames to replay, given which pass the filter (``mask``).

    ``num_samples`` None, or the number that pass: all of those (at least one), in file
    order. Fewer: chosen among them by ``method`` ('fps' asks ``descriptors_of`` for the rows
    of the candidates only then, since computing descriptors runs a model; 'random': without
    replacement).
    More, with ``allow_padding``: all that pass, then random others that do not. Every
    impossible request is refused before ``descriptors_of`` is called.
    """
    passing = [index for index, keep in enumerate(mask) if keep]
    if num_samples is not None and num_samples <= 0:
        raise UserInputError(f"--num_samples must be a positive integer, got {num_samples}")
    if num_samples is None or num_samples == len(passing):
        if not passing:
            raise UserInputError(
                f"none of the {len(mask)} pretraining configurations passes the filter: nothing to select"
            )
        return Selection(passing)
    if method not in SUBSELECT_METHODS:
        raise UserInputError(f"--subselect must be one of {', '.join(SUBSELECT_METHODS)}, not '{method}'")
    if num_samples > len(passing):
        return Selection(_padded(mask, num_samples, allow_padding, rng))
    if method == "random":
        return Selection([passing[i] for i in _random_picks(len(passing), num_samples, rng)])
    descriptors = descriptors_of(passing)
    picks = farthest_point_sampling(descriptors, num_samples, rng)
    return Selection([passing[i] for i in picks], descriptors[picks])


def _padded(mask: Sequence[bool], num_samples: int, allow_padding: bool, rng: np.random.Generator) -> List[int]:
    """All frames that pass the filter, then random others up to ``num_samples``."""
    passing = [index for index, keep in enumerate(mask) if keep]
    others = [index for index, keep in enumerate(mask) if not keep]
    if not allow_padding:
        raise UserInputError(
            f"--num_samples {num_samples} is more than the {len(passing)} configurations that pass the filter; "
            "ask for fewer, or drop --disallow_random_padding to add random others"
        )
    missing = num_samples - len(passing)
    if missing > len(others):
        raise UserInputError(
            f"--num_samples {num_samples} is more than the {len(mask)} pretraining configurations there are"
        )
    return passing + [others[i] for i in _random_picks(len(others), missing, rng)]


def _random_picks(count: int, num_samples: int, rng: np.random.Generator) -> List[int]:
    """``num_samples`` distinct positions out of ``count``, in the order drawn."""
    return [int(i) for i in rng.choice(count, size=num_samples, replace=False)]


def farthest_point_sampling(points: np.ndarray, num_samples: int, rng: np.random.Generator) -> List[int]:
    """Exact greedy farthest point sampling (Euclidean) of the rows of ``points``.

    The first row is drawn by ``rng``; each next one is the row farthest from all chosen so
    far (the first such row on ties), so a few samples spread over the whole data set.
    """
    if not 1 <= num_samples <= len(points):
        raise ValueError(f"cannot choose {num_samples} of {len(points)} points")
    first = int(rng.integers(len(points)))
    chosen = [first]
    distances = np.linalg.norm(points - points[first], axis=1)
    distances[first] = -np.inf  # never chosen again, even among duplicate points
    while len(chosen) < num_samples:
        farthest = int(np.argmax(distances))
        chosen.append(farthest)
        distances = np.minimum(distances, np.linalg.norm(points - points[farthest], axis=1))
        distances[farthest] = -np.inf
    return chosen


def element_species(frames: Iterable[Atoms]) -> List[int]:
    """The sorted atomic numbers present in ``frames``: the blocks of :func:`configuration_descriptor`."""
    return sorted({int(z) for atoms in frames for z in atoms.numbers})


def configuration_descriptor(per_atom: np.ndarray, numbers: np.ndarray, species: Sequence[int]) -> np.ndarray:
    """One vector for a configuration from its per-atom descriptors [n_atoms, features]: for
    each of ``species`` in order, the mean over that element's atoms, side by side.

    An element the configuration lacks gives zeros (upstream fills 1e11 there, which lets
    composition alone decide the distances), so all configurations share one space.
    """
    numbers = np.asarray(numbers)
    blocks = [
        per_atom[numbers == z].mean(axis=0) if np.any(numbers == z) else np.zeros(per_atom.shape[1])
        for z in species
    ]
    return np.concatenate(blocks)


def tag_frames(frames: Iterable[Atoms], pretrained: bool, weight: float, head: Optional[str]) -> None:
    """Write upstream's replay metadata into each frame's info: ``pretrained``,
    ``config_weight`` and, when given, ``head`` (which head a multi-head fine-tune trains)."""
    for atoms in frames:
        atoms.info["pretrained"] = pretrained
        atoms.info["config_weight"] = weight
        if head is not None:
            atoms.info["head"] = head
