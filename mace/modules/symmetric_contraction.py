"""MACE's product basis: element-dependent symmetric contractions of node features.

For every channel c and output irrep L it forms the polynomial
    B[c, m] = sum_{nu=1..correlation} sum_k w^(nu)[z, k, c]
              * U^(nu)[m, i_1..i_nu, k] x[c, i_1] ... x[c, i_nu]
where z is the node's element, x[c, :] all irrep components of channel c and U^(nu) a basis
of equivariant symmetric couplings (``mace.modules.coupling``). It is evaluated Horner
style from the highest order down, the two highest orders together in one contraction with
the products of pairs of components.

The weights are contracted into the bases at every step (they change while training) from
the bases' nonzero entries alone: the highest-order basis of a max_L 3 model's 1o output is
0.5% nonzero, so a dense product over it spent most of its time on zeros and was the
largest cost of a training step that does not grow with the batch.
"""
from typing import List, Optional, Tuple

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
        self.correlation = correlation
        self.contractions = torch.nn.ModuleList(
            Contraction(self.irreps_in, o3.Irreps(str(ir)), correlation, num_elements)
            for _, ir in self.irreps_out
        )

    def __setstate__(self, state: dict) -> None:
        """Files of upstream, and ours from before, keep the order only in each contraction
        (which a fine-tuned file may hold wrapped in an adapter): one coupling basis per order."""
        super().__setstate__(state)
        if "correlation" not in self.__dict__:
            names = [name.rpartition(".")[2] for name, _ in self.contractions[0].named_buffers()]
            self.correlation = sum(name.startswith("U_matrix_") for name in names)

    def forward(self, node_feats: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        """The output irreps share what only depends on the nodes: each element's nodes, their
        features and the products of pairs of components, with their derivatives."""
        shared = element_inputs(node_feats, node_attrs, self.correlation > 1)
        return torch.cat([contraction(node_feats, node_attrs, shared) for contraction in self.contractions], dim=-1)


# Per element present: (element, its nodes, their features [channels, n, dim], the products
# x_b * [x_i, 1] of pairs of components [channels, n, dim * (dim + 1)], empty for correlation 1).
ElementInputs = List[Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]


def element_inputs(node_feats: torch.Tensor, node_attrs: torch.Tensor, with_pairs: bool) -> ElementInputs:
    """What every order and output irrep of the polynomial reads of each element's nodes;
    the pair products only ``with_pairs`` (correlation 2 or more reads them)."""
    inputs: ElementInputs = []
    elements: List[int] = torch.nonzero(node_attrs.abs().sum(0)).flatten().tolist()
    for element in elements:
        nodes = torch.nonzero(node_attrs[:, element]).flatten()
        features = node_feats[nodes].transpose(0, 1)
        num_channels, num_nodes, dim = features.shape[0], features.shape[1], features.shape[2]
        pairs = features.new_zeros(0)
        if with_pairs:
            with_one = torch.nn.functional.pad(features, (0, 1), value=1.0)
            pairs = (features.unsqueeze(-1) * with_one.unsqueeze(-2)).reshape(num_channels, num_nodes, dim * (dim + 1))
        inputs.append((element, nodes, features, pairs))
    return inputs


# A coupling basis flattened to [rows, n_params], as its nonzero entries: (their rows, their
# parameter indices, their values, the number of rows).
SparseBasis = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]


