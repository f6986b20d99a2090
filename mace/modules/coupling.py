"""Coupling bases ("U matrices") of MACE's symmetric contraction, built from scratch.

Per channel, the product basis forms polynomials of the node features x[i] (i runs over all
components of the per-channel irreps, e.g. 1x0e+1x1o+1x2e+1x3o, 16 components):

    B[m] = sum_nu sum_k w_k^(nu) sum_{i_1..i_nu} U_nu[m, i_1, .., i_nu, k] x[i_1] .. x[i_nu].

Each column U_nu[..., k] is an O(3)-equivariant map from the nu-fold tensor power of the
input to the output irrep. We build the columns as *coupling trees*: the inputs are coupled
left to right with real Clebsch-Gordan coefficients (e3nn's ``o3.wigner_3j``),

    x[slot_1] (x) x[slot_2] -> ir_2,  ir_2 (x) x[slot_3] -> ir_3,  ...,  ir_{nu-1} (x) x[slot_nu] -> L,

one column per admissible tree (slot_1..slot_nu, ir_2..ir_{nu-1}). This is the convention of
the model files upstream MACE writes, and we reproduce it exactly (column order and signs
included), because

* the number of columns fixes the shapes of the element-dependent weights (``weights_max``
  is [n_elements, num_params, channels]); foundation-model files must keep loading and
  fine-tuning that copies weights into a freshly built model must keep their meaning;
* it is checked against the buffers stored in upstream files (tests/modules/test_coupling.py).

Facts read off the upstream files (and re-derived in the tests):

* Shapes: (2L+1, dim_in, .., dim_in, num_params) for L > 0; for L = 0 the output axis is
  dropped: (dim_in, .., dim_in, num_params).
* num_params is the number of coupling trees, *not* the dimension of the symmetric
  equivariant space: e.g. 16-dim input, order 3: 23 columns for 0e (symmetric space: 8) and
  51 for 1o (symmetric space: 12). The columns are linearly independent but NOT symmetric in
  the input indices. That is harmless: contracting nu copies of the same x only sees the
  part of U symmetric in (i_1..i_nu), so sym(U) and U give identical outputs for identical
  weights; the extra columns are an over-parameterisation inherited from upstream.
  ``symmetrize_inputs`` and ``symmetric_coupling_basis`` give the symmetric view.
* Normalisation ("component"): distinct trees are orthogonal and every column has squared
  Frobenius norm 2L+1 (each output component has unit norm). Each coupling step uses
  wigner_3j(l_out, l_left, l_in) * sqrt(2 l_out + 1); order 1 is the identity on the slot.
* Order 4 only: upstream keeps only coupled irreps of "natural" parity (l, (-1)^l) with
  l <= 11, for the intermediate and the final irreps (not for the bare inputs). Orders other
  than 4 are unfiltered. We follow this so that weight shapes agree; as a consequence an
  unnatural-parity output (e.g. 1e) has no order-4 columns.
* Column order: trees sorted by (ir_{nu-1}, .., ir_2, slot_1, .., slot_nu), irreps compared
  as (l, parity) tuples, slots by position in irreps_in.

Unreachable outputs give num_params = 0, i.e. a tensor of the usual shape whose last axis
has length 0 (upstream raises in that case). Unlike upstream we never squeeze input axes of
length one (an irreps_in of dimension 1 still gives nu input axes).
"""
import functools
import itertools
import math
from typing import List, NamedTuple, Tuple, Union

import torch
from e3nn import o3

__all__ = ["coupling_basis", "symmetrize_inputs", "symmetric_coupling_basis"]

# Order at which upstream restricts coupled irreps to natural parity, and the largest l kept.
_FILTERED_ORDER = 4
_FILTERED_MAX_L = 11


class _Slot(NamedTuple):
    """One irrep copy of the per-channel input: its offset in x and the irrep."""

    offset: int
    ir: o3.Irrep


class _Tree(NamedTuple):
    """A partial coupling tree: inputs used so far, coupled irreps so far, and the
    small dense block (dim ir, dim slot_1, .., dim slot_n) it contributes."""

    slots: Tuple[int, ...]
    coupled: Tuple[o3.Irrep, ...]
    block: torch.Tensor


