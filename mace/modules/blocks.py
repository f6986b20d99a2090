"""The building blocks of a MACE model.

Class names, attribute names and submodule names are those stored in upstream model
files (they are unpickled without calling ``__init__``), so ``forward`` only relies on
attributes that every writer version carries.
"""
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from e3nn import nn as e3nn_nn
from e3nn import o3

from mace.modules.irreps_tools import reshape_irreps, tp_out_irreps_with_instructions
from mace.modules.radial import BesselBasis, PolynomialCutoff
from mace.modules.symmetric_contraction import SymmetricContraction
from mace.modules.utils import scatter_sum


class LinearNodeEmbeddingBlock(torch.nn.Module):
    """One-hot element attributes [n, n_elements]x0e -> initial node features."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        self.linear = o3.Linear(irreps_in=irreps_in, irreps_out=irreps_out)

    def forward(self, node_attrs: torch.Tensor) -> torch.Tensor:
        return self.linear(node_attrs)


class LinearReadoutBlock(torch.nn.Module):
    """Node features -> one invariant node energy [n, 1]."""

    def __init__(self, irreps_in: o3.Irreps) -> None:
        super().__init__()
        self.linear = o3.Linear(irreps_in=irreps_in, irreps_out=o3.Irreps("0e"))

    def forward(self, node_feats: torch.Tensor) -> torch.Tensor:
        return self.linear(node_feats)


class NonLinearReadoutBlock(torch.nn.Module):
    """Scalar node features -> MLP (one hidden layer, gated) -> node energy [n, 1]."""

    def __init__(self, irreps_in: o3.Irreps, MLP_irreps: o3.Irreps, gate: Optional[Callable]) -> None:
        super().__init__()
        self.hidden_irreps = o3.Irreps(MLP_irreps)
        self.linear_1 = o3.Linear(irreps_in=irreps_in, irreps_out=self.hidden_irreps)
        self.non_linearity = e3nn_nn.Activation(irreps_in=self.hidden_irreps, acts=[gate])
        self.linear_2 = o3.Linear(irreps_in=self.hidden_irreps, irreps_out=o3.Irreps("0e"))

    def forward(self, node_feats: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.non_linearity(self.linear_1(node_feats)))


class AtomicEnergiesBlock(torch.nn.Module):
    """Reference energies E0 of isolated atoms, selected by the one-hot node attributes.

    Older files store ``atomic_energies`` as [n_elements]; newer ones as [n_heads, n_elements].
    """

    def __init__(self, atomic_energies: np.ndarray) -> None:
        super().__init__()
        self.register_buffer(
            "atomic_energies", torch.tensor(np.asarray(atomic_energies), dtype=torch.get_default_dtype())
        )

    def forward(self, node_attrs: torch.Tensor) -> torch.Tensor:
        """[n, n_elements] -> [n, n_heads]"""
        return node_attrs @ torch.atleast_2d(self.atomic_energies).T

    def __repr__(self) -> str:
        energies = ", ".join(f"{e:.4f}" for e in self.atomic_energies.flatten().tolist())
        return f"{self.__class__.__name__}(energies=[{energies}])"


class RadialEmbeddingBlock(torch.nn.Module):
    """Edge length [n_edges, 1] -> Bessel features times smooth cutoff [n_edges, num_bessel]."""

    def __init__(self, r_max: float, num_bessel: int, num_polynomial_cutoff: int) -> None:
        super().__init__()
        self.bessel_fn = BesselBasis(r_max=r_max, num_basis=num_bessel)
        self.cutoff_fn = PolynomialCutoff(r_max=r_max, p=num_polynomial_cutoff)
        self.out_dim = num_bessel

    def forward(self, edge_lengths: torch.Tensor) -> torch.Tensor:
        return self.bessel_fn(edge_lengths) * self.cutoff_fn(edge_lengths)


class ScaleShiftBlock(torch.nn.Module):
    """Interaction energies in units of the data's force/energy scale -> eV: scale * x + shift."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.get_default_dtype()))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.get_default_dtype()))

    def forward(self, node_energies: torch.Tensor, node_heads: torch.Tensor) -> torch.Tensor:
        scale = torch.atleast_1d(self.scale)[node_heads]
        shift = torch.atleast_1d(self.shift)[node_heads]
        return scale * node_energies + shift

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(scale={self.scale.tolist()}, shift={self.shift.tolist()})"


