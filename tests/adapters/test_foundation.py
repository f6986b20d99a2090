"""Restricting a foundation model to fewer elements keeps its predictions exactly."""
import pytest
import torch
from e3nn import o3

from mace.modules.loading import load_model
from mace.core.errors import UserInputError
from mace.adapters.foundation import ELEMENT_EMBEDDINGS, restrict_to_elements, set_e0s

from .conftest import HCO, energies_forces, make_batch, max_difference, model_path


def test_restricted_small_model_predicts_as_foundation(small_foundation, small_hco_template, acac_frames):
    full = energies_forces(small_foundation, make_batch(small_foundation, acac_frames))
    restricted = energies_forces(small_hco_template, make_batch(small_hco_template, acac_frames))
    assert max_difference(full, restricted) < 1e-10
    assert small_hco_template.atomic_numbers.tolist() == list(HCO)
    assert small_hco_template.node_embedding.linear.irreps_in == o3.Irreps("3x0e")
    assert all(i.skip_tp.irreps_in2 == o3.Irreps("3x0e") for i in small_hco_template.interactions)
    assert small_hco_template.atomic_energies_fn.atomic_energies.shape == (1, 3)  # [heads, elements]


def test_restricted_ten_element_model_predicts_as_foundation(acac_frames):
    """MACE-OFF23 shape, 10 -> 3 elements: e3nn's fan-in normalisation changes, outputs must not."""
    foundation = load_model(model_path("off23arch_v035"), dtype=torch.float64)
    restricted = restrict_to_elements(foundation, [8, 1, 6, 6])
    full = energies_forces(foundation, make_batch(foundation, acac_frames))
    assert max_difference(full, energies_forces(restricted, make_batch(restricted, acac_frames))) < 1e-10
    assert restricted.atomic_energies_fn.atomic_energies.shape == (3,)
    assert foundation.atomic_numbers.numel() == 10  # the input model is left untouched


@pytest.mark.parametrize("foundation_name", ["densityzbl_v0316", "nonlinear_hcno"])
def test_restricted_newest_blocks_predict_as_foundation(request, acac_frames, foundation_name):
    """Density blocks with ZBL and Agnesi (upstream file), and the non-linear block, whose
    element embeddings of the radial network are restricted too: H, C, N, O -> H, C, O."""
    foundation = (
        load_model(model_path(foundation_name, "conformance-foundations"), dtype=torch.float64)
        if foundation_name.endswith("v0316") else request.getfixturevalue(foundation_name)
    )
    restricted = restrict_to_elements(foundation, HCO)
    full = energies_forces(foundation, make_batch(foundation, acac_frames))
    assert max_difference(full, energies_forces(restricted, make_batch(restricted, acac_frames))) < 1e-10
    embeddings = [
        getattr(block, name) for block in restricted.interactions for name in ELEMENT_EMBEDDINGS if hasattr(block, name)
    ]
    assert all(embedding.irreps_in == o3.Irreps("3x0e") for embedding in embeddings)
    assert len(embeddings) == (0 if foundation_name.endswith("v0316") else 4)


def test_missing_elements_are_named(small_hco_template):
    with pytest.raises(UserInputError, match="knows H, C, O; the training data also has: S, Cl"):
        restrict_to_elements(small_hco_template, [1, 6, 16, 17])


def test_set_e0s(small_hco, acac_frames):
    before = energies_forces(small_hco, make_batch(small_hco, acac_frames))[0]
    set_e0s(small_hco, {1: -1.0, 6: -2.0, 8: -3.0, 7: -99.0})
    after = energies_forces(small_hco, make_batch(small_hco, acac_frames))[0]
    assert small_hco.atomic_energies_fn.atomic_energies.tolist() == [[-1.0, -2.0, -3.0]]
    assert not torch.allclose(before, after)
    with pytest.raises(UserInputError, match="missing for element"):
        set_e0s(small_hco, {1: -1.0})