def _as_irrep(irrep: Union[str, o3.Irrep, o3.Irreps]) -> o3.Irrep:
    """Accept '1o', o3.Irrep or a single-irrep o3.Irreps such as '1x1o'."""
    if isinstance(irrep, o3.Irrep):
        return irrep
    if isinstance(irrep, str):
        try:
            return o3.Irrep(irrep)
        except ValueError:
            irrep = o3.Irreps(irrep)
    irreps = o3.Irreps(irrep)
    if len(irreps) != 1 or irreps[0].mul != 1:
        raise ValueError(f"expected a single output irrep, got {irreps}")
    return irreps[0].ir


def _slots(irreps_in: o3.Irreps) -> List[_Slot]:
    """Every irrep copy of irreps_in with its offset (multiplicities unrolled)."""
    slots, offset = [], 0
    for mul, ir in irreps_in:
        for _ in range(mul):
            slots.append(_Slot(offset, ir))
            offset += ir.dim
    return slots


@functools.lru_cache(maxsize=None)
def _coupling_coefficients(l_out: int, l_left: int, l_in: int) -> torch.Tensor:
    """Real CG block [m_out, m_left, m_in] with component normalisation (float64, cached)."""
    return o3.wigner_3j(l_out, l_left, l_in, dtype=torch.float64) * math.sqrt(2 * l_out + 1)


def _allowed(ir: o3.Irrep, order: int) -> bool:
    """Whether a coupled (intermediate or final) irrep is kept at this order."""
    if order != _FILTERED_ORDER:
        return True
    return ir.p == (-1) ** ir.l and ir.l <= _FILTERED_MAX_L


def _complete_trees(slots: List[_Slot], target: o3.Irrep, order: int) -> List[_Tree]:
    """All coupling trees of `order` inputs that end in `target`, in upstream column order.

    Depth-first over partial trees, so each shared prefix block is computed once. A
    partial tree whose irrep cannot reach target.l with the remaining inputs is dropped
    early (|l - L| must not exceed remaining * max input l); this only skips trees that
    could never end in target, so it changes nothing but the running time.
    """
    max_l_in = max(slot.ir.l for slot in slots)
    done: List[_Tree] = []

    def extend(tree: _Tree, current: o3.Irrep) -> None:
        used = len(tree.slots)
        if used == order:
            if current == target:
                done.append(tree)
            return
        remaining_after = order - used - 1
        for index, slot in enumerate(slots):
            for coupled in current * slot.ir:  # l from |l1-l2| to l1+l2, parity p1*p2
                if not _allowed(coupled, order):
                    continue
                if abs(coupled.l - target.l) > remaining_after * max_l_in:
                    continue
                if remaining_after == 0 and coupled != target:
                    continue
                cg = _coupling_coefficients(coupled.l, current.l, slot.ir.l)
                # block[j, a...] * cg[i, j, b] -> [i, a..., b]
                block = torch.tensordot(cg, tree.block, dims=([1], [0]))  # [i, b, a...]
                block = block.movedim(1, -1)
                extend(_Tree(tree.slots + (index,), tree.coupled + (coupled,), block), coupled)

    for index, slot in enumerate(slots):
        start = _Tree((index,), (), torch.eye(slot.ir.dim, dtype=torch.float64))
        extend(start, slot.ir)

    def column_key(tree: _Tree) -> tuple:
        # Upstream sorts (stably) by the newest coupled irrep at every depth, so the order is
        # lexicographic in (ir_nu, ir_{nu-1}, .., ir_2) and then in the slots.
        irreps_newest_first = tuple((ir.l, ir.p) for ir in reversed(tree.coupled))
        return irreps_newest_first + tree.slots

    return sorted(done, key=column_key)


