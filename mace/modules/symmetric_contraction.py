"""MACE's product basis: element-dependent symmetric contractions of node features.

For every channel c and output irrep L it forms the polynomial
    B[c, m] = sum_{nu=1..correlation} sum_k w^(nu)[z, k, c]
              * U^(nu)[m, i_1..i_nu, k] x[c, i_1] ... x[c, i_nu]
where z is the node's element, x[c, :] all irrep components of channel c and U^(nu) a basis
of equivariant symmetric couplings (``mace.modules.coupling``). It is evaluated Horner
style from the highest order down, the two highest orders together in one contraction with
the products x_b x_i (b <= i) and x_b of each node's components: x_b x_i = x_i x_b, so the
coefficients of (b, i) and (i, b) are summed into one column, which nearly halves that
contraction against one over every ordered pair.

The weights are contracted into the bases at every step (they change while training) from
the bases' nonzero entries alone: the highest-order basis of a max_ell 3 model's 1o output
is 0.5% nonzero, so a dense product over it spent most of its time on zeros and was the
largest cost of a training step that does not grow with the batch.
"""
from typing import Iterable, List, Optional, Tuple

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
            self.correlation = basis_orders(name.rpartition(".")[2] for name, _ in self.contractions[0].named_buffers())

    def forward(self, node_feats: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        """The output irreps share what only depends on the nodes: each element's nodes, their
        features and the products of pairs of components, with their derivatives."""
        shared = element_inputs(node_feats, node_attrs, self.correlation > 1)
        return torch.cat([contraction(node_feats, node_attrs, shared) for contraction in self.contractions], dim=-1)


def basis_orders(buffer_names: Iterable[str]) -> int:
    """The correlation order of a contraction: its number of coupling bases ``U_matrix_{nu}``."""
    return sum(name.startswith("U_matrix_") for name in buffer_names)


# Per element present: (element, its nodes, their features [channels, n, dim], their products
# of pairs (:func:`pair_products`), empty for correlation 1).
ElementInputs = List[Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]


def num_pair_columns(dim: int) -> int:
    """Columns of :func:`pair_products`: the products x_b x_i with b <= i, then x_b."""
    return dim * (dim + 1) // 2 + dim


def pair_products(features: torch.Tensor) -> torch.Tensor:
    """[..., dim] -> [..., num_pair_columns(dim)]: x_b x_i for the pairs b <= i in the order of
    ``torch.triu_indices``, then the components x_b themselves."""
    dim = features.shape[-1]
    pairs = torch.triu_indices(dim, dim, device=features.device)
    return torch.cat([features.index_select(-1, pairs[0]) * features.index_select(-1, pairs[1]), features], dim=-1)


def _pair_column_of(dim: int) -> torch.Tensor:
    """[dim, dim]: the column of :func:`pair_products` that holds x_b x_i (symmetric)."""
    pairs = torch.triu_indices(dim, dim)
    columns = torch.zeros(dim, dim, dtype=torch.long)
    positions = torch.arange(pairs.shape[1])
    columns[pairs[0], pairs[1]] = positions
    columns[pairs[1], pairs[0]] = positions
    return columns


def element_inputs(node_feats: torch.Tensor, node_attrs: torch.Tensor, with_pairs: bool) -> ElementInputs:
    """What every order and output irrep of the polynomial reads of each element's nodes;
    the pair products only ``with_pairs`` (correlation 2 or more reads them)."""
    inputs: ElementInputs = []
    elements: List[int] = torch.nonzero(node_attrs.abs().sum(0)).flatten().tolist()
    for element in elements:
        nodes = torch.nonzero(node_attrs[:, element]).flatten()
        features = node_feats[nodes].transpose(0, 1)
        pairs = pair_products(features) if with_pairs else features.new_zeros(0)
        inputs.append((element, nodes, features, pairs))
    return inputs


# A coupling basis as its nonzero entries: (their rows in the layout the contraction reads,
# their parameter indices, their values, the number of rows of that layout).
SparseBasis = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]


