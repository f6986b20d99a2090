"""Radial basis and smooth cutoff of the edge lengths.

Both classes keep their constants as buffers named as in upstream model files, so an
unpickled upstream object and one built here run the same ``forward``.
"""
import math

import torch


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
        if trainable:
            self.bessel_weights = torch.nn.Parameter(frequencies)
        else:
            self.register_buffer("bessel_weights", frequencies)
        self.register_buffer("r_max", torch.tensor(r_max, dtype=torch.get_default_dtype()))
        self.register_buffer(
            "prefactor", torch.tensor(math.sqrt(2.0 / r_max), dtype=torch.get_default_dtype())
        )

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """lengths: [n_edges, 1] -> [n_edges, num_basis]"""
        return self.prefactor * torch.sin(self.bessel_weights * lengths) / lengths

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(r_max={float(self.r_max)}, "
            f"num_basis={len(self.bessel_weights)})"
        )


class PolynomialCutoff(torch.nn.Module):
    """Polynomial envelope of degree p that goes to zero at r_max with p-1 smooth derivatives.

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_max.
    """

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(p, dtype=torch.int32))
        self.register_buffer("r_max", torch.tensor(r_max, dtype=torch.get_default_dtype()))

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        p = self.p.to(lengths.dtype)
        x = lengths / self.r_max
        envelope = (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - 0.5 * p * (p + 1.0) * torch.pow(x, p + 2.0)
        )
        return envelope * (x < 1.0)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={int(self.p)}, r_max={float(self.r_max)})"
