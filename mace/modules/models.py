"""MACE and ScaleShiftMACE: the energy models, built from hyperparameters or unpickled.

An unpickled upstream file restores attributes without running ``__init__``; ``forward``
therefore only uses submodules and buffers present in every writer version, and treats
the newer multi-head layouts (``atomic_energies`` [heads, elements], ``scale`` [heads])
the same as the older scalar ones.
"""
import logging
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Type, Union

import numpy as np
import torch
from e3nn import o3
from e3nn.util.jit import compile_mode

from mace.data.configuration import DEFAULT_HEAD
from mace.modules.blocks import (
    DISTANCE_TRANSFORMS,
    RADIAL_BASES,
    AtomicEnergiesBlock,
    EquivariantProductBasisBlock,
    InteractionBlock,
    LinearNodeEmbeddingBlock,
    LinearReadoutBlock,
    NonLinearReadoutBlock,
    RadialEmbeddingBlock,
    ScaleShiftBlock,
)
from mace.modules.radial import ZBLBasis
from mace.modules.utils import (
    edge_vectors_and_lengths,
    forces_and_virials,
    scatter_sum,
    symmetric_strain,
)

Batch = Dict[str, torch.Tensor]


# Options upstream's MACE takes as keywords, and the values of each that this model
# implements (the first is upstream's default; None, like "None", means no transform).
IMPLEMENTED_OPTIONS: Dict[str, tuple] = {
    "radial_type": tuple(RADIAL_BASES),
    "distance_transform": ("None", None, *DISTANCE_TRANSFORMS),
    "pair_repulsion": (False, True),
}


def _check_implemented(**options: object) -> None:
    for name, value in options.items():
        implemented = IMPLEMENTED_OPTIONS[name]
        if value not in implemented:
            raise ValueError(
                f"MACE({name}={value!r}) is not supported: this fork implements "
                f"{name} in {list(implemented)}"
            )


def model_heads(model: torch.nn.Module) -> List[str]:
    """Head names: upstream's newer files carry ``heads``; older files and ours have one head."""
    heads = getattr(model, "heads", None)
    return [str(h) for h in heads] if heads else [DEFAULT_HEAD]


def sum_terms(terms: List[torch.Tensor]) -> torch.Tensor:
    """The sum of equally shaped per-node terms."""
    return torch.stack(terms, dim=0).sum(dim=0)


class _Edges(NamedTuple):
    """What every layer needs of the edges: lengths [n_edges, 1], spherical harmonics,
    radial features, and the cutoff still to apply to radial-MLP outputs (or None)."""

    lengths: torch.Tensor
    attrs: torch.Tensor
    feats: torch.Tensor
    cutoff: Optional[torch.Tensor]


