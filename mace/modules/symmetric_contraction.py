"""MACE's product basis: element-dependent symmetric contractions of node features.

For every channel c and output irrep L it forms the polynomial
    B[c, m] = sum_{nu=1..correlation} sum_k w^(nu)[z, k, c]
              * U^(nu)[m, i_1..i_nu, k] x[c, i_1] ... x[c, i_nu]
where z is the node's element, x[c, :] all irrep components of channel c and U^(nu) a basis
of equivariant symmetric couplings (``mace.modules.coupling``). It is evaluated Horner
style from the highest order down, so each order costs one contraction with x.
"""
import torch
from e3nn import o3

from mace.modules.coupling import coupling_basis
from mace.modules.irreps_tools import channel_irreps


class SymmetricContraction(torch.nn.Module):
    """irreps_in (uniform multiplicity, [n, channels, sum dims]) -> irreps_out ([n, irreps_out.dim])."""

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        correlation: int,
        num_elements: int,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.contractions = torch.nn.ModuleList(
            Contraction(self.irreps_in, o3.Irreps(str(ir)), correlation, num_elements)
            for _, ir in self.irreps_out
        )

    def forward(self, node_feats: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        return torch.cat([contraction(node_feats, node_attrs) for contraction in self.contractions], dim=-1)


class Contraction(torch.nn.Module):
    """One output irrep of the symmetric contraction.

    Buffers ``U_matrix_{nu}`` hold the coupling basis of order nu; ``weights_max`` is the
    highest order's element-dependent weights [n_elements, n_params, channels] and
    ``weights[j]`` those of order correlation-1-j.
    """

    def __init__(
        self, irreps_in: o3.Irreps, irrep_out: o3.Irreps, correlation: int, num_elements: int
    ) -> None:
        super().__init__()
        self.num_features = irreps_in.count((0, 1))
        self.coupling_irreps = channel_irreps(irreps_in)
        self.correlation = correlation
        (target,) = [ir for _, ir in o3.Irreps(irrep_out)]
        bases = coupling_basis(self.coupling_irreps, target, correlation, dtype=torch.get_default_dtype())
        for nu, basis in enumerate(bases, start=1):
            self.register_buffer(f"U_matrix_{nu}", basis)
        self.weights_max = self._init_weights(bases[correlation - 1], num_elements)
        self.weights = torch.nn.ParameterList(
            self._init_weights(bases[nu - 1], num_elements) for nu in range(correlation - 1, 0, -1)
        )

    def _init_weights(self, basis: torch.Tensor, num_elements: int) -> torch.nn.Parameter:
        """Random weights scaled by 1/n_params so each order starts at a comparable size."""
        num_params = basis.shape[-1]
        return torch.nn.Parameter(
            torch.randn(num_elements, num_params, self.num_features, dtype=basis.dtype)
            / max(num_params, 1)
        )

    def coupling_matrix(self, nu: int) -> torch.Tensor:
        return getattr(self, f"U_matrix_{nu}")

    def forward(self, node_feats: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        """node_feats: [n, channels, sum dims], node_attrs: [n, n_elements] -> [n, channels * (2L+1)]

        Per-node weights are selected first; the highest order is then a single matrix
        product over (input component, parameter) pairs, which keeps the work in BLAS
        instead of materialising U contracted with the weights of every element.
        """
        num_nodes, num_channels, _ = node_feats.shape
        basis = self.coupling_matrix(self.correlation)
        weights = _node_weights(self.weights_max, node_attrs)
        pairs = node_feats.unsqueeze(-1) * weights.unsqueeze(2)
        result = pairs.reshape(num_nodes * num_channels, -1) @ basis.reshape(-1, pairs.shape[2] * pairs.shape[3]).T
        for nu, order_weights in zip(range(self.correlation - 1, 0, -1), self.weights):
            basis = self.coupling_matrix(nu)
            coefficients = _node_weights(order_weights, node_attrs).reshape(num_nodes * num_channels, -1)
            result = result + coefficients @ basis.reshape(-1, basis.shape[-1]).T
            result = result.reshape(num_nodes * num_channels, -1, node_feats.shape[-1])
            result = (result @ node_feats.reshape(num_nodes * num_channels, -1, 1)).squeeze(-1)
        return result.reshape(num_nodes, -1)


def _node_weights(weights: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
    """Element-dependent weights [elements, params, channels] -> per node [n, channels, params]."""
    return torch.einsum("be,ekc->bck", node_attrs, weights)