class InteractionBlock(torch.nn.Module):
    """Equivariant message passing: m_i = sum_j R(r_ij) (h_j x Y(r_ij)), then a linear mix.

    irreps: node_feats_irreps (input), edge_attrs_irreps (spherical harmonics),
    edge_feats_irreps (radial basis), target_irreps = irreps_out (messages).
    """

    def __init__(
        self,
        node_attrs_irreps: o3.Irreps,
        node_feats_irreps: o3.Irreps,
        edge_attrs_irreps: o3.Irreps,
        edge_feats_irreps: o3.Irreps,
        target_irreps: o3.Irreps,
        hidden_irreps: o3.Irreps,
        avg_num_neighbors: float,
        radial_MLP: List[int],
    ) -> None:
        super().__init__()
        self.node_attrs_irreps = o3.Irreps(node_attrs_irreps)
        self.node_feats_irreps = o3.Irreps(node_feats_irreps)
        self.edge_attrs_irreps = o3.Irreps(edge_attrs_irreps)
        self.edge_feats_irreps = o3.Irreps(edge_feats_irreps)
        self.target_irreps = o3.Irreps(target_irreps)
        self.hidden_irreps = hidden_irreps
        self.avg_num_neighbors = avg_num_neighbors
        self.radial_MLP = list(radial_MLP)
        self.irreps_out = self.target_irreps

        self.linear_up = o3.Linear(
            self.node_feats_irreps, self.node_feats_irreps, internal_weights=True, shared_weights=True
        )
        irreps_mid, instructions = tp_out_irreps_with_instructions(
            self.node_feats_irreps, self.edge_attrs_irreps, self.target_irreps
        )
        self.conv_tp = o3.TensorProduct(
            self.node_feats_irreps,
            self.edge_attrs_irreps,
            irreps_mid,
            instructions=instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.conv_tp_weights = e3nn_nn.FullyConnectedNet(
            [self.edge_feats_irreps.num_irreps] + self.radial_MLP + [self.conv_tp.weight_numel],
            torch.nn.functional.silu,
        )
        self.linear = o3.Linear(
            irreps_mid.simplify(), self.irreps_out, internal_weights=True, shared_weights=True
        )
        self.reshape = reshape_irreps(self.irreps_out)

    def aggregate_messages(
        self,
        node_feats: torch.Tensor,
        edge_attrs: torch.Tensor,
        edge_feats: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        """Up-projected sender features, coupled to the edges, summed on receivers and mixed.

        Returns [n_nodes, irreps_out.dim], normalised by the average number of neighbours.
        """
        sender, receiver = edge_index[0], edge_index[1]
        node_feats = self.linear_up(node_feats)
        tp_weights = self.conv_tp_weights(edge_feats)
        edge_messages = self.conv_tp(node_feats[sender], edge_attrs, tp_weights)
        messages = scatter_sum(edge_messages, receiver, dim_size=node_feats.shape[0])
        return self.linear(messages) / self.avg_num_neighbors


class RealAgnosticInteractionBlock(InteractionBlock):
    """First-layer interaction: element dependence enters after aggregation, via skip_tp."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_tp = o3.FullyConnectedTensorProduct(self.irreps_out, self.node_attrs_irreps, self.irreps_out)

    def forward(
        self,
        node_attrs: torch.Tensor,
        node_feats: torch.Tensor,
        edge_attrs: torch.Tensor,
        edge_feats: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        messages = self.aggregate_messages(node_feats, edge_attrs, edge_feats, edge_index)
        messages = self.skip_tp(messages, node_attrs)
        return self.reshape(messages), None


class RealAgnosticResidualInteractionBlock(InteractionBlock):
    """Interaction with an element-dependent residual (self-connection) of the input features."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_tp = o3.FullyConnectedTensorProduct(
            self.node_feats_irreps, self.node_attrs_irreps, o3.Irreps(self.hidden_irreps)
        )

    def forward(
        self,
        node_attrs: torch.Tensor,
        node_feats: torch.Tensor,
        edge_attrs: torch.Tensor,
        edge_feats: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        self_connection = self.skip_tp(node_feats, node_attrs)
        messages = self.aggregate_messages(node_feats, edge_attrs, edge_feats, edge_index)
        return self.reshape(messages), self_connection


class EquivariantProductBasisBlock(torch.nn.Module):
    """Many-body features: symmetric contraction, linear mix, plus the residual if any."""

    def __init__(
        self,
        node_feats_irreps: o3.Irreps,
        target_irreps: o3.Irreps,
        correlation: int,
        num_elements: int,
        use_sc: bool = True,
    ) -> None:
        super().__init__()
        self.use_sc = use_sc
        self.symmetric_contractions = SymmetricContraction(
            irreps_in=node_feats_irreps,
            irreps_out=target_irreps,
            correlation=correlation,
            num_elements=num_elements,
        )
        self.linear = o3.Linear(target_irreps, target_irreps, internal_weights=True, shared_weights=True)

    def forward(
        self, node_feats: torch.Tensor, self_connection: Optional[torch.Tensor], node_attrs: torch.Tensor
    ) -> torch.Tensor:
        node_feats = self.linear(self.symmetric_contractions(node_feats, node_attrs))
        if self.use_sc and self_connection is not None:
            return node_feats + self_connection
        return node_feats


INTERACTION_CLASSES: Dict[str, type] = {
    "RealAgnosticInteractionBlock": RealAgnosticInteractionBlock,
    "RealAgnosticResidualInteractionBlock": RealAgnosticResidualInteractionBlock,
}