def _basis_of_order(
    irreps_in: o3.Irreps, target: o3.Irrep, order: int, dtype: torch.dtype
) -> torch.Tensor:
    """Dense U for one order: blocks of the coupling trees placed at their input slots."""
    slots = _slots(irreps_in)
    dim_in = irreps_in.dim
    trees = _complete_trees(slots, target, order) if slots else []
    basis = torch.zeros((target.dim,) + (dim_in,) * order + (len(trees),), dtype=torch.float64)
    for column, tree in enumerate(trees):
        where = tuple(
            slice(slots[i].offset, slots[i].offset + slots[i].ir.dim) for i in tree.slots
        )
        basis[(slice(None),) + where + (column,)] = tree.block
    if target.l == 0:
        basis = basis[0]
    return basis.to(dtype)


def coupling_basis(
    irreps_in: Union[str, o3.Irreps],
    irrep_out: Union[str, o3.Irrep, o3.Irreps],
    correlation: int,
    dtype: torch.dtype = torch.float64,
) -> List[torch.Tensor]:
    """Coupling bases [U_1, .., U_correlation] of the symmetric contraction.

    irreps_in: per-channel irreps of the node features (e.g. '1x0e+1x1o+1x2e+1x3o').
    irrep_out: the output irrep L (an Irrep, '1o', or a single-irrep Irreps '1x1o').
    U_nu has shape (2L+1, dim_in, .., dim_in, num_params_nu), without the first axis when
    L = 0; see the module docstring for the conventions (equal to upstream's files).
    Computed in float64 and cast to `dtype`; deterministic.
    """
    if correlation < 1:
        raise ValueError(f"correlation must be >= 1, got {correlation}")
    irreps_in = o3.Irreps(irreps_in)
    target = _as_irrep(irrep_out)
    return [_basis_of_order(irreps_in, target, nu, dtype) for nu in range(1, correlation + 1)]


def symmetrize_inputs(basis: torch.Tensor, order: int) -> torch.Tensor:
    """Average U over all permutations of its `order` input axes (the second-to-last ones).

    This is the part of U the contraction actually sees, since the same x is contracted
    on every input axis.
    """
    first = basis.dim() - 1 - order
    inputs = list(range(first, first + order))
    total = torch.zeros_like(basis)
    perms = list(itertools.permutations(inputs))
    for perm in perms:
        total.add_(basis.permute(list(range(first)) + list(perm) + [basis.dim() - 1]))
    return total.div_(len(perms))


def symmetric_coupling_basis(
    irreps_in: Union[str, o3.Irreps],
    irrep_out: Union[str, o3.Irrep, o3.Irreps],
    order: int,
    dtype: torch.dtype = torch.float64,
    rtol: float = 1e-9,
) -> torch.Tensor:
    """An independent, input-symmetric basis spanning the same functions as U_order.

    Symmetrises the coupling trees and keeps an orthogonal basis of their span (SVD),
    with the same component normalisation (each column has squared norm 2L+1). Its column
    count is the dimension of the space of symmetric equivariant couplings that U_order
    reaches (for order 4 restricted by the natural-parity filter, see module docstring).
    Not upstream's layout: useful to analyse or to build a minimal parameterisation.
    """
    target = _as_irrep(irrep_out)
    full = coupling_basis(irreps_in, target, order, dtype=torch.float64)[-1]
    sym = symmetrize_inputs(full, order)
    shape = sym.shape
    if shape[-1] == 0:
        return sym.to(dtype)
    flat = sym.reshape(math.prod(shape[:-1]), shape[-1])
    left, singular, _ = torch.linalg.svd(flat, full_matrices=False)
    # Tree columns have norm sqrt(2L+1); a symmetrised column that (nearly) vanishes was
    # purely antisymmetric, so the tolerance is absolute on that scale.
    rank = int((singular > rtol * math.sqrt(target.dim)).sum())
    columns = left[:, :rank]
    # Fix the sign of each column (SVD signs are arbitrary): largest entry positive.
    pivots = columns.abs().argmax(dim=0)
    signs = torch.sign(columns[pivots, torch.arange(rank)])
    columns = columns * signs * math.sqrt(target.dim)
    return columns.reshape(shape[:-1] + (rank,)).to(dtype)