class Contraction(torch.nn.Module):
    """One output irrep of the symmetric contraction.

    Buffers ``U_matrix_{nu}`` hold the coupling basis of order nu; ``weights_max`` is the
    highest order's element-dependent weights [n_elements, n_params, channels] and
    ``weights[j]`` those of order correlation-1-j. The nonzero entries of each basis are
    kept as buffers ``U_rows_{nu}``, ``U_params_{nu}`` and ``U_values_{nu}``, derived from it
    and left out of the state dict; the rows of the two highest orders are those of their
    fused layout [leading indices, pair columns] (:meth:`_fused_rows`).
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

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
    ) -> None:
        """Loaded bases (another writer's choice of basis) replace the nonzero entries too."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._prepare_sparse_bases()

    def _prepare_sparse_bases(self) -> None:
        """The nonzero entries of every basis buffer, as buffers left out of the state dict,
        the number of rows of each order's layout (``sparse_num_rows``) and the output irrep's
        dimension (``num_outputs``, 2L+1)."""
        orders = basis_orders(self._buffers)
        first = self._buffers["U_matrix_1"]
        self.num_outputs = first.shape[0] if first.dim() == 3 else 1  # L = 0 drops the output axis
        self.sparse_num_rows: List[int] = []
        for nu in range(1, orders + 1):
            basis = self._buffers[f"U_matrix_{nu}"]
            flat = basis.reshape(-1, basis.shape[-1])
            rows, params = torch.nonzero(flat, as_tuple=True)
            values = flat[rows, params]
            num_rows = flat.shape[0]
            if orders >= 2 and nu >= orders - 1:
                rows, num_rows = self._fused_rows(rows, nu == orders, basis.shape[-2], flat.shape[0])
            self.register_buffer(f"U_rows_{nu}", rows, persistent=False)
            self.register_buffer(f"U_params_{nu}", params, persistent=False)
            self.register_buffer(f"U_values_{nu}", values, persistent=False)
            self.sparse_num_rows.append(num_rows)

    @staticmethod
    def _fused_rows(rows: torch.Tensor, highest: bool, dim: int, num_rows: int) -> Tuple[torch.Tensor, int]:
        """Rows of the highest order's flat basis [leading, b, i] or of the next one's
        [leading, b] in the fused layout [leading, num_pair_columns(dim)], and its row count."""
        trailing = dim * dim if highest else dim
        leading = rows // trailing
        width = num_pair_columns(dim)
        if highest:
            columns = _pair_column_of(dim).to(rows.device)[(rows // dim) % dim, rows % dim]
        else:
            columns = width - dim + rows % dim  # the column of x_b
        return leading * width + columns, num_rows // trailing * width

    def coupling_matrix(self, nu: int) -> torch.Tensor:
        """The coupling basis of order ``nu``, the buffer ``U_matrix_{nu}``."""
        return dict(self.named_buffers())[f"U_matrix_{nu}"]

    def sparse_bases(self) -> List[SparseBasis]:
        """The nonzero entries of the bases of orders 1..correlation (see :data:`SparseBasis`)."""
        buffers = dict(self.named_buffers())
        bases: List[SparseBasis] = []
        for nu in range(1, self.correlation + 1):
            rows, params, values = buffers[f"U_rows_{nu}"], buffers[f"U_params_{nu}"], buffers[f"U_values_{nu}"]
            bases.append((rows, params, values, self.sparse_num_rows[nu - 1]))
        return bases

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
        bases = self.sparse_bases()
        result = node_feats.new_zeros(num_nodes, num_channels * self.num_outputs)
        inputs = element_inputs(node_feats, node_attrs, self.correlation > 1) if shared is None else shared
        for element, nodes, features, pairs in inputs:
            lower_weights: List[torch.Tensor] = []  # orders correlation-1 down to 1
            for weights in self.weights:
                lower_weights.append(weights[element])
            polynomial = self._element_polynomial(features, pairs, bases, self.weights_max[element], lower_weights)
            result = result.index_add(0, nodes, polynomial * node_attrs[nodes, element].unsqueeze(-1))
        return result

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
        product over channels, against the pair products of each node; only the lower orders
        are left to Horner steps. Contracting one feature at a time instead makes a
        matrix-vector product per (channel, node): thousands of tiny products, and as many
        again in each derivative the force loss takes.
        """
        num_channels, num_nodes, dim = features.shape[0], features.shape[1], features.shape[2]
        if len(lower_weights) == 0:
            coupled = Contraction._coupled([bases[-1]], [highest_weights]).view(num_channels, -1, dim)
            result = torch.bmm(features, coupled.transpose(1, 2))
            return result.transpose(0, 1).reshape(num_nodes, -1)
        fused = Contraction._coupled([bases[-1], bases[-2]], [highest_weights, lower_weights[0]])
        coupled = fused.view(num_channels, -1, pairs.shape[-1]).transpose(1, 2)
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
    def _coupled(bases: List[SparseBasis], weights: List[torch.Tensor]) -> torch.Tensor:
        """Bases of one layout with the element's weights of their orders ([n_params, channels]
        each) contracted in and summed: [channels, rows]."""
        coupled = weights[0].new_zeros(weights[0].shape[1], bases[0][3])
        for (rows, params, values, _), order_weights in zip(bases, weights):
            coupled = coupled.index_add(1, rows, order_weights.T.index_select(1, params) * values)
        return coupled

    @staticmethod
    def _contract(result: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """One Horner step: the last feature index of [channels, n, rows * dim] against [channels, n, dim]."""
        num_channels, num_nodes, dim = features.shape[0], features.shape[1], features.shape[2]
        return (result.reshape(num_channels, num_nodes, -1, dim) * features.unsqueeze(2)).sum(-1)

    @staticmethod
    def _coefficients(basis: SparseBasis, weights: torch.Tensor) -> torch.Tensor:
        """Order-nu term U_nu w_nu[element], shaped [channels, 1, rest] to broadcast over nodes."""
        return Contraction._coupled([basis], [weights]).unsqueeze(1)
