"""The symmetric contraction against its definition, order by order.

``Contraction`` evaluates the polynomial with the two highest orders fused and Horner steps
below; the reference here forms every monomial x_{i1} ... x_{inu} explicitly and contracts
it with U^(nu) and the element's weights, one order at a time. Values and the first and
second derivatives (what the force loss differentiates) must agree.
"""
import pickle
from typing import List, Optional

import pytest
import torch

import mace  # noqa: F401  (lets e3nn 0.4.4 load its constants under torch >= 2.6)
from e3nn import o3

from mace.adapters import inject_adapters
from mace.modules.symmetric_contraction import Contraction, SymmetricContraction

IRREPS_IN = o3.Irreps("3x0e+3x1o+3x2e")
ELEMENTS = 3
NODES = 7


def _by_definition(contraction: Contraction, feats: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """sum_nu sum_k w_nu[z, k, c] U_nu[m, i_1..i_nu, k] x[c, i_1] ... x[c, i_nu], as [n, c * M]."""
    weights_by_order = [contraction.weights_max] + list(contraction.weights)  # highest first
    total = torch.zeros(())
    for nu in range(contraction.correlation, 0, -1):
        basis = contraction.coupling_matrix(nu)
        if basis.dim() == nu + 1:  # L = 0 drops the output axis
            basis = basis.unsqueeze(0)
        monomial = feats
        for _ in range(nu - 1):
            leading = [1] * (monomial.dim() - 2)
            monomial = monomial.unsqueeze(-1) * feats.view(feats.shape[0], feats.shape[1], *leading, feats.shape[2])
        flat_monomial = monomial.reshape(feats.shape[0], feats.shape[1], -1)  # [n, c, dim**nu]
        per_node_weights = torch.einsum("ne,ekc->nkc", attrs, weights_by_order[contraction.correlation - nu])
        flat_basis = basis.reshape(basis.shape[0], -1, basis.shape[-1])  # [M, dim**nu, K]
        total = total + torch.einsum("nci,mik,nkc->ncm", flat_monomial, flat_basis, per_node_weights)
    return total.reshape(feats.shape[0], -1)


def _node_inputs() -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    channels, dim = IRREPS_IN.count("0e"), IRREPS_IN.dim // IRREPS_IN.count("0e")
    feats = torch.randn(NODES, channels, dim, generator=generator, dtype=torch.float64, requires_grad=True)
    elements = torch.tensor([0, 2, 2, 0, 0, 2, 0])  # element 1 absent, as in a real batch
    attrs = torch.nn.functional.one_hot(elements, ELEMENTS).to(torch.float64)
    return [feats, attrs]


@pytest.mark.parametrize("correlation", [1, 2, 3, 4])
@pytest.mark.parametrize("irrep_out", ["0e", "1o", "2e"])
def test_values_and_two_derivatives_match_the_definition(correlation: int, irrep_out: str) -> None:
    torch.manual_seed(0)
    contraction = Contraction(IRREPS_IN, o3.Irreps(f"1x{irrep_out}"), correlation, ELEMENTS).double()
    feats, attrs = _node_inputs()
    ours, reference = contraction(feats, attrs), _by_definition(contraction, feats, attrs)
    assert ours.shape == (NODES, feats.shape[1] * o3.Irrep(irrep_out).dim)
    assert reference.abs().max() > 1e-3
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-10)
    cotangent = torch.randn_like(ours)
    gradients = [torch.autograd.grad((out * cotangent).sum(), feats, create_graph=True)[0] for out in (ours, reference)]
    torch.testing.assert_close(gradients[0], gradients[1], rtol=0, atol=1e-10)
    second = [torch.autograd.grad((g**2).sum(), contraction.weights_max, retain_graph=True)[0] for g in gradients]
    torch.testing.assert_close(second[0], second[1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("correlation", [1, 3])
def test_the_output_irreps_share_their_inputs_and_give_what_each_gives_alone(correlation: int) -> None:
    torch.manual_seed(0)
    product = SymmetricContraction(IRREPS_IN, o3.Irreps("1x0e + 1x1o"), correlation, ELEMENTS).double()
    feats, attrs = _node_inputs()
    alone = torch.cat([contraction(feats, attrs) for contraction in product.contractions], dim=-1)
    torch.testing.assert_close(product(feats, attrs), alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("adapter", [None, "elora"])
def test_a_product_unpickled_without_its_order_takes_it_from_its_contractions(adapter: Optional[str]) -> None:
    """Files of upstream, and ours from before, keep the correlation only in each Contraction;
    fine-tuned files hold the contractions wrapped in their adapter."""
    product = SymmetricContraction(IRREPS_IN, o3.Irreps("1x0e"), 2, ELEMENTS).double()
    if adapter is not None:
        wrapped = torch.nn.Sequential()
        wrapped.symmetric_contractions = product
        inject_adapters(wrapped, adapter)
        assert not isinstance(product.contractions[0], Contraction)
    state = dict(product.__dict__)
    del state["correlation"]
    restored = pickle.loads(pickle.dumps(product))
    restored.__dict__.clear()
    restored.__setstate__(state)
    feats, attrs = _node_inputs()
    assert restored.correlation == 2
    torch.testing.assert_close(restored(feats, attrs), product(feats, attrs), rtol=0, atol=0)


def _mixed_basis_state(contraction: Contraction) -> dict:
    """The contraction's state with every basis given in another choice of basis vectors (an
    invertible mix of its parameters), as another writer may have chosen them."""
    generator = torch.Generator().manual_seed(5)
    state = contraction.state_dict()
    for name in [name for name in state if name.startswith("U_matrix_")]:
        basis = state[name]
        mix = torch.eye(basis.shape[-1], dtype=basis.dtype) + 0.3 * torch.randn(
            basis.shape[-1], basis.shape[-1], generator=generator, dtype=basis.dtype
        )
        state[name] = basis @ mix
    return state


def test_loaded_bases_replace_the_entries_the_weights_are_contracted_with() -> None:
    torch.manual_seed(0)
    contraction = Contraction(IRREPS_IN, o3.Irreps("1x1o"), 3, ELEMENTS).double()
    state = _mixed_basis_state(contraction)
    assert not torch.equal(state["U_matrix_3"], contraction.U_matrix_3)
    contraction.load_state_dict(state)
    feats, attrs = _node_inputs()
    torch.testing.assert_close(contraction(feats, attrs), _by_definition(contraction, feats, attrs), rtol=0, atol=1e-10)


def test_an_unpickled_contraction_derives_its_nonzero_entries_again() -> None:
    """A file's own copy of the derived entries is not trusted: out-of-range rows must not
    reach ``index_add``, and entries of another basis must not be used."""
    torch.manual_seed(0)
    contraction = Contraction(IRREPS_IN, o3.Irreps("1x0e"), 3, ELEMENTS).double()
    feats, attrs = _node_inputs()
    expected = contraction(feats, attrs)
    state = dict(pickle.loads(pickle.dumps(contraction)).__dict__)
    state["_buffers"] = dict(state["_buffers"])
    state["_buffers"]["U_rows_3"] = torch.full_like(contraction.U_rows_3, 10**9)
    state["_buffers"]["U_values_2"] = torch.zeros_like(contraction.U_values_2)
    restored = Contraction.__new__(Contraction)
    restored.__setstate__(state)
    torch.testing.assert_close(restored(feats, attrs), expected, rtol=0, atol=0)
