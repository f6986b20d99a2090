"""Helpers that reason about irreps layouts of the interaction and product blocks."""
from typing import List, Tuple

import torch
from e3nn import o3

TPInstruction = Tuple[int, int, int, str, bool]


def tp_out_irreps_with_instructions(
    irreps_node: o3.Irreps, irreps_edge: o3.Irreps, target_irreps: o3.Irreps
) -> Tuple[o3.Irreps, List[TPInstruction]]:
    """Output irreps and 'uvu' instructions of the message tensor product.

    Every (node irrep, edge irrep) pair contributes one output block per coupled irrep
    that the target keeps, with the node multiplicity preserved (channel-wise 'uvu'
    product). The blocks are sorted by irrep so that the following linear layer sees a
    canonical order; instructions are renumbered to follow the sort.
    """
    blocks: List[Tuple[int, o3.Irrep]] = []
    raw_instructions: List[TPInstruction] = []
    for i_node, (mul, ir_node) in enumerate(irreps_node):
        for i_edge, (_, ir_edge) in enumerate(irreps_edge):
            for ir_out in ir_node * ir_edge:
                if ir_out in target_irreps:
                    raw_instructions.append((i_node, i_edge, len(blocks), "uvu", True))
                    blocks.append((mul, ir_out))
    irreps_mid, permutation, _ = o3.Irreps(blocks).sort()
    instructions = sorted(
        ((i1, i2, permutation[i_out], mode, train) for i1, i2, i_out, mode, train in raw_instructions),
        key=lambda instruction: instruction[2],
    )
    return irreps_mid, instructions


def channel_irreps(irreps: o3.Irreps) -> o3.Irreps:
    """The irreps each channel carries, e.g. 16x0e+16x1o -> 1x0e+1x1o."""
    return o3.Irreps([ir for _, ir in irreps])


class reshape_irreps(torch.nn.Module):  # pylint: disable=invalid-name  (name fixed by model files)
    """[n, irreps.dim] in e3nn's multiplicity-major layout -> [n, channels, sum_l (2l+1)].

    The symmetric contraction works per channel on all irrep components together; every
    block of ``irreps`` must therefore have the same multiplicity.
    """

    def __init__(self, irreps: o3.Irreps) -> None:
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.dims = [ir.dim for _, ir in self.irreps]
        self.muls = [mul for mul, _ in self.irreps]

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        num_nodes = tensor.shape[0]
        fields = []
        start = 0
        for mul, dim in zip(self.muls, self.dims):
            block = tensor[:, start : start + mul * dim]
            start += mul * dim
            fields.append(block.reshape(num_nodes, mul, dim))
        return torch.cat(fields, dim=-1)
