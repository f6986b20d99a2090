"""The edge convolution of an interaction block, computed channel by channel.

MACE's ``conv_tp`` is an e3nn ``TensorProduct`` whose every path is channel-wise ('uvu'):
sender features (one multiplicity U for every irrep) times the edge's spherical harmonics,
one weight per edge, path and channel. e3nn computes it path by path, slicing its inputs
and concatenating the outputs; with forces in the loss the training step differentiates
that twice, and every slice of an edge-sized tensor then allocates and zero-fills a tensor
of the whole size, once per path: on the CPU that was a quarter of a training step.

Here the paths are computed in groups, one group per input irrep block (its components d,
its paths, their output components K): the harmonics contracted with one coupling tensor
(each path's Wigner 3j block times its e3nn path weight), and a batched matrix product with
the sender features of that block. A block of scalars (d = 1) takes the path weights into
its features first ([edges, paths, U], so the product gives the weighted messages at once);
a larger block is multiplied by its weights, spread over the output components, after the
product. Grouping skips the zeros that one product over all input components would carry
(a 0e input feeds none of a 1o input's paths), and the edge tensors of K components by U
channels, the largest of the step and each pass over them memory-bound, are written and
read fewer times. Edge tensors keep the channel as their last, contiguous axis: spreading
each path's weights over its output components then copies whole rows of channels, where
gathering along the last axis (a channel-major layout) was as slow as all the products of
the convolution together. The e3nn module stays in the model (its attributes are what
model files carry); this module only reads its instructions.
"""
from typing import Dict, List, NamedTuple

import torch
from e3nn import o3

from mace.modules.utils import scatter_sum


# Raised whenever the constants below change meaning: blocks unpickled with constants of
# another version (model files carry them) derive them again.
LAYOUT_VERSION = 3


class ChannelwiseLayout(NamedTuple):
    """Constants of the channel-wise product (see :func:`channelwise_layout`)."""

    channels: int  # U, the multiplicity of every input and output irrep
    # One entry per input irrep block with paths: [output components K, coupling columns Q,
    # first input component, input components d, offset of its K * Q coupling columns,
    # offset and length of its entries in weight_index]
    groups: List[List[int]]
    coupling: torch.Tensor  # [dim of the harmonics, sum of K * Q]: each group's [K, Q] block
    weight_index: torch.Tensor  # per group: its paths (d = 1) or the path of each output component
    input_order: torch.Tensor  # [D1 * U]: e3nn's input layout -> (component, channel)
    output_order: torch.Tensor  # [K * U]: (group, component, channel) -> e3nn's output layout


def _offsets(irreps: o3.Irreps) -> list:
    """Start of each irrep block within one channel (multiplicity 1)."""
    starts, position = [], 0
    for _, ir in irreps:
        starts.append(position)
        position += ir.dim
    return starts


def _is_channelwise(tp: o3.TensorProduct) -> bool:
    """Every input-1 and output irrep has the same multiplicity U, every input-2 irrep one,
    and each output block is written by exactly one weighted 'uvu' path of U weights."""
    if len(tp.irreps_in1) == 0 or tp.internal_weights or tp.shared_weights:
        return False
    channels = tp.irreps_in1[0].mul
    outputs = sorted(ins.i_out for ins in tp.instructions)
    return (
        all(mul == channels for mul, _ in tp.irreps_in1)
        and all(mul == channels for mul, _ in tp.irreps_out)
        and all(mul == 1 for mul, _ in tp.irreps_in2)
        and outputs == list(range(len(tp.irreps_out)))
        and all(
            ins.connection_mode == "uvu" and ins.has_weight and tuple(ins.path_shape) == (channels, 1)
            for ins in tp.instructions
        )
    )


def _no_layout() -> ChannelwiseLayout:
    empty = torch.zeros(0, dtype=torch.long)
    return ChannelwiseLayout(0, [], torch.zeros(0, 0, dtype=torch.float64), empty, empty, empty)


def _output_dim(tp: o3.TensorProduct, path: int) -> int:
    """Components of the output irrep that ``path`` writes."""
    return tp.irreps_out[tp.instructions[path].i_out].ir.dim


