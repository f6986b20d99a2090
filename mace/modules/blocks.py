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

from mace.modules.convolution import LAYOUT_VERSION, channelwise_convolution, channelwise_layout
from mace.modules.irreps_tools import reshape_irreps, tp_out_irreps_with_instructions
from mace.modules.radial import (
    AgnesiTransform,
    BesselBasis,
    ChebychevBasis,
    GaussianBasis,
    PolynomialCutoff,
    RadialMLP,
    SoftTransform,
)
from mace.modules.symmetric_contraction import SymmetricContraction
from mace.modules.utils import scatter_sum


class LinearNodeEmbeddingBlock(torch.nn.Module):
    """One-hot element attributes [n, n_elements]x0e -> initial node features."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        self.linear = o3.Linear(irreps_in=irreps_in, irreps_out=irreps_out)

    def forward(self, node_attrs: torch.Tensor) -> torch.Tensor:
        return self.linear(node_attrs)


def mask_head(hidden: torch.Tensor, node_heads: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Zero every hidden channel but those of the node's own head.

    A multi-head readout's hidden layer is ``num_heads`` contiguous blocks of equal width,
    block k feeding head k (upstream's layout), so each head sees only its own block.
    """
    per_head = hidden.shape[1] // num_heads
    channel_head = torch.arange(hidden.shape[1], device=hidden.device) // per_head
    own = channel_head.unsqueeze(0) == node_heads.unsqueeze(1)
    return hidden * own.to(hidden.dtype)


