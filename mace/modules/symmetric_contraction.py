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

        The polynomial is linear in the element attributes, so it is evaluated once per
        element present, on that element's nodes, with its weights already contracted into
        the coupling basis (no per-node copies of weights or coefficients).
        """
        num_nodes, num_channels, _ = node_feats.shape
        result = node_feats.new_zeros(num_nodes, num_channels * self._output_dim())
        for element in torch.nonzero(node_attrs.abs().sum(0)).flatten().tolist():
            nodes = torch.nonzero(node_attrs[:, element]).flatten()
            polynomial = self._element_polynomial(node_feats[nodes], element)
            result = result.index_add(0, nodes, polynomial * node_attrs[nodes, element].unsqueeze(-1))
        return result

    def _output_dim(self) -> int:
        basis = self.coupling_matrix(1)
        return basis.shape[0] if basis.dim() == 3 else 1

    def _element_polynomial(self, node_feats: torch.Tensor, element: int) -> torch.Tensor:
        """Horner evaluation for nodes of one element: [n, channels, dim] -> [n, channels * (2L+1)]"""
        num_nodes, num_channels, dim = node_feats.shape
        features = node_feats.transpose(0, 1)
        basis = self.coupling_matrix(self.correlation)
        coupled = torch.einsum("pik,kc->cip", basis.reshape(-1, dim, basis.shape[-1]), self.weights_max[element])
        highest = self.correlation
        if highest == 1:
            result = torch.bmm(features, coupled)
        else:
            result = torch.baddbmm(self._coefficients(highest - 1, element), features, coupled)
        for nu in range(highest - 1, 0, -1):
            if nu < highest - 1:
                result = result + self._coefficients(nu, element)
            result = (result.reshape(num_channels, num_nodes, -1, dim) @ features.unsqueeze(-1)).squeeze(-1)
        return result.transpose(0, 1).reshape(num_nodes, -1)

    def _coefficients(self, nu: int, element: int) -> torch.Tensor:
        """Order-nu term U_nu w_nu[element], shaped [channels, 1, rest] to broadcast over nodes."""
        basis = self.coupling_matrix(nu)
        weights = self.weights[self.correlation - 1 - nu][element]
        return (basis.reshape(-1, basis.shape[-1]) @ weights).T.unsqueeze(1)