class Contraction(torch.nn.Module):
    """One output irrep of the symmetric contraction.

    Buffers ``U_matrix_{nu}`` hold the coupling basis of order nu; ``weights_max`` is the
    highest order's element-dependent weights [n_elements, n_params, channels] and
    ``weights[j]`` those of order correlation-1-j. The nonzero entries of each basis are
    kept as buffers ``U_rows_{nu}``, ``U_params_{nu}`` and ``U_values_{nu}``, derived from it
    and left out of the state dict.
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
        self._prepare_sparse_bases()
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

    def __setstate__(self, state: dict) -> None:
        """Unpickled without ``__init__``: files of upstream and of earlier versions lack the
        nonzero entries, and those a file carries are not trusted, so they are derived here."""
        super().__setstate__(state)
        self._prepare_sparse_bases()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        """Loaded bases (another writer's choice of basis) replace the nonzero entries too."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._prepare_sparse_bases()

    def _prepare_sparse_bases(self) -> None:
        """The nonzero entries of every basis buffer, as buffers left out of the state dict."""
        for name, basis in list(self._buffers.items()):
            if not name.startswith("U_matrix_") or basis is None:
                continue
            nu = name[len("U_matrix_") :]
            flat = basis.reshape(-1, basis.shape[-1])
            rows, params = torch.nonzero(flat, as_tuple=True)
            self.register_buffer(f"U_rows_{nu}", rows, persistent=False)
            self.register_buffer(f"U_params_{nu}", params, persistent=False)
            self.register_buffer(f"U_values_{nu}", flat[rows, params], persistent=False)

    def coupling_matrix(self, nu: int) -> torch.Tensor:
        """The coupling basis of order ``nu``, the buffer ``U_matrix_{nu}``."""
        return dict(self.named_buffers())[f"U_matrix_{nu}"]

    def sparse_basis(self, nu: int) -> SparseBasis:
        """The nonzero entries of the basis of order ``nu`` (see :data:`SparseBasis`)."""
        buffers = dict(self.named_buffers())
        basis = buffers[f"U_matrix_{nu}"]
        num_rows = basis.numel() // basis.shape[-1]
        return buffers[f"U_rows_{nu}"], buffers[f"U_params_{nu}"], buffers[f"U_values_{nu}"], num_rows

    def forward(
        self, node_feats: torch.Tensor, node_attrs: torch.Tensor, shared: Optional[ElementInputs] = None
    ) -> torch.Tensor:
        """node_feats: [n, channels, sum dims], node_attrs: [n, n_elements] -> [n, channels * (2L+1)];
        ``shared``: :func:`element_inputs` of these arguments, when the caller has them.

        The polynomial is linear in the element attributes, so it is evaluated once per
        element present, on that element's nodes, with its weights already contracted into
        the coupling basis (no per-node copies of weights or coefficients).
        """
        num_nodes, num_channels = node_feats.shape[0], node_feats.shape[1]
        bases = [self.sparse_basis(nu) for nu in range(1, self.correlation + 1)]
        result = node_feats.new_zeros(num_nodes, num_channels * self._output_dim(self.coupling_matrix(1)))
        inputs = element_inputs(node_feats, node_attrs, self.correlation > 1) if shared is None else shared
        for element, nodes, features, pairs in inputs:
            lower_weights: List[torch.Tensor] = []  # orders correlation-1 down to 1
            for weights in self.weights:
                lower_weights.append(weights[element])
            polynomial = self._element_polynomial(features, pairs, bases, self.weights_max[element], lower_weights)
            result = result.index_add(0, nodes, polynomial * node_attrs[nodes, element].unsqueeze(-1))
        return result

    @staticmethod
    def _output_dim(basis: torch.Tensor) -> int:
        return basis.shape[0] if basis.dim() == 3 else 1

    @staticmethod
    def _element_polynomial(
        features: torch.Tensor,
        pairs: torch.Tensor,
        bases: List[SparseBasis],
        highest_weights: torch.Tensor,
        lower_weights: List[torch.Tensor],
    ) -> torch.Tensor:
        """The polynomial for nodes of one element: ``features`` [channels, n, dim] and their
        ``pairs`` (:func:`element_inputs`) -> [n, channels * (2L+1)]; ``bases`` of orders
        1..correlation, the element's weights of the highest order and of each lower order,
        highest first.

        The two highest orders are contracted with the node features in one batched matrix
        product over channels, against the products x_b * [x_i, 1] of each node; only the
        lower orders are left to Horner steps. Contracting one feature at a time instead
        makes a matrix-vector product per (channel, node): thousands of tiny products, and
        as many again in each derivative the force loss takes.
        """
        num_channels, num_nodes, dim = features.shape[0], features.shape[1], features.shape[2]
        if len(lower_weights) == 0:
            result = torch.bmm(features, Contraction._coupled(bases[-1], highest_weights, dim).transpose(1, 2))
            return result.transpose(0, 1).reshape(num_nodes, -1)
        highest = Contraction._coupled(bases[-1], highest_weights, dim * dim).view(num_channels, -1, dim, dim)
        second = Contraction._coupled(bases[-2], lower_weights[0], dim).unsqueeze(-1)
        coupled = torch.cat([highest, second], dim=3).view(num_channels, -1, dim * (dim + 1)).transpose(1, 2)
        if len(lower_weights) == 1:
            result = torch.bmm(pairs, coupled)
        else:
            result = torch.baddbmm(Contraction._coefficients(bases[-3], lower_weights[1]), pairs, coupled)
        for index in range(2, len(lower_weights)):
            result = Contraction._contract(result, features) + Contraction._coefficients(bases[-2 - index], lower_weights[index])
        if len(lower_weights) > 1:
            result = Contraction._contract(result, features)
        return result.transpose(0, 1).reshape(num_nodes, -1)

    @staticmethod
    def _coupled(basis: SparseBasis, weights: torch.Tensor, width: int) -> torch.Tensor:
        """The basis of one order with the element's weights [n_params, channels] contracted
        in: [channels, rows, width], ``width`` the trailing feature indices it is still to be
        contracted with."""
        rows, params, values, num_rows = basis
        num_channels = weights.shape[1]
        entries = weights.T.index_select(1, params) * values
        return weights.new_zeros(num_channels, num_rows).index_add(1, rows, entries).view(num_channels, -1, width)

    @staticmethod
    def _contract(result: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """One Horner step: the last feature index of [channels, n, rows * dim] against [channels, n, dim]."""
        num_channels, num_nodes, dim = features.shape[0], features.shape[1], features.shape[2]
        return (result.reshape(num_channels, num_nodes, -1, dim) * features.unsqueeze(2)).sum(-1)

    @staticmethod
    def _coefficients(basis: SparseBasis, weights: torch.Tensor) -> torch.Tensor:
        """Order-nu term U_nu w_nu[element], shaped [channels, 1, rest] to broadcast over nodes."""
        return Contraction._coupled(basis, weights, 1).transpose(1, 2)