class LinearReadoutBlock(torch.nn.Module):
    """Node features -> one invariant node energy per head [n, n_heads]."""

    def __init__(self, irreps_in: o3.Irreps, irrep_out: o3.Irreps = o3.Irreps("0e")) -> None:
        super().__init__()
        self.linear = o3.Linear(irreps_in=irreps_in, irreps_out=o3.Irreps(irrep_out))

    def forward(self, node_feats: torch.Tensor, node_heads: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.linear(node_feats)


class NonLinearReadoutBlock(torch.nn.Module):
    """Scalar node features -> MLP (one hidden layer, gated) -> node energy per head [n, n_heads].

    With several heads the hidden layer holds one block per head (``MLP_irreps`` is the
    whole layer) and a node's energy only passes through its own head's block.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        MLP_irreps: o3.Irreps,
        gate: Optional[Callable],
        irrep_out: o3.Irreps = o3.Irreps("0e"),
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        self.hidden_irreps = o3.Irreps(MLP_irreps)
        self.num_heads = num_heads
        self.linear_1 = o3.Linear(irreps_in=irreps_in, irreps_out=self.hidden_irreps)
        self.non_linearity = e3nn_nn.Activation(irreps_in=self.hidden_irreps, acts=[gate])
        self.linear_2 = o3.Linear(irreps_in=self.hidden_irreps, irreps_out=o3.Irreps(irrep_out))

    def forward(self, node_feats: torch.Tensor, node_heads: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden = self.non_linearity(self.linear_1(node_feats))
        if hasattr(self, "num_heads"):  # files written before multi-head readouts lack it
            if self.num_heads > 1 and node_heads is not None:
                hidden = mask_head(hidden, node_heads, self.num_heads)
        return self.linear_2(hidden)


def readout_gate(readout: NonLinearReadoutBlock) -> Optional[Callable]:
    """The gate function of a non-linear readout (e3nn keeps it normalised; ``f`` is the
    function given), to build another readout like it."""
    return getattr(readout.non_linearity.acts[0], "f", None)


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


RADIAL_BASES: Dict[str, type] = {"bessel": BesselBasis, "gaussian": GaussianBasis, "chebyshev": ChebychevBasis}
DISTANCE_TRANSFORMS: Dict[str, type] = {"Agnesi": AgnesiTransform, "Soft": SoftTransform}


class RadialEmbeddingBlock(torch.nn.Module):
    """Edge length [n_edges, 1] -> radial features [n_edges, num_bessel] and the smooth cutoff.

    The basis (``bessel_fn``, whatever its type) sees the length after the optional
    element-aware ``distance_transform``; the cutoff always sees the true length. With
    ``apply_cutoff`` (the default, and all that files without the attribute know) the
    features come multiplied by the cutoff; without it the interactions apply the cutoff to
    their radial-MLP outputs instead, so the MLP sees unattenuated features.
    """

    def __init__(
        self,
        r_max: float,
        num_bessel: int,
        num_polynomial_cutoff: int,
        radial_type: str = "bessel",
        distance_transform: str = "None",
        apply_cutoff: bool = True,
    ) -> None:
        super().__init__()
        self.bessel_fn = RADIAL_BASES[radial_type](r_max=r_max, num_basis=num_bessel)
        if distance_transform in DISTANCE_TRANSFORMS:
            self.distance_transform = DISTANCE_TRANSFORMS[distance_transform]()
        self.cutoff_fn = PolynomialCutoff(r_max=r_max, p=num_polynomial_cutoff)
        self.out_dim = num_bessel
        self.apply_cutoff = apply_cutoff

    def forward(
        self,
        edge_lengths: torch.Tensor,
        node_attrs: torch.Tensor,
        edge_index: torch.Tensor,
        atomic_numbers: torch.Tensor,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(features [n_edges, out_dim], cutoff [n_edges, 1] still to apply, or None)."""
        basis_lengths = edge_lengths
        if hasattr(self, "distance_transform"):  # TorchScript resolves hasattr when compiling
            basis_lengths = self.distance_transform(edge_lengths, node_attrs, edge_index, atomic_numbers)
        radial = self.bessel_fn(basis_lengths)
        cutoff = self.cutoff_fn(edge_lengths)
        apply_cutoff = True  # files written before the option have no such attribute
        if hasattr(self, "apply_cutoff"):
            apply_cutoff = self.apply_cutoff
        if apply_cutoff:
            return radial * cutoff, None
        return radial, cutoff


def with_cutoff(edge_values: torch.Tensor, cutoff: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-edge values times the cutoff the radial embedding left to apply (if any)."""
    return edge_values if cutoff is None else edge_values * cutoff


def neighbour_density(
    density_logits: torch.Tensor,
    receiver: torch.Tensor,
    cutoff: Optional[torch.Tensor],
    num_nodes: int,
) -> torch.Tensor:
    """Learned soft neighbour count [n_nodes, 1]: sum over incoming edges of tanh(f(edge)^2),
    each term in [0, 1), ``density_logits`` being f(edge) [n_edges, 1] (the block's
    ``density_fn``). It replaces the data set's fixed average neighbour count as the
    normaliser of the messages, so dense and sparse environments are scaled alike."""
    edge_density = with_cutoff(torch.tanh(density_logits**2), cutoff)
    return scatter_sum(edge_density, receiver, dim_size=num_nodes)


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
    Subclasses choose the radial network and the layers after the convolution
    (:meth:`_build_radial_and_mixing`), what the messages are divided by
    (:meth:`normalise_messages`), how elements enter (:meth:`element_mixing`,
    :meth:`self_connection`), or the whole of :meth:`messages`.
    """

    conv_groups: List[List[int]]  # declared for TorchScript: empty when e3nn computes conv_tp

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
        self._build_radial_and_mixing(irreps_mid.simplify())
        self.reshape = reshape_irreps(self.irreps_out)
        self._prepare_convolution()

    def __setstate__(self, state: dict) -> None:
        """Unpickled without ``__init__``: files of upstream lack the channel-wise convolution's
        constants, and ours of earlier versions may carry them in another layout, so they are
        derived from conv_tp here unless they are of this version."""
        super().__setstate__(state)
        if self.__dict__.get("conv_layout_version") != LAYOUT_VERSION:
            self._prepare_convolution()

    def _prepare_convolution(self) -> None:
        """Constants of :func:`channelwise_convolution` (empty when conv_tp has a shape it
        does not cover), as buffers left out of the state dict: derived, not learned."""
        layout = channelwise_layout(self.conv_tp)
        like = next(self.parameters())  # dtype and device of the block (its layers may be adapter-wrapped)
        self.conv_channelwise = layout.channels > 0
        self.conv_layout_version = LAYOUT_VERSION
        self.conv_channels, self.conv_groups = layout.channels, layout.groups
        for name in ("coupling", "weight_index", "input_order", "output_order"):
            value = getattr(layout, name)
            value = value.to(like.dtype) if value.is_floating_point() else value
            self.register_buffer(f"conv_{name}", value.to(like.device), persistent=False)

    def _build_radial_and_mixing(self, irreps_mid: o3.Irreps) -> None:
        """The MLP from radial features to tensor-product weights, and the linear mix
        irreps_mid -> irreps_out of the summed messages."""
        self.conv_tp_weights = e3nn_nn.FullyConnectedNet(
            [self.edge_feats_irreps.num_irreps] + self.radial_MLP + [self.conv_tp.weight_numel],
            torch.nn.functional.silu,
        )
        self.linear = o3.Linear(irreps_mid, self.irreps_out, internal_weights=True, shared_weights=True)

    def convolve(
        self, node_feats: torch.Tensor, edge_attrs: torch.Tensor, tp_weights: torch.Tensor, edge_index: torch.Tensor
    ) -> torch.Tensor:
        """Sender features coupled to their edges, summed on receivers: [n_nodes, irreps_mid.dim]."""
        if self.conv_channelwise:
            return channelwise_convolution(
                node_feats, edge_attrs, tp_weights, edge_index[0], edge_index[1], self.conv_channels, self.conv_groups,
                self.conv_coupling, self.conv_weight_index, self.conv_input_order, self.conv_output_order,
            )
        edge_messages = self.conv_tp(node_feats[edge_index[0]], edge_attrs, tp_weights)
        return scatter_sum(edge_messages, edge_index[1], dim_size=node_feats.shape[0])

    def normalise_messages(
        self, messages: torch.Tensor, edge_feats: torch.Tensor, edge_index: torch.Tensor, cutoff: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The mixed messages divided by the training data's average neighbour count."""
        return messages / self.avg_num_neighbors

    def forward(
        self,
        node_attrs: torch.Tensor,
        node_feats: torch.Tensor,
        edge_attrs: torch.Tensor,
        edge_feats: torch.Tensor,
        edge_index: torch.Tensor,
        cutoff: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(messages [n_nodes, channels, sum_l (2l+1)] for the product basis, the
        self-connection [n_nodes, hidden_irreps.dim] it adds back, or None)."""
        self_connection = self.self_connection(node_feats, node_attrs)
        messages = self.messages(node_attrs, node_feats, edge_attrs, edge_feats, edge_index, cutoff)
        return self.reshape(messages), self_connection

    def self_connection(self, node_feats: torch.Tensor, node_attrs: torch.Tensor) -> Optional[torch.Tensor]:
        """The residual of the input features the product block adds to its output (none here)."""
        return None

    def messages(
        self,
        node_attrs: torch.Tensor,
        node_feats: torch.Tensor,
        edge_attrs: torch.Tensor,
        edge_feats: torch.Tensor,
        edge_index: torch.Tensor,
        cutoff: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Up-projected sender features, coupled to the edges, summed on receivers, mixed,
        normalised and, per block, made element-dependent: [n_nodes, irreps_out.dim]."""
        node_feats = self.linear_up(node_feats)
        tp_weights = with_cutoff(self.conv_tp_weights(edge_feats), cutoff)
        messages = self.convolve(node_feats, edge_attrs, tp_weights, edge_index)
        messages = self.normalise_messages(self.linear(messages), edge_feats, edge_index, cutoff)
        return self.element_mixing(messages, node_attrs)

    def element_mixing(self, messages: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        """The last step of :meth:`messages` (nothing here)."""
        return messages


class RealAgnosticInteractionBlock(InteractionBlock):
    """First-layer interaction: element dependence enters after aggregation, via skip_tp."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_tp = o3.FullyConnectedTensorProduct(self.irreps_out, self.node_attrs_irreps, self.irreps_out)

    def element_mixing(self, messages: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        return self.skip_tp(messages, node_attrs)


class RealAgnosticResidualInteractionBlock(InteractionBlock):
    """Interaction with an element-dependent residual (self-connection) of the input features."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_tp = o3.FullyConnectedTensorProduct(
            self.node_feats_irreps, self.node_attrs_irreps, o3.Irreps(self.hidden_irreps)
        )

    def self_connection(self, node_feats: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        return self.skip_tp(node_feats, node_attrs)


class DensityNormalisation:
    """Mixin of an interaction block: messages are divided by 1 + a learned neighbour density
    (:func:`neighbour_density`, ``density_fn`` one linear map of the radial features) instead
    of the average neighbour count, which a foundation model trained on very different
    structures cannot fix once for all."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.density_fn = e3nn_nn.FullyConnectedNet([self.edge_feats_irreps.num_irreps, 1], torch.nn.functional.silu)

    def normalise_messages(
        self, messages: torch.Tensor, edge_feats: torch.Tensor, edge_index: torch.Tensor, cutoff: Optional[torch.Tensor]
    ) -> torch.Tensor:
        density = neighbour_density(self.density_fn(edge_feats), edge_index[1], cutoff, messages.shape[0])
        return messages / (density + 1)


class RealAgnosticDensityInteractionBlock(DensityNormalisation, RealAgnosticInteractionBlock):
    """RealAgnosticInteractionBlock normalised by the learned neighbour density."""


class RealAgnosticDensityResidualInteractionBlock(DensityNormalisation, RealAgnosticResidualInteractionBlock):
    """RealAgnosticResidualInteractionBlock normalised by the learned neighbour density."""


def gated_nonlinearity(irreps: o3.Irreps) -> e3nn_nn.Gate:
    """SiLU on the scalar blocks of ``irreps``; every other channel times the sigmoid of a
    gate scalar of its own. Input layout: scalars, gates, gated channels; output: ``irreps``."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l > 0])
    gates = o3.Irreps([(mul, "0e") for mul, _ in gated])
    return e3nn_nn.Gate(
        scalars, [torch.nn.functional.silu] * len(scalars), gates, [torch.nn.functional.sigmoid] * len(gates), gated
    )


class RealAgnosticResidualNonLinearInteractionBlock(InteractionBlock):
    """Residual interaction whose messages pass a gated non-linearity before the product.

    The radial network (a :class:`RadialMLP`) also sees learned embeddings of the sender's
    and the receiver's element; the convolved messages, mixed by ``linear_1``, are divided by
    alpha + beta * (learned neighbour density), added to a linear residual of the
    up-projected features, gated (:func:`gated_nonlinearity`) and mixed by ``linear_2``. The
    self-connection ``skip_tp`` is an element-independent o3.Linear.
    """

    def _build_radial_and_mixing(self, irreps_mid: o3.Irreps) -> None:
        scalars = o3.Irreps([(self.node_feats_irreps.count(o3.Irrep(0, 1)), (0, 1))])
        self.source_embedding = o3.Linear(self.node_attrs_irreps, scalars)
        self.target_embedding = o3.Linear(self.node_attrs_irreps, scalars)
        for embedding in (self.source_embedding, self.target_embedding):
            torch.nn.init.uniform_(embedding.weight, -1e-3, 1e-3)  # start close to element-blind
        edge_inputs = self.edge_feats_irreps.num_irreps + 2 * scalars.dim
        self.conv_tp_weights = RadialMLP([edge_inputs] + self.radial_MLP + [self.conv_tp.weight_numel])
        self.density_fn = RadialMLP([edge_inputs, 64, 1])
        self.alpha = torch.nn.Parameter(torch.tensor(20.0))
        self.beta = torch.nn.Parameter(torch.tensor(0.0))
        self.equivariant_nonlin = gated_nonlinearity(self.irreps_out)
        self.irreps_nonlin = self.equivariant_nonlin.irreps_in.simplify()
        self.linear_res = o3.Linear(self.node_feats_irreps, self.irreps_nonlin)
        self.linear_1 = o3.Linear(irreps_mid, self.irreps_nonlin)
        self.linear_2 = o3.Linear(self.irreps_out, self.irreps_out)
        self.skip_tp = o3.Linear(self.node_feats_irreps, o3.Irreps(self.hidden_irreps))

    def self_connection(self, node_feats: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        return self.skip_tp(node_feats)

    def messages(
        self,
        node_attrs: torch.Tensor,
        node_feats: torch.Tensor,
        edge_attrs: torch.Tensor,
        edge_feats: torch.Tensor,
        edge_index: torch.Tensor,
        cutoff: Optional[torch.Tensor],
    ) -> torch.Tensor:
        sender, receiver = edge_index[0], edge_index[1]
        node_feats = self.linear_up(node_feats)
        edge_inputs = torch.cat(
            [edge_feats, self.source_embedding(node_attrs)[sender], self.target_embedding(node_attrs)[receiver]], dim=-1
        )
        tp_weights = with_cutoff(self.conv_tp_weights(edge_inputs), cutoff)
        density = neighbour_density(self.density_fn(edge_inputs), receiver, cutoff, node_feats.shape[0])
        messages = self.linear_1(self.convolve(node_feats, edge_attrs, tp_weights, edge_index))
        messages = messages / (density * self.beta + self.alpha) + self.linear_res(node_feats)
        return self.linear_2(self.equivariant_nonlin(messages))


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
    block.__name__: block
    for block in (
        RealAgnosticInteractionBlock,
        RealAgnosticResidualInteractionBlock,
        RealAgnosticDensityInteractionBlock,
        RealAgnosticDensityResidualInteractionBlock,
        RealAgnosticResidualNonLinearInteractionBlock,
    )
}
