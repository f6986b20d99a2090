"""Selecting pretraining configurations to replay: element filters, padding, farthest point
sampling on points whose answer is known, and the requests that are refused."""
from typing import List

import numpy as np
import pytest
from ase import Atoms

from mace.core.errors import UserInputError
from mace.data.selection import (
    configuration_descriptor,
    farthest_point_sampling,
    filter_mask,
    filtering_elements,
    select_configurations,
    tag_frames,
)


def molecule(*numbers: int) -> Atoms:
    return Atoms(numbers=list(numbers), positions=[[1.5 * i, 0.0, 0.0] for i in range(len(numbers))])


# Element sets {H}, {H, C}, {H, C, O}, {C, O}, {O, N}; filtered against E = {H, C}.
FRAMES = [molecule(1, 1), molecule(1, 6, 1), molecule(8, 6, 1), molecule(6, 8), molecule(8, 7)]


@pytest.mark.parametrize(
    "filtering_type, expected",
    [
        ("none", [True, True, True, True, True]),
        ("combinations", [True, True, False, False, False]),  # S within E
        ("exclusive", [False, True, False, False, False]),  # S equal to E
        ("inclusive", [False, True, True, False, False]),  # E within S
    ],
)
def test_the_four_filtering_types(filtering_type: str, expected: List[bool]) -> None:
    assert filter_mask(FRAMES, [1, 6], filtering_type) == expected


def test_filtering_without_elements_is_refused_except_none() -> None:
    assert filter_mask(FRAMES, [], "none") == [True] * len(FRAMES)
    with pytest.raises(UserInputError, match="--filtering_type combinations needs elements"):
        filter_mask(FRAMES, [], "combinations")


def test_the_elements_come_from_the_finetuning_frames_else_the_given_numbers() -> None:
    assert filtering_elements([molecule(8, 1), molecule(1, 1)], [6]) == [1, 8]
    assert filtering_elements([], [8, 6, 8]) == [6, 8]
    assert filtering_elements([], None) == []


def no_descriptors(candidates: List[int]) -> np.ndarray:
    raise AssertionError("descriptors were asked for where none are needed")


def select(mask: List[bool], num_samples, method: str = "random", allow_padding: bool = True, descriptors=no_descriptors):
    return select_configurations(mask, num_samples, method, allow_padding, np.random.default_rng(0), descriptors)


def test_all_that_pass_are_kept_without_num_samples_or_when_it_equals_their_number() -> None:
    mask = [True, False, True, True]
    assert select(mask, None, "fps").indices == [0, 2, 3]
    assert select(mask, 3, "fps").indices == [0, 2, 3]


def test_random_subselection_draws_distinct_configurations_that_pass() -> None:
    mask = [True, False] * 10
    indices = select(mask, 4).indices
    assert len(set(indices)) == 4 and all(mask[i] for i in indices)
    assert select(mask, 4).indices == indices  # same seed, same choice


def test_padding_adds_random_configurations_that_fail_the_filter() -> None:
    mask = [False, True, False, False, True, False]
    indices = select(mask, 4).indices
    assert indices[:2] == [1, 4]
    assert len(set(indices[2:])) == 2 and not any(mask[i] for i in indices[2:])


def test_padding_beyond_all_configurations_or_when_disallowed_is_refused() -> None:
    mask = [False, True, False]
    with pytest.raises(UserInputError, match="more than the 3 pretraining configurations"):
        select(mask, 4)
    with pytest.raises(UserInputError, match="drop --disallow_random_padding"):
        select(mask, 2, allow_padding=False)


@pytest.mark.parametrize("num_samples", [0, -1])
def test_num_samples_must_be_positive(num_samples: int) -> None:
    with pytest.raises(UserInputError, match="--num_samples must be a positive integer"):
        select([True, True], num_samples)


def test_nothing_passing_the_filter_is_refused() -> None:
    with pytest.raises(UserInputError, match="none of the 2 pretraining configurations passes"):
        select([False, False], None)


# The corners of a unit square and its centre: from the centre (index 4), the corners are the
# farthest; then the corner opposite the first one, then the two remaining corners.
SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]])


class FixedFirst:
    """An rng whose first draw is fixed, to know where farthest point sampling starts."""

    def __init__(self, first: int) -> None:
        self.first = first

    def integers(self, high: int) -> int:
        return self.first


def test_farthest_point_sampling_picks_the_farthest_points() -> None:
    assert farthest_point_sampling(SQUARE, 2, FixedFirst(4)) == [4, 0]
    assert farthest_point_sampling(SQUARE, 3, FixedFirst(0)) == [0, 3, 1]
    assert sorted(farthest_point_sampling(SQUARE, 5, FixedFirst(2))) == [0, 1, 2, 3, 4]


def test_farthest_point_sampling_never_picks_a_point_twice_among_duplicates() -> None:
    points = np.zeros((4, 3))
    assert sorted(farthest_point_sampling(points, 4, np.random.default_rng(1))) == [0, 1, 2, 3]


def test_fps_subselection_uses_the_descriptors_of_the_configurations_that_pass() -> None:
    mask = [True, False, True, True, True, True, False]
    asked = []

    def square(candidates: List[int]) -> np.ndarray:
        asked.append(candidates)
        return SQUARE

    selection = select(mask, 4, "fps", descriptors=square)
    assert asked == [[0, 2, 3, 4, 5]]
    picks = [[0, 2, 3, 4, 5].index(i) for i in selection.indices]
    np.testing.assert_array_equal(selection.descriptors, SQUARE[picks])
    assert 5 not in selection.indices[1:2]  # the centre is never second: a corner is farther


def test_a_configuration_descriptor_is_the_per_element_means_with_zeros_for_absent_ones() -> None:
    per_atom = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]])
    vector = configuration_descriptor(per_atom, np.array([1, 1, 8]), [1, 6, 8])
    np.testing.assert_array_equal(vector, [2.0, 3.0, 0.0, 0.0, 10.0, 20.0])


def test_tags_are_upstreams_info_keys_with_head_only_when_given() -> None:
    frames = [molecule(1), molecule(6)]
    tag_frames(frames, pretrained=True, weight=0.5, head=None)
    assert frames[0].info == {"pretrained": True, "config_weight": 0.5}
    tag_frames(frames, pretrained=False, weight=2.0, head="pt_head")
    assert frames[1].info == {"pretrained": False, "config_weight": 2.0, "head": "pt_head"}
