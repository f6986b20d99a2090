"""Tests of the symmetric-contraction coupling bases (mace.modules.coupling).

Three independent references are used:
* the U matrices stored in model files written by upstream MACE (exact layout);
* the equivariance constraint itself, checked with random rotations and inversions;
* counts from character theory (dimensions of Hom(V^n, L) and Hom(Sym^n V, L)), and for
  small cases the null space of the equivariance constraints.
"""
import glob
import math
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
import torch

import mace  # noqa: F401  (lets e3nn 0.4.4 load its constants under torch >= 2.6)
from e3nn import o3

from mace.modules.coupling import coupling_basis, symmetric_coupling_basis, symmetrize_inputs
from tests.shared import shared_folder

MAX_ELL_3 = "1x0e+1x1o+1x2e+1x3o"
MAX_ELL_2 = "1x0e+1x1o+1x2e"


# ----------------------------------------------------------------------------- helpers


def _with_output_axis(basis: torch.Tensor, irrep: o3.Irrep) -> torch.Tensor:
    """Restore the output axis that L = 0 bases drop, so all bases look alike."""
    return basis.unsqueeze(0) if irrep.l == 0 else basis


def _num_params(basis: torch.Tensor) -> int:
    return basis.shape[-1]


def _flat(basis: torch.Tensor) -> torch.Tensor:
    return basis.reshape(math.prod(basis.shape[:-1]), basis.shape[-1])


