"""Edge-length features: radial bases, distance transforms, smooth cutoffs, ZBL repulsion.

Every class keeps its constants as buffers (parameters where upstream lets them train) named
as in upstream model files, so an unpickled upstream object and one built here run the same
``forward``. The element-aware ones (distance transforms, ZBL) read each edge's atomic
numbers off the one-hot node attributes and the model's ``atomic_numbers`` table.
"""
import math
from typing import List, Sequence, Tuple, Union

import ase.data
import torch

from mace.modules.utils import scatter_sum

# Ziegler-Biersack-Littmark universal screening: phi(x) = sum_i c_i exp(-d_i x); the c_i
# are a buffer of the model files, the d_i are fixed.
ZBL_EXPONENTS = (3.2, 0.9423, 0.4028, 0.2016)
ZBL_COEFFICIENTS = (0.1818, 0.5099, 0.2802, 0.02817)
BOHR_RADIUS = 0.529  # Angstrom, as ZBL's screening length uses it
COULOMB_CONSTANT = 14.3996  # e^2 / (4 pi eps0) in eV Angstrom


def _store(
    module: torch.nn.Module, name: str, value: Union[float, Sequence[float], torch.Tensor], trainable: bool
) -> None:
    """A constant of ``module`` as a buffer, or as a parameter when it is to be fitted."""
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
    if trainable:
        setattr(module, name, torch.nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


def _covalent_radii() -> torch.Tensor:
    """ASE's covalent radius of every element, indexed by atomic number (0 is a dummy)."""
    return torch.tensor(ase.data.covalent_radii, dtype=torch.get_default_dtype())


def edge_atomic_numbers(
    node_attrs: torch.Tensor, edge_index: torch.Tensor, atomic_numbers: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Atomic numbers of each edge's sender and receiver, [n_edges, 1] each (int64)."""
    node_numbers = atomic_numbers[torch.argmax(node_attrs, dim=1)].unsqueeze(-1)
    return node_numbers[edge_index[0]], node_numbers[edge_index[1]]


def polynomial_envelope(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0.

    x is r / r_max; u goes to zero at x = 1 with p - 1 smooth derivatives.
    """
    p = p.to(x.dtype)
    envelope = (
        1.0
        - 0.5 * (p + 1.0) * (p + 2.0) * torch.pow(x, p)
        + p * (p + 2.0) * torch.pow(x, p + 1.0)
        - 0.5 * p * (p + 1.0) * torch.pow(x, p + 2.0)
    )
    return envelope * (x < 1.0)


class BesselBasis(torch.nn.Module):
    """Sine Bessel functions sqrt(2/r_max) sin(n pi r / r_max) / r, n = 1..num_basis.

    They are the radial eigenfunctions of a particle in a sphere of radius r_max, a
    complete basis that vanishes at r_max.
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        frequencies = (math.pi / r_max) * torch.linspace(
            1.0, num_basis, num_basis, dtype=torch.get_default_dtype()
        )
        _store(self, "bessel_weights", frequencies, trainable)
        _store(self, "r_max", r_max, trainable=False)
        _store(self, "prefactor", math.sqrt(2.0 / r_max), trainable=False)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """lengths: [n_edges, 1] -> [n_edges, num_basis]"""
        return self.prefactor * torch.sin(self.bessel_weights * lengths) / lengths

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(r_max={float(self.r_max)}, "
            f"num_basis={len(self.bessel_weights)})"
        )


class GaussianBasis(torch.nn.Module):
    """Gaussians exp(-(r - mu_k)^2 / (2 w^2)) centred on num_basis points spread evenly over
    [0, r_max], their width w the spacing of the centres (``coeff`` = -1 / (2 w^2))."""

    def __init__(self, r_max: float, num_basis: int = 128, trainable: bool = False) -> None:
        super().__init__()
        _store(self, "gaussian_weights", torch.linspace(0.0, r_max, num_basis), trainable)
        self.coeff = -0.5 / (r_max / (num_basis - 1)) ** 2

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """lengths: [n_edges, 1] -> [n_edges, num_basis]"""
        return torch.exp(self.coeff * torch.pow(lengths - self.gaussian_weights, 2))


class ChebychevBasis(torch.nn.Module):
    """Chebyshev polynomials of the first kind T_n(r), n = 1..num_basis, of the length as
    given (upstream does not rescale it to [-1, 1]).

    Computed by the recurrence T_(k+1) = 2 r T_k - T_(k-1): torch's
    ``chebyshev_polynomial_t`` gives the same values but no derivative, so forces through it
    would miss the radial term.
    """

    def __init__(self, r_max: float, num_basis: int = 8) -> None:
        super().__init__()
        self.register_buffer("n", torch.arange(1, num_basis + 1).unsqueeze(0))
        self.num_basis = num_basis
        self.r_max = r_max

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """lengths: [n_edges, 1] -> [n_edges, num_basis]"""
        polynomials: List[torch.Tensor] = [torch.ones_like(lengths), lengths]
        while len(polynomials) <= int(self.n.max()):
            polynomials.append(2.0 * lengths * polynomials[-1] - polynomials[-2])
        return torch.cat(polynomials, dim=-1)[:, self.n[0]]

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(r_max={self.r_max}, num_basis={self.num_basis})"


class PolynomialCutoff(torch.nn.Module):
    """The polynomial envelope of degree p (:func:`polynomial_envelope`) at a fixed r_max."""

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(p, dtype=torch.int32))
        self.register_buffer("r_max", torch.tensor(r_max, dtype=torch.get_default_dtype()))

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """lengths: [n_edges, 1] -> [n_edges, 1]"""
        return polynomial_envelope(lengths / self.r_max, self.p)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={int(self.p)}, r_max={float(self.r_max)})"


class AgnesiTransform(torch.nn.Module):
    """Edge length -> 1 / (1 + a x^q / (1 + x^(q - p))), x = r / r_0 with r_0 the mean covalent
    radius of the pair (ACEpotentials.jl's Agnesi transform, JCP 2023).

    It maps [0, inf) onto (0, 1], finely resolving lengths near bonding distance for every
    element pair alike.
    """

    def __init__(self, q: float = 0.9183, p: float = 4.5791, a: float = 1.0805, trainable: bool = False) -> None:
        super().__init__()
        self.register_buffer("covalent_radii", _covalent_radii())
        for name, value in (("q", q), ("p", p), ("a", a)):
            _store(self, name, value, trainable)

    def forward(
        self, lengths: torch.Tensor, node_attrs: torch.Tensor, edge_index: torch.Tensor, atomic_numbers: torch.Tensor
    ) -> torch.Tensor:
        """lengths: [n_edges, 1] -> transformed lengths [n_edges, 1]"""
        sender, receiver = edge_atomic_numbers(node_attrs, edge_index, atomic_numbers)
        r_0 = 0.5 * (self.covalent_radii[sender] + self.covalent_radii[receiver])
        x = lengths / r_0
        return torch.reciprocal(1 + self.a * torch.pow(x, self.q) / (1 + torch.pow(x, self.q - self.p)))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(a={float(self.a):.4f}, q={float(self.q):.4f}, p={float(self.p):.4f})"


class SoftTransform(torch.nn.Module):
    """Edge length -> p_0 + (r - p_0) s(r), s a tanh step from 0 to 1 centred between
    p_0 = 3/4 r_0 and p_1 = 4/3 r_0 (r_0: the pair's summed covalent radii), of steepness
    alpha / (p_1 - p_0).

    Lengths well below bonding distance are clamped smoothly to p_0; longer ones pass.
    """

    def __init__(self, alpha: float = 4.0, trainable: bool = False) -> None:
        super().__init__()
        self.register_buffer("covalent_radii", _covalent_radii())
        _store(self, "alpha", alpha, trainable)

    def forward(
        self, lengths: torch.Tensor, node_attrs: torch.Tensor, edge_index: torch.Tensor, atomic_numbers: torch.Tensor
    ) -> torch.Tensor:
        """lengths: [n_edges, 1] -> transformed lengths [n_edges, 1]"""
        sender, receiver = edge_atomic_numbers(node_attrs, edge_index, atomic_numbers)
        r_0 = self.covalent_radii[sender] + self.covalent_radii[receiver]
        low, high = 0.75 * r_0, (4 / 3) * r_0
        step = 0.5 * (1.0 + torch.tanh(self.alpha / (high - low) * (lengths - 0.5 * (low + high))))
        return low + (lengths - low) * step

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(alpha={float(self.alpha):.4f})"


class ZBLBasis(torch.nn.Module):
    """Ziegler-Biersack-Littmark screened nuclear repulsion between every pair of neighbours.

    V(r) = k Z_u Z_v / r phi(r / a), a = a_prefactor * 0.529 / (Z_u^a_exp + Z_v^a_exp),
    cut off smoothly (polynomial envelope of degree p) at the pair's summed covalent radii:
    it keeps atoms from collapsing where the data have no close contacts to learn from.
    """

    # The constants as class attributes, which TorchScript compiles in (unlike globals).
    __constants__ = ["exponents", "bohr_radius", "coulomb_constant"]
    exponents = ZBL_EXPONENTS
    bohr_radius = BOHR_RADIUS
    coulomb_constant = COULOMB_CONSTANT

    def __init__(self, p: int = 6, trainable: bool = False) -> None:
        super().__init__()
        self.register_buffer("c", torch.tensor(ZBL_COEFFICIENTS, dtype=torch.get_default_dtype()))
        self.register_buffer("p", torch.tensor(p, dtype=torch.int32))
        self.register_buffer("covalent_radii", _covalent_radii())
        _store(self, "a_exp", 0.300, trainable)
        _store(self, "a_prefactor", 0.4543, trainable)

    def forward(
        self, lengths: torch.Tensor, node_attrs: torch.Tensor, edge_index: torch.Tensor, atomic_numbers: torch.Tensor
    ) -> torch.Tensor:
        """lengths: [n_edges, 1] -> repulsion energy per node [n_nodes]; each edge gives half
        of V to its receiver (both directions are edges)."""
        sender, receiver = edge_atomic_numbers(node_attrs, edge_index, atomic_numbers)
        z_u, z_v = sender.to(lengths.dtype), receiver.to(lengths.dtype)
        screening_length = self.a_prefactor * self.bohr_radius / (torch.pow(z_u, self.a_exp) + torch.pow(z_v, self.a_exp))
        x = lengths / screening_length
        screening = torch.zeros_like(x)
        for index, exponent in enumerate(self.exponents):
            screening = screening + self.c[index] * torch.exp(-exponent * x)
        energy = self.coulomb_constant * z_u * z_v / lengths * screening
        r_max = self.covalent_radii[sender] + self.covalent_radii[receiver]
        edge_energy = 0.5 * energy * polynomial_envelope(lengths / r_max, self.p)
        return scatter_sum(edge_energy, edge_index[1], dim_size=node_attrs.shape[0]).squeeze(-1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(c={self.c.tolist()})"


class RadialMLP(torch.nn.Module):
    """Dense layers over edge features, each hidden one followed by LayerNorm and SiLU
    (the radial network of the non-linear interaction block); ``hs``: the widths, input first."""

    def __init__(self, hs: Sequence[int]) -> None:
        super().__init__()
        layers: List[torch.nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(hs[:-1], hs[1:])):
            layers.append(torch.nn.Linear(width_in, width_out))
            if index < len(hs) - 2:
                layers += [torch.nn.LayerNorm(width_out), torch.nn.SiLU()]
        self.net = torch.nn.Sequential(*layers)
        self.hs = list(hs)

    def forward(self, edge_feats: torch.Tensor) -> torch.Tensor:
        """[n_edges, hs[0]] -> [n_edges, hs[-1]]"""
        return self.net(edge_feats)