@compile_mode("script")  # e3nn's jit.compile scripts it (mace.modules.export)
class MACE(torch.nn.Module):
    """Sum of per-layer readouts of equivariant many-body features, plus E0s (and the ZBL
    pair repulsion, ``pair_repulsion_fn``, when the model has it).

    The last layer keeps only scalar features (hidden_irreps' 0e block) and reads out
    through a small MLP; earlier layers read out linearly (unless only the last reads out).
    """

    def __init__(
        self,
        r_max: float,
        num_bessel: int,
        num_polynomial_cutoff: int,
        max_ell: int,
        interaction_cls: Type[InteractionBlock],
        interaction_cls_first: Type[InteractionBlock],
        num_interactions: int,
        num_elements: int,
        hidden_irreps: o3.Irreps,
        MLP_irreps: o3.Irreps,
        atomic_energies: np.ndarray,
        avg_num_neighbors: float,
        atomic_numbers: Sequence[int],
        correlation: Union[int, Sequence[int]],
        gate: Optional[Callable],
        radial_MLP: Optional[List[int]] = None,
        radial_type: str = "bessel",
        distance_transform: Optional[str] = "None",
        pair_repulsion: bool = False,
        apply_cutoff: bool = True,
        use_last_readout_only: bool = False,
        use_embedding_readout: bool = False,
        heads: Optional[List[str]] = None,
    ) -> None:
        """Upstream's keyword names and defaults. ``radial_type``: 'bessel', 'gaussian' or
        'chebyshev'; ``distance_transform``: 'None', 'Agnesi' or 'Soft'; ``pair_repulsion``
        adds ZBL repulsion (cut off at the pair's covalent radii) to the interaction energy;
        ``apply_cutoff=False`` applies the envelope to the radial-MLP outputs instead of
        the radial features; ``use_last_readout_only`` reads the energy out of the last
        layer alone. ``use_embedding_readout`` is accepted and, as upstream without its
        charge/spin embeddings (which this model does not have), changes nothing.
        ``heads`` names the readout heads (one energy per head and node; default one head,
        upstream's "Default"); the last readout's MLP gets ``MLP_irreps`` per head."""
        _check_implemented(radial_type=radial_type, distance_transform=distance_transform, pair_repulsion=pair_repulsion)
        super().__init__()
        hidden_irreps = o3.Irreps(hidden_irreps)
        correlations = [correlation] * num_interactions if isinstance(correlation, int) else list(correlation)
        radial_MLP = [64, 64, 64] if radial_MLP is None else list(radial_MLP)
        self.register_buffer("atomic_numbers", torch.tensor(list(atomic_numbers), dtype=torch.int64))
        self.register_buffer("r_max", torch.tensor(r_max, dtype=torch.get_default_dtype()))
        self.register_buffer("num_interactions", torch.tensor(num_interactions, dtype=torch.int64))
        self.heads: List[str] = [DEFAULT_HEAD] if heads is None else [str(head) for head in heads]
        num_heads = len(self.heads)
        heads_out = o3.Irreps(f"{num_heads}x0e")

        node_attrs_irreps = o3.Irreps([(num_elements, (0, 1))])
        num_channels = hidden_irreps.count(o3.Irrep(0, 1))
        scalar_irreps = o3.Irreps([(num_channels, (0, 1))])
        self.node_embedding = LinearNodeEmbeddingBlock(node_attrs_irreps, scalar_irreps)
        self.radial_embedding = RadialEmbeddingBlock(
            r_max, num_bessel, num_polynomial_cutoff, radial_type, str(distance_transform), apply_cutoff
        )
        if pair_repulsion:
            self.pair_repulsion_fn = ZBLBasis(p=num_polynomial_cutoff)
        if use_embedding_readout:
            logging.warning("use_embedding_readout has no effect: this model has no charge/spin embeddings to read out")
        edge_feats_irreps = o3.Irreps(f"{self.radial_embedding.out_dim}x0e")
        sh_irreps = o3.Irreps.spherical_harmonics(max_ell)
        self.spherical_harmonics = o3.SphericalHarmonics(sh_irreps, normalize=True, normalization="component")
        interaction_irreps = (sh_irreps * num_channels).sort()[0].simplify()
        self.atomic_energies_fn = AtomicEnergiesBlock(atomic_energies)

        self.interactions = torch.nn.ModuleList()
        self.products = torch.nn.ModuleList()
        self.readouts = torch.nn.ModuleList()
        node_feats_irreps = scalar_irreps
        for layer in range(num_interactions):
            is_last = layer == num_interactions - 1
            layer_irreps = o3.Irreps(str(hidden_irreps[0])) if is_last else hidden_irreps
            block_cls = interaction_cls_first if layer == 0 else interaction_cls
            interaction = block_cls(
                node_attrs_irreps=node_attrs_irreps,
                node_feats_irreps=node_feats_irreps,
                edge_attrs_irreps=sh_irreps,
                edge_feats_irreps=edge_feats_irreps,
                target_irreps=interaction_irreps,
                hidden_irreps=layer_irreps,
                avg_num_neighbors=avg_num_neighbors,
                radial_MLP=radial_MLP,
            )
            self.interactions.append(interaction)
            self.products.append(
                EquivariantProductBasisBlock(
                    node_feats_irreps=interaction_irreps,
                    target_irreps=layer_irreps,
                    correlation=correlations[layer],
                    num_elements=num_elements,
                    use_sc="Residual" in block_cls.__name__,
                )
            )
            if is_last:
                self.readouts.append(
                    NonLinearReadoutBlock(
                        layer_irreps, (num_heads * o3.Irreps(MLP_irreps)).simplify(), gate, heads_out, num_heads
                    )
                )
            elif not use_last_readout_only:
                self.readouts.append(LinearReadoutBlock(layer_irreps, heads_out))
            node_feats_irreps = layer_irreps

    def forward(
        self,
        data: Batch,
        training: bool = False,
        compute_force: bool = True,
        compute_virials: bool = False,
        compute_stress: bool = False,
    ) -> Dict[str, Optional[torch.Tensor]]:
        """Energies per graph, node energies, and forces / virials / stress by autograd."""
        num_graphs = data["ptr"].numel() - 1
        batch = data["batch"]
        node_attrs = data["node_attrs"]
        node_heads = data["head"][batch] if "head" in data else torch.zeros_like(batch)
        positions = data["positions"]
        shifts = data["shifts"]
        strain: Optional[torch.Tensor] = None
        if compute_virials or compute_stress:
            positions, shifts, strain = symmetric_strain(
                positions, data["unit_shifts"], data["cell"], data["edge_index"], batch, num_graphs
            )
        elif compute_force:
            positions.requires_grad_(True)

        node_e0 = self.atomic_energies_fn(node_attrs).gather(1, node_heads.unsqueeze(1)).squeeze(1)
        node_interaction_energies = self._node_energy_terms(data, node_attrs, positions, shifts, node_heads)
        node_inter = self._combine_layer_energies(node_interaction_energies, node_heads)
        node_energy = node_e0 + node_inter
        contributions = torch.stack(
            [scatter_sum(node_e0, batch, num_graphs)]
            + [scatter_sum(e, batch, num_graphs) for e in node_interaction_energies],
            dim=-1,
        )
        interaction_energy = scatter_sum(node_inter, batch, num_graphs)
        energy = scatter_sum(node_e0, batch, num_graphs) + interaction_energy

        forces: Optional[torch.Tensor] = None
        virials: Optional[torch.Tensor] = None
        stress: Optional[torch.Tensor] = None
        if compute_force or strain is not None:
            forces, virials, stress = forces_and_virials(energy, positions, strain, data["cell"], training)
        return {
            "energy": energy,
            "node_energy": node_energy,
            "interaction_energy": interaction_energy,
            "contributions": contributions,
            "forces": forces,
            "virials": virials,
            "stress": stress,
        }

    def node_features(self, data: Batch) -> List[torch.Tensor]:
        """The node features of each layer, as its readout receives them (after the product).

        One [n_nodes, layer_irreps[i].dim] tensor per layer (see :meth:`layer_irreps`); the
        positions are used as given (no forces). Used for descriptors; ``forward`` does not
        call it.
        """
        edges = self._embed_edges(data, data["node_attrs"], data["positions"], data["shifts"])
        return self._layer_node_features(data, data["node_attrs"], edges)

    def layer_irreps(self) -> List[o3.Irreps]:
        """The irreps of each layer's node features: hidden_irreps, and its 0e block for the last."""
        return [o3.Irreps(str(product.linear.irreps_out)) for product in self.products]

    def _embed_edges(
        self, data: Batch, node_attrs: torch.Tensor, positions: torch.Tensor, shifts: torch.Tensor
    ) -> _Edges:
        """Edge vectors from the positions, computed once for every layer and the repulsion."""
        vectors, lengths = edge_vectors_and_lengths(positions, data["edge_index"], shifts)
        feats, cutoff = self.radial_embedding(lengths, node_attrs, data["edge_index"], self.atomic_numbers)
        return _Edges(lengths, self.spherical_harmonics(vectors), feats, cutoff)

    def _layer_node_features(self, data: Batch, node_attrs: torch.Tensor, edges: _Edges) -> List[torch.Tensor]:
        """Run the message-passing layers; each layer's node features, in order."""
        node_feats = self.node_embedding(node_attrs)
        layers = []
        for interaction, product in zip(self.interactions, self.products):
            node_feats, self_connection = interaction(
                node_attrs=node_attrs,
                node_feats=node_feats,
                edge_attrs=edges.attrs,
                edge_feats=edges.feats,
                edge_index=data["edge_index"],
                cutoff=edges.cutoff,
            )
            node_feats = product(node_feats=node_feats, self_connection=self_connection, node_attrs=node_attrs)
            layers.append(node_feats)
        return layers

    def _node_energy_terms(
        self,
        data: Batch,
        node_attrs: torch.Tensor,
        positions: torch.Tensor,
        shifts: torch.Tensor,
        node_heads: torch.Tensor,
    ) -> List[torch.Tensor]:
        """The [n_nodes] interaction energy terms, before scaling: the ZBL repulsion (if the
        model has it), then one readout per layer (one of the last layer, when the model
        reads out only there, as a single readout means), each at the node's head."""
        edges = self._embed_edges(data, node_attrs, positions, shifts)
        layers = self._layer_node_features(data, node_attrs, edges)
        if len(self.readouts) == 1:
            layers = layers[-1:]
        terms: List[torch.Tensor] = []
        for index, readout in enumerate(self.readouts):
            per_head = readout(layers[index], node_heads)
            terms.append(per_head.gather(1, node_heads.unsqueeze(1)).squeeze(1))
        if hasattr(self, "pair_repulsion_fn"):  # TorchScript resolves hasattr when compiling
            return [self.pair_repulsion_fn(edges.lengths, node_attrs, data["edge_index"], self.atomic_numbers)] + terms
        return terms

    def _combine_layer_energies(self, layer_energies: List[torch.Tensor], node_heads: torch.Tensor) -> torch.Tensor:
        return sum_terms(layer_energies)


class ScaleShiftMACE(MACE):
    """MACE whose interaction energies are predicted in scaled units: E_i = E0 + scale * e_i + shift.

    As upstream, e_i includes the ZBL repulsion, which is therefore scaled too.
    """

    def __init__(self, atomic_inter_scale: float, atomic_inter_shift: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale_shift = ScaleShiftBlock(scale=atomic_inter_scale, shift=atomic_inter_shift)

    def _combine_layer_energies(self, layer_energies: List[torch.Tensor], node_heads: torch.Tensor) -> torch.Tensor:
        return self.scale_shift(sum_terms(layer_energies), node_heads)
