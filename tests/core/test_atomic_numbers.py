"""The element table maps atomic numbers to one-hot channels and names unknown elements."""
import numpy as np
import pytest
import torch

from mace.core.atomic_numbers import AtomicNumberTable, atomic_number_table_from_zs, to_one_hot
from mace.core.errors import UserInputError


def test_table_is_sorted_and_unique():
    table = atomic_number_table_from_zs([8, 1, 6, 1, 8])
    assert table.zs == (1, 6, 8) and len(table) == 3
    assert table.index_of(6) == 1
    assert table == AtomicNumberTable([6, 8, 1])


def test_z_to_index_maps_arrays():
    table = atomic_number_table_from_zs([1, 6, 8])
    np.testing.assert_array_equal(table.z_to_index(np.array([8, 1, 1, 6])), [2, 0, 0, 1])


def test_unknown_elements_are_named_by_symbol():
    table = atomic_number_table_from_zs([1, 6, 8])
    message = r"Element\(s\) N, Cl not in .*known elements: H, C, O"
    with pytest.raises(UserInputError, match=message):
        table.z_to_index(np.array([1, 17, 7]))
    with pytest.raises(UserInputError, match="Element"):
        table.index_of(9)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_one_hot_rows(num_classes):
    indices = torch.tensor([0, num_classes - 1, 0])
    one_hot = to_one_hot(indices, num_classes)
    assert one_hot.shape == (3, num_classes) and one_hot.dtype == torch.get_default_dtype()
    assert torch.equal(one_hot.argmax(dim=1), indices) and torch.all(one_hot.sum(dim=1) == 1)
