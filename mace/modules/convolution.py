"""The edge convolution of an interaction block, computed channel by channel.

MACE's ``conv_tp`` is an e3nn ``TensorProduct`` whose every path is channel-wise ('uvu'):
sender features (one multiplicity U for every irrep) times the edge's spherical harmonics,
one weight per edge, path and channel. e3nn computes it path by path, slicing its inputs
and concatenating the outputs; with forces in the loss the training step differentiates
that twice, and every slice of an edge-sized tensor then allocates and zero-fills a tensor
of the whole size, once per path: on the CPU that was a quarter of a training step.

Here the same product is three dense operations for all paths at once: the spherical
harmonics contracted with one coupling tensor (each path's Wigner 3j block times its e3nn
path weight), a batched matrix product with the sender features, and the weights applied
per (output component, channel). Edge tensors keep the channel as their last, contiguous
axis: spreading each path's weights over its output components then copies whole rows of
channels, where gathering along the last axis (a channel-major layout) was as slow as all
the products of the convolution together. The e3nn module stays in the model (its
attributes are what model files carry); this module only reads its instructions.
"""
from typing import NamedTuple

import torch
from e3nn import o3

from mace.modules.utils import scatter_sum


# Raised whenever the constants below change meaning: blocks unpickled with constants of
# another version (model files carry them) derive them again.
LAYOUT_VERSION = 2


class ChannelwiseLayout(NamedTuple):
    """Constants of the channel-wise product (see :func:`channelwise_layout`)."""

    channels: int  # U, the multiplicity of every input and output irrep
    paths: int  # P, one weight block of U values per path
    coupling: torch.Tensor  # [dim of the harmonics, D1 * K]: D1 input, K output components
    path_of_column: torch.Tensor  # [K]: the path (weight block) of each output component
    input_order: torch.Tensor  # [D1 * U]: e3nn's input layout -> (component, channel)
    output_order: torch.Tensor  # [K * U]: (component, channel) -> e3nn's output layout


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
    return ChannelwiseLayout(0, 0, torch.zeros(0, dtype=torch.float64), empty, empty, empty)


def channelwise_layout(tp: o3.TensorProduct) -> ChannelwiseLayout:
    """The constants that compute ``tp`` channel by channel (float64, on the CPU); for a
    product of another shape, an empty layout with ``channels == 0`` (e3nn computes it)."""
    if not _is_channelwise(tp):
        return _no_layout()
    channels = tp.irreps_in1[0].mul
    in1, in2, out = _offsets(tp.irreps_in1), _offsets(tp.irreps_in2), _offsets(tp.irreps_out)
    dim1, dim_out = sum(ir.dim for _, ir in tp.irreps_in1), sum(ir.dim for _, ir in tp.irreps_out)
    coupling = torch.zeros(tp.irreps_in2.dim, dim1, dim_out, dtype=torch.float64)
    path_of_column = torch.zeros(dim_out, dtype=torch.long)
    for path, ins in enumerate(tp.instructions):
        ir1, ir2, ir_out = tp.irreps_in1[ins.i_in1].ir, tp.irreps_in2[ins.i_in2].ir, tp.irreps_out[ins.i_out].ir
        block = o3.wigner_3j(ir1.l, ir2.l, ir_out.l, dtype=torch.float64) * ins.path_weight
        rows, columns = slice(in1[ins.i_in1], in1[ins.i_in1] + ir1.dim), slice(out[ins.i_out], out[ins.i_out] + ir_out.dim)
        coupling[in2[ins.i_in2] : in2[ins.i_in2] + ir2.dim, rows, columns] = block.permute(1, 0, 2)
        path_of_column[columns] = path
    input_order = [
        channels * in1[block] + channel * ir.dim + component
        for block, (_, ir) in enumerate(tp.irreps_in1)
        for component in range(ir.dim)
        for channel in range(channels)
    ]
    output_order = [
        (out[block] + component) * channels + channel
        for block, (_, ir) in enumerate(tp.irreps_out)
        for channel in range(channels)
        for component in range(ir.dim)
    ]
    return ChannelwiseLayout(
        channels=channels,
        paths=len(tp.instructions),
        coupling=coupling.reshape(tp.irreps_in2.dim, dim1 * dim_out),
        path_of_column=path_of_column,
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
    paths: int,
    coupling: torch.Tensor,
    path_of_column: torch.Tensor,
    input_order: torch.Tensor,
    output_order: torch.Tensor,
) -> torch.Tensor:
    """The product of each edge's sender features [n_nodes, irreps_in1.dim] with its
    harmonics [n_edges, irreps_in2.dim] and weights [n_edges, P * U], summed on the
    receivers: [n_nodes, irreps_out.dim] in e3nn's layout. The layout changes happen on the
    nodes, not on the (many more) edges."""
    n_nodes, n_edges = node_feats.shape[0], edge_attrs.shape[0]
    dim_out = path_of_column.shape[0]
    features = node_feats.index_select(1, input_order).view(n_nodes, -1, channels).index_select(0, sender)
    couplings = (edge_attrs @ coupling).view(n_edges, features.shape[1], dim_out)
    per_row = weights.view(n_edges, paths, channels).index_select(1, path_of_column)
    edge_messages = (torch.bmm(couplings.transpose(1, 2), features) * per_row).reshape(n_edges, dim_out * channels)
    return scatter_sum(edge_messages, receiver, dim_size=n_nodes).index_select(1, output_order)