def _orthonormal_span(matrix: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis of the column span of a tall matrix, through its small Gram matrix
    (much faster than an SVD of the tall matrix). Singular values below tol * max(1, s_max)
    count as zero; genuine ones here are O(0.1) or larger, numerical zeros ~1e-15."""
    if matrix.shape[-1] == 0:
        return matrix
    values, vectors = torch.linalg.eigh(matrix.T @ matrix)
    keep = values > (tol * max(1.0, float(values.max()) ** 0.5)) ** 2
    return (matrix @ vectors[:, keep]) / values[keep].sqrt()


def _assert_near(actual: torch.Tensor, expected: torch.Tensor, atol: float, msg: str = "") -> None:
    """Max-abs comparison (torch.testing.assert_close pulls in slow imports on first use)."""
    assert actual.shape == expected.shape, (msg, actual.shape, expected.shape)
    error = float((actual - expected).abs().max()) if actual.numel() else 0.0
    assert error <= atol, (msg, error)


def _rank(matrix: torch.Tensor) -> int:
    return _orthonormal_span(matrix).shape[-1]


def _equivariance_error(basis: torch.Tensor, irreps_in: str, irrep: o3.Irrep, order: int,
                        rotation: torch.Tensor) -> float:
    """max |D_out(R) U - U (D_in(R) on every input axis)| (relative to max |U|)."""
    u = _with_output_axis(basis, irrep)
    d_in = o3.Irreps(irreps_in).D_from_matrix(rotation).to(u.dtype)
    d_out = irrep.D_from_matrix(rotation).to(u.dtype)
    left = torch.tensordot(d_out, u, dims=([1], [0])).movedim(-1, 1)  # [m, k, i_1..i_n]
    right = u
    for _ in range(order):
        # U'[.., i, ..] = sum_j U[.., j, ..] D_in[j, i]; contracting the first input axis and
        # appending the result cycles the axes, ending as [m, k, i_1..i_n]
        right = torch.tensordot(right, d_in, dims=([1], [0]))
    if order == 0:
        right = right.movedim(-1, 1)
    if u.numel() == 0:
        return 0.0
    scale = float(u.abs().max())
    return float(right.sub_(left).abs_().max()) / scale


def _rotations(count: int, seed: int) -> List[torch.Tensor]:
    """Random proper rotations and the same composed with inversion (parity)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        q = torch.randn(4, generator=generator, dtype=torch.float64)
        rotation = o3.quaternion_to_matrix(q / q.norm())
        out += [rotation, -rotation]
    return out


def _partitions(n: int, largest: int = None) -> Iterator[Tuple[int, ...]]:
    largest = n if largest is None else largest
    if n == 0:
        yield ()
        return
    for part in range(min(n, largest), 0, -1):
        for rest in _partitions(n - part, part):
            yield (part,) + rest


def _character_counts(irreps_in: str, irrep: o3.Irrep, order: int) -> Tuple[int, int]:
    """(dim Hom_O(3)(Sym^n V, L), dim Hom_O(3)(V^(x)n, L)) by integrating characters.

    O(3) = SO(3) u (-1)SO(3); class functions of SO(3) depend on the rotation angle t with
    Haar density (1 - cos t)/(2 pi) on [0, 2 pi). Characters here are trigonometric
    polynomials of low degree, so a uniform grid integrates them exactly. The character
    of Sym^n follows from the cycle index of S_n: sum over cycle types lambda of
    prod_i chi_V(g^lambda_i) / z_lambda.
    """
    grid = 2 * np.pi * np.arange(720) / 720
    weight = 1.0 - np.cos(grid)

    def chi_l(l: int, angle: np.ndarray) -> np.ndarray:
        return sum(np.cos(m * angle) for m in range(-l, l + 1))

    def chi_in(power: int, improper: bool) -> np.ndarray:
        # (-R)^k = (-1)^k R^k: an irrep (l, p) picks up p^k on the improper coset
        return sum(
            mul * (ir.p**power if improper else 1) * chi_l(ir.l, power * grid)
            for mul, ir in o3.Irreps(irreps_in)
        )

    sym_total = full_total = 0.0
    for improper in (False, True):
        target = (irrep.p if improper else 1) * chi_l(irrep.l, grid)
        chi_sym = 0.0
        for cycle_type in _partitions(order):
            z = 1
            for length in set(cycle_type):
                repeats = cycle_type.count(length)
                z *= length**repeats * math.factorial(repeats)
            chi_sym = chi_sym + np.prod([chi_in(k, improper) for k in cycle_type], axis=0) / z
        chi_full = chi_in(1, improper) ** order
        sym_total += 0.5 * np.mean(chi_sym * target * weight)
        full_total += 0.5 * np.mean(chi_full * target * weight)
    assert abs(sym_total - round(sym_total)) < 1e-8 and abs(full_total - round(full_total)) < 1e-8
    return int(round(sym_total)), int(round(full_total))


def _tree_count(irreps_in: str, irrep: o3.Irrep, order: int) -> int:
    """Number of left-to-right coupling trees ending in `irrep`, by multiplicity bookkeeping
    (no tensors). Order 4 keeps only coupled irreps (l, (-1)^l) with l <= 11, as upstream."""
    inputs = [ir for mul, ir in o3.Irreps(irreps_in) for _ in range(mul)]
    counts: Dict[o3.Irrep, int] = {}
    for ir in inputs:
        counts[ir] = counts.get(ir, 0) + 1
    for _ in range(order - 1):
        new: Dict[o3.Irrep, int] = {}
        for left, n_left in counts.items():
            for ir in inputs:
                for coupled in left * ir:
                    if order == 4 and (coupled.p != (-1) ** coupled.l or coupled.l > 11):
                        continue
                    new[coupled] = new.get(coupled, 0) + n_left
        counts = new
    return counts.get(irrep, 0)


def _null_space_dim(irreps_in: str, irrep: o3.Irrep, order: int) -> int:
    """dim of {T : D_out(g) T = T D_in(g)^(x)n for all g}, from a few random g (small cases)."""
    dim_in = o3.Irreps(irreps_in).dim
    constraints = []
    for rotation in _rotations(2, seed=11):
        d_in = o3.Irreps(irreps_in).D_from_matrix(rotation)
        big = d_in
        for _ in range(order - 1):
            big = torch.kron(big, d_in)
        d_out = irrep.D_from_matrix(rotation)
        # vec(D_out T - T big) with T of shape (dim_out, dim_in^n), row-major vec
        eye_out = torch.eye(irrep.dim, dtype=torch.float64)
        eye_in = torch.eye(dim_in**order, dtype=torch.float64)
        # (torch.kron wants contiguous operands)
        constraints.append(
            torch.kron(d_out.contiguous(), eye_in) - torch.kron(eye_out, big.T.contiguous())
        )
    stacked = torch.cat(constraints)
    singular = torch.linalg.svdvals(stacked)
    return int((singular < 1e-9).sum())


# ------------------------------------------------------------- 1. upstream model files


def _upstream_contractions() -> List[Tuple[str, str, o3.Irrep, int, List[torch.Tensor]]]:
    shared = shared_folder()
    models_dir = shared / "conformance" / "models"
    files = sorted(glob.glob(str(models_dir / "*.model")))
    tools_dir = shared / "tools"
    if not files or not (tools_dir / "inspect_model.py").is_file():
        pytest.skip(f"no upstream model files / inspect tool under {shared}")
    sys.path.insert(0, str(tools_dir))
    try:
        from inspect_model import load  # stubs mace classes, keeps buffers and attributes
    finally:
        sys.path.remove(str(tools_dir))
    found = []
    for path in files:
        model = load(path)
        for name, module in model.named_modules():
            if not getattr(type(module), "__stub__", "").endswith(".SymmetricContraction"):
                continue
            for index, (_, irrep) in enumerate(o3.Irreps(module.irreps_out)):
                contraction = module.contractions[index]
                stored = [
                    getattr(contraction, f"U_matrix_{nu}").detach().to(torch.float64)
                    for nu in range(1, contraction.correlation + 1)
                ]
                where = f"{Path(path).name}:{name}.contractions.{index}"
                found.append(
                    (where, str(contraction.coupling_irreps), irrep, contraction.correlation, stored)
                )
    assert found, "model files without any SymmetricContraction"
    return found


@pytest.fixture(scope="module")
def upstream_contractions():
    return _upstream_contractions()


def test_matches_upstream_files(upstream_contractions):
    computed = {}  # several contractions share a layout; build and analyse each once
    for where, irreps_in, irrep, correlation, stored in upstream_contractions:
        key = (irreps_in, str(irrep), correlation)
        if key not in computed:
            bases = coupling_basis(irreps_in, irrep, correlation)
            spans = [_orthonormal_span(_flat(symmetrize_inputs(u, nu)))
                     for nu, u in enumerate(bases, start=1)]
            computed[key] = (bases, spans)
        ours, spans = computed[key]
        assert len(ours) == len(stored) == correlation, where
        for nu, (mine, span, theirs) in enumerate(zip(ours, spans, stored), start=1):
            label = f"{where} U_matrix_{nu}"
            assert mine.shape == theirs.shape, label
            # Same symmetric column space (what the contraction sees) and same rank.
            theirs_sym = _flat(symmetrize_inputs(theirs, nu))
            assert span.shape[-1] == _rank(theirs_sym), label
            residual = theirs_sym - span @ (span.T @ theirs_sym)
            assert float(residual.norm()) < 1e-10 * float(theirs_sym.norm()), label
            # Stronger: the layout itself (column order, signs, normalisation) is upstream's.
            assert float((mine - theirs).abs().max()) < 1e-12, label


def test_upstream_normalisation_convention(upstream_contractions):
    """Stored columns are orthogonal with squared norm 2L+1; ours share the convention."""
    for where, irreps_in, irrep, correlation, stored in upstream_contractions:
        for nu, theirs in enumerate(stored, start=1):
            gram = _flat(theirs).T @ _flat(theirs)
            expected = irrep.dim * torch.eye(gram.shape[0], dtype=torch.float64)
            _assert_near(gram, expected, 1e-12, f"{where} {nu}")


# ----------------------------------------------------------------- 2. equivariance


@pytest.mark.parametrize(
    "irreps_in, irrep, correlation",
    [
        (MAX_ELL_3, "0e", 3),
        (MAX_ELL_3, "1o", 3),
        (MAX_ELL_3, "2e", 3),
        (MAX_ELL_3, "3o", 2),
        (MAX_ELL_3, "0e", 4),
        ("2x0e+1x1e+1x1o+1x0o", "0o", 3),  # multiplicities > 1 and pseudo-parity inputs
        ("2x0e+1x1e+1x1o+1x0o", "1e", 3),
    ],
)
def test_equivariant_under_rotations_and_inversion(irreps_in, irrep, correlation):
    irrep = o3.Irrep(irrep)
    bases = coupling_basis(irreps_in, irrep, correlation)
    for nu, basis in enumerate(bases, start=1):
        elements = _rotations(1, seed=nu)  # a proper rotation R and the improper -R
        if basis.numel() > 4_000_000:
            # big (16-dim, order 4): -R alone, as D(-R) = parity * D(R) probes both the
            # rotation and the parity conventions; keeps the file fast
            elements = elements[1:]
        for rotation in elements:
            error = _equivariance_error(basis, irreps_in, irrep, nu, rotation)
            assert error < 1e-10, (irreps_in, irrep, nu, error)


def test_equivariance_check_detects_wrong_parity():
    """Guard on the check above: the 1o basis fails when read as a 1e map under inversion."""
    basis = coupling_basis(MAX_ELL_3, "1o", 2)[-1]
    rotation = _rotations(1, seed=3)[1]  # improper
    assert _equivariance_error(basis, MAX_ELL_3, o3.Irrep("1e"), 2, rotation) > 0.1


# --------------------------------------------------- 3. symmetry view, determinism, dtype


def test_deterministic_and_dtype():
    first = coupling_basis(MAX_ELL_3, "1o", 3)
    second = coupling_basis(MAX_ELL_3, o3.Irreps("1x1o"), 3)
    for a, b in zip(first, second):
        assert a.dtype == torch.float64
        assert torch.equal(a, b)
    single = coupling_basis(MAX_ELL_3, "1o", 3, dtype=torch.float32)
    assert all(u.dtype == torch.float32 for u in single)
    _assert_near(single[-1].double(), first[-1], 1e-6)
    sym_a = symmetric_coupling_basis(MAX_ELL_2, "1o", 3)
    sym_b = symmetric_coupling_basis(MAX_ELL_2, "1o", 3)
    assert torch.equal(sym_a, sym_b)


@pytest.mark.parametrize(
    "irreps_in, irrep, order",
    [(MAX_ELL_3, "0e", 3), (MAX_ELL_3, "1o", 3), (MAX_ELL_3, "2e", 2),
     (MAX_ELL_2, "1o", 4)],
)
def test_symmetric_view(irreps_in, irrep, order):
    """The tree basis is not symmetric, but its symmetrisation spans exactly the symmetric
    equivariant space; symmetric_coupling_basis is a symmetric orthogonal basis of it, and
    the contraction with x^n cannot tell U from sym(U)."""
    irrep = o3.Irrep(irrep)
    tree = coupling_basis(irreps_in, irrep, order)[-1]
    sym_basis = symmetric_coupling_basis(irreps_in, irrep, order)
    expected_sym, _ = _character_counts(irreps_in, irrep, order)
    assert sym_basis.shape == tree.shape[:-1] + (expected_sym,)
    # symmetric in every pair of input axes
    first = sym_basis.dim() - 1 - order
    for a in range(first, first + order):
        for b in range(a + 1, first + order):
            assert float((sym_basis - sym_basis.transpose(a, b)).abs().max()) < 1e-13
    # orthogonal, component normalisation
    gram = _flat(sym_basis).T @ _flat(sym_basis)
    _assert_near(gram, irrep.dim * torch.eye(expected_sym, dtype=torch.float64), 1e-10)
    # same span as the symmetrised trees
    tree_sym = _flat(symmetrize_inputs(tree, order))
    q = _flat(sym_basis) / math.sqrt(irrep.dim)
    assert float((tree_sym - q @ (q.T @ tree_sym)).norm()) < 1e-10 * float(tree_sym.norm())
    assert _rank(tree_sym) == expected_sym
    # equivariant as well
    for rotation in _rotations(1, seed=5):
        assert _equivariance_error(sym_basis, irreps_in, irrep, order, rotation) < 1e-10
    # contracting with the same x on every input axis sees only the symmetric part
    x = torch.randn(o3.Irreps(irreps_in).dim, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    full, symmetric = tree, symmetrize_inputs(tree, order)
    for _ in range(order):
        full = torch.tensordot(full, x, dims=([full.dim() - 2], [0]))
        symmetric = torch.tensordot(symmetric, x, dims=([symmetric.dim() - 2], [0]))
    _assert_near(full, symmetric, 1e-12)


def test_tree_basis_is_not_symmetric():
    """Documented fact (as in upstream's files): order >= 2 trees are not input-symmetric."""
    tree = coupling_basis(MAX_ELL_3, "1o", 2)[-1]
    assert float((tree - tree.transpose(1, 2)).abs().max()) > 0.1


# --------------------------------------------------------- 4. cases beyond the files


@pytest.mark.parametrize("correlation", [1, 2, 4])
@pytest.mark.parametrize("irrep", ["0e", "1o", "2e"])
def test_max_ell_2_inputs(irrep, correlation):
    irrep = o3.Irrep(irrep)
    dim_in = o3.Irreps(MAX_ELL_2).dim
    bases = coupling_basis(MAX_ELL_2, irrep, correlation)
    assert len(bases) == correlation
    for nu, basis in enumerate(bases, start=1):
        # shapes; lower orders equal the standalone computation of that order
        lead = () if irrep.l == 0 else (irrep.dim,)
        k = _num_params(basis)
        assert basis.shape == lead + (dim_in,) * nu + (k,)
        assert torch.equal(basis, coupling_basis(MAX_ELL_2, irrep, nu)[-1])
        # counts: trees by bookkeeping; all of Hom(V^n, L) for orders != 4 (complete basis);
        # symmetrised span = Hom(Sym^n V, L) at every order, order 4's filter included
        expected_sym, expected_full = _character_counts(MAX_ELL_2, irrep, nu)
        assert k == _tree_count(MAX_ELL_2, irrep, nu)
        if nu != 4:
            assert k == expected_full
        else:
            assert k < expected_full
        assert _rank(_flat(symmetrize_inputs(basis, nu))) == expected_sym
        # normalisation: orthogonal columns of squared norm 2L+1 (hence independent)
        gram = _flat(basis).T @ _flat(basis)
        _assert_near(gram, irrep.dim * torch.eye(k, dtype=torch.float64), 1e-10)
        for rotation in _rotations(1, seed=7 + nu):
            assert _equivariance_error(basis, MAX_ELL_2, irrep, nu, rotation) < 1e-10


@pytest.mark.parametrize(
    "irreps_in, irrep, order",
    [(MAX_ELL_2, "0e", 2), (MAX_ELL_2, "1o", 2), (MAX_ELL_2, "2e", 2),
     ("1x0e+1x1o", "1o", 3), ("1x0e+1x1o", "0e", 3), ("1x0e+1x1o", "1e", 3)],
)
def test_counts_against_null_space(irreps_in, irrep, order):
    """The character count, and our number of columns, equal the dimension of the solution
    space of the equivariance constraints (found numerically)."""
    irrep = o3.Irrep(irrep)
    _, expected_full = _character_counts(irreps_in, irrep, order)
    assert _null_space_dim(irreps_in, irrep, order) == expected_full
    assert _num_params(coupling_basis(irreps_in, irrep, order)[-1]) == expected_full


def test_character_counts_of_file_layout():
    """Counts for 1x0e+1x1o+1x2e+1x3o, order 3, as seen in upstream's files: 23 trees
    (8 symmetric) for 0e and 51 trees (12 symmetric) for 1o."""
    assert _character_counts(MAX_ELL_3, o3.Irrep("0e"), 3) == (8, 23)
    assert _character_counts(MAX_ELL_3, o3.Irrep("1o"), 3) == (12, 51)
    assert _num_params(coupling_basis(MAX_ELL_3, "0e", 3)[-1]) == 23
    assert _num_params(coupling_basis(MAX_ELL_3, "1o", 3)[-1]) == 51


def test_unreachable_outputs_give_empty_bases():
    # 1o from scalars only: no column at any order, shapes otherwise as usual
    bases = coupling_basis("1x0e", "1o", 3)
    assert [tuple(b.shape) for b in bases] == [(3, 1, 0), (3, 1, 1, 0), (3, 1, 1, 1, 0)]
    # order 4 keeps only natural-parity couplings, so 1e has no order-4 trees
    bases = coupling_basis(MAX_ELL_2, "1e", 4)
    assert _num_params(bases[1]) > 0  # 1o x 1o -> 1e exists at order 2
    assert bases[3].shape == (3,) + (9,) * 4 + (0,)
    sym = symmetric_coupling_basis(MAX_ELL_2, "1e", 2)  # antisymmetric only -> nothing
    assert sym.shape == (3, 9, 9, 0)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        coupling_basis(MAX_ELL_2, "1x0e+1x1o", 2)
    with pytest.raises(ValueError):
        coupling_basis(MAX_ELL_2, "0e", 0)