def _group_coupling(tp: o3.TensorProduct, block: int, paths: List[int]) -> torch.Tensor:
    """[dim of the harmonics, K, Q] for the paths of one input block: Q = d columns (the
    block's components), or one per path when d = 1 (the weights enter with the features)."""
    in2 = _offsets(tp.irreps_in2)
    ir1 = tp.irreps_in1[block].ir
    per_path = ir1.dim == 1
    components = sum(_output_dim(tp, path) for path in paths)
    coupling = torch.zeros(tp.irreps_in2.dim, components, len(paths) if per_path else ir1.dim, dtype=torch.float64)
    row = 0
    for column, path in enumerate(paths):
        ins = tp.instructions[path]
        ir2, ir_out = tp.irreps_in2[ins.i_in2].ir, tp.irreps_out[ins.i_out].ir
        wigner = o3.wigner_3j(ir1.l, ir2.l, ir_out.l, dtype=torch.float64) * ins.path_weight  # [m1, m2, m_out]
        harmonics = slice(in2[ins.i_in2], in2[ins.i_in2] + ir2.dim)
        columns = slice(column, column + 1) if per_path else slice(0, ir1.dim)
        coupling[harmonics, row : row + ir_out.dim, columns] = wigner.permute(1, 2, 0)
        row += ir_out.dim
    return coupling


def channelwise_layout(tp: o3.TensorProduct) -> ChannelwiseLayout:
    """The constants that compute ``tp`` channel by channel (float64, on the CPU); for a
    product of another shape, an empty layout with ``channels == 0`` (e3nn computes it)."""
    if not _is_channelwise(tp):
        return _no_layout()
    channels = tp.irreps_in1[0].mul
    in1 = _offsets(tp.irreps_in1)
    groups: List[List[int]] = []
    couplings: List[torch.Tensor] = []
    weight_index: List[int] = []
    first_component_of_output: Dict[int, int] = {}  # output block -> its first component in the groups' outputs
    offset, components_before = 0, 0
    for block, (_, ir1) in enumerate(tp.irreps_in1):
        paths = [path for path, ins in enumerate(tp.instructions) if ins.i_in1 == block]
        if not paths:
            continue
        coupling = _group_coupling(tp, block, paths)
        components, columns = coupling.shape[1], coupling.shape[2]
        indices = paths if ir1.dim == 1 else [path for path in paths for _ in range(_output_dim(tp, path))]
        groups.append([components, columns, in1[block], ir1.dim, offset, len(weight_index), len(indices)])
        for path in paths:
            first_component_of_output[tp.instructions[path].i_out] = components_before
            components_before += _output_dim(tp, path)
        couplings.append(coupling.reshape(tp.irreps_in2.dim, -1))
        weight_index.extend(indices)
        offset += components * columns
    input_order = [
        channels * in1[block] + channel * ir.dim + component
        for block, (_, ir) in enumerate(tp.irreps_in1)
        for component in range(ir.dim)
        for channel in range(channels)
    ]
    output_order = [
        (first_component_of_output[block] + component) * channels + channel
        for block, (_, ir) in enumerate(tp.irreps_out)
        for channel in range(channels)
        for component in range(ir.dim)
    ]
    return ChannelwiseLayout(
        channels=channels,
        groups=groups,
        coupling=torch.cat(couplings, dim=1),
        weight_index=torch.tensor(weight_index, dtype=torch.long),
        input_order=torch.tensor(input_order, dtype=torch.long),
        output_order=torch.tensor(output_order, dtype=torch.long),
    )


def channelwise_convolution(
    node_feats: torch.Tensor,
    edge_attrs: torch.Tensor,
    weights: torch.Tensor,
    sender: torch.Tensor,
    receiver: torch.Tensor,
    channels: int,
    groups: List[List[int]],
    coupling: torch.Tensor,
    weight_index: torch.Tensor,
    input_order: torch.Tensor,
    output_order: torch.Tensor,
) -> torch.Tensor:
    """The product of each edge's sender features [n_nodes, irreps_in1.dim] with its
    harmonics [n_edges, irreps_in2.dim] and weights [n_edges, P * U], summed on the
    receivers: [n_nodes, irreps_out.dim] in e3nn's layout. The layout changes happen on the
    nodes, not on the (many more) edges."""
    n_nodes, n_edges = node_feats.shape[0], edge_attrs.shape[0]
    features = node_feats.index_select(1, input_order).view(n_nodes, -1, channels).index_select(0, sender)
    per_path = weights.view(n_edges, weights.shape[1] // channels, channels)
    couplings = edge_attrs @ coupling
    messages: List[torch.Tensor] = []
    for group in groups:
        components, columns, first, dim, offset, index_start, index_length = group
        group_coupling = couplings[:, offset : offset + components * columns].reshape(n_edges, components, columns)
        group_weights = per_path.index_select(1, weight_index[index_start : index_start + index_length])
        group_features = features[:, first : first + dim]
        if dim == 1:
            edge_messages = torch.bmm(group_coupling, group_features * group_weights)
        else:
            edge_messages = torch.bmm(group_coupling, group_features) * group_weights
        messages.append(scatter_sum(edge_messages.reshape(n_edges, components * channels), receiver, dim_size=n_nodes))
    return torch.cat(messages, dim=1).index_select(1, output_order)
