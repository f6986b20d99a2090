"""The channel-wise convolution computes e3nn's conv_tp (summed on receivers) exactly,
with its first and second derivatives, and replaces it wherever the product has its shape."""
import copy
import pickle
from typing import Callable, Optional

import pytest
import torch
from e3nn import o3

from mace.adapters import inject_adapters
from mace.modules.convolution import channelwise_convolution, channelwise_layout
from mace.modules.irreps_tools import tp_out_irreps_with_instructions
from mace.modules.utils import scatter_sum
from tests.modules.helpers import tiny_model

pytestmark = pytest.mark.usefixtures("float64_default")
N_NODES, N_EDGES = 7, 23


def conv_tp(node_irreps: str, max_ell: int, target: str) -> o3.TensorProduct:
    """The conv_tp an interaction block builds for these irreps (built in float64: e3nn's
    Wigner blocks computed in float32 and cast differ by 1e-8)."""
    node, harmonics = o3.Irreps(node_irreps), o3.Irreps.spherical_harmonics(max_ell)
    irreps_mid, instructions = tp_out_irreps_with_instructions(node, harmonics, o3.Irreps(target))
    return o3.TensorProduct(node, harmonics, irreps_mid, instructions=instructions, shared_weights=False, internal_weights=False)


def by_e3nn(tp: o3.TensorProduct) -> Callable:
    return lambda nodes, attrs, weights, sender, receiver: scatter_sum(
        tp(nodes[sender], attrs, weights), receiver, dim_size=nodes.shape[0]
    )


def channelwise(tp: o3.TensorProduct) -> Callable:
    layout = channelwise_layout(tp)
    assert layout.channels > 0
    return lambda nodes, attrs, weights, sender, receiver: channelwise_convolution(
        nodes, attrs, weights, sender, receiver, *layout
    )


def inputs(tp: o3.TensorProduct, n_edges: int = N_EDGES) -> tuple:
    generator = torch.Generator().manual_seed(5)
    nodes = torch.randn(N_NODES, tp.irreps_in1.dim, generator=generator, dtype=torch.float64, requires_grad=True)
    attrs = torch.randn(n_edges, tp.irreps_in2.dim, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(n_edges, tp.weight_numel, generator=generator, dtype=torch.float64, requires_grad=True)
    sender = torch.randint(0, N_NODES, (n_edges,), generator=generator)
    receiver = torch.randint(0, N_NODES, (n_edges,), generator=generator)
    return nodes, attrs, weights, sender, receiver


def value_and_derivatives(convolution: Callable, nodes, attrs, weights, sender, receiver) -> list:
    """The output, its gradients, and the gradients of a function of those gradients (what a
    force loss differentiates)."""
    output = convolution(nodes, attrs, weights, sender, receiver)
    probe = torch.linspace(-1.0, 1.0, output.numel(), dtype=torch.float64).view_as(output)
    first = torch.autograd.grad((output * probe).sum() + (output**2).sum(), [nodes, attrs, weights], create_graph=True)
    second = torch.autograd.grad(sum((g**2).sum() for g in first[:2]), [nodes, attrs, weights])
    return [output.detach(), *[g.detach() for g in first], *second]


SHAPES = [
    ("8x0e", 3, "8x0e + 8x1o"),  # first interaction
    ("8x0e + 8x1o", 3, "8x0e + 8x1o"),  # later interactions, max_L 1
    ("8x0e + 8x1o + 8x2e", 2, "8x0e + 8x1o + 8x2e"),
    ("4x0e + 4x1o + 4x2e + 4x3o", 3, "4x0e + 4x1o + 4x2e + 4x3o"),
]


@pytest.mark.parametrize("node_irreps, max_ell, target", SHAPES)
def test_equals_e3nn_with_first_and_second_derivatives(node_irreps: str, max_ell: int, target: str) -> None:
    tp = conv_tp(node_irreps, max_ell, target)
    data = inputs(tp)
    for ours, reference in zip(value_and_derivatives(channelwise(tp), *data), value_and_derivatives(by_e3nn(tp), *data)):
        assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-12 * reference.abs().max().item())


def test_one_group_per_input_block_and_scalars_take_their_weights_first() -> None:
    """8x0e + 8x1o with harmonics to l=3, messages 0e + 1o: the 0e block feeds 2 paths (0e
    and 1o out: 4 components), the 1o block 3 (1o x 0e -> 1o, 1o x 1o -> 0e, 1o x 2e -> 1o: 7).
    The scalar group has one coupling column per path, the other one per input component."""
    layout = channelwise_layout(conv_tp("8x0e + 8x1o", 3, "8x0e + 8x1o"))
    scalar, vector = layout.groups
    assert scalar[:4] == [4, 2, 0, 1] and vector[:4] == [7, 3, 1, 3]
    assert layout.coupling.shape == (16, 4 * 2 + 7 * 3)
    assert scalar[6] == 2 and vector[6] == 7  # the scalar block's paths; the path of each 1o output component


def test_no_edges_gives_zero_messages() -> None:
    tp = conv_tp("8x0e + 8x1o", 2, "8x0e + 8x1o")
    output = channelwise(tp)(*inputs(tp, n_edges=0))
    assert output.shape == (N_NODES, tp.irreps_out.dim) and not output.any()


def test_other_products_are_left_to_e3nn() -> None:
    assert channelwise_layout(o3.FullyConnectedTensorProduct("4x0e + 4x1o", "2x0e", "4x0e")).channels == 0
    uneven = o3.Irreps("8x0e + 4x1o")
    assert channelwise_layout(conv_tp(str(uneven), 2, "8x0e + 4x1o")).channels == 0


def test_blocks_use_it_and_keep_their_state_dict_keys() -> None:
    model = tiny_model()
    for interaction in model.interactions:
        assert interaction.conv_channelwise
    assert not [key for key in model.state_dict() if ".conv_" in key and "conv_tp" not in key]


@pytest.mark.parametrize("adapter", [None, "mmea"])
def test_a_block_unpickled_without_its_constants_derives_them(adapter: Optional[str]) -> None:
    """Files of upstream, and ours from before (adapted ones too), carry the block without the constants."""
    model = tiny_model()
    if adapter is not None:
        inject_adapters(model, adapter)
    block = model.interactions[1]
    state = {key: value for key, value in copy.deepcopy(block).__dict__.items() if not key.startswith("conv_") or key == "conv_tp"}
    state["_buffers"] = {key: value for key, value in state["_buffers"].items() if not key.startswith("conv_")}
    state["_non_persistent_buffers_set"] = set()
    restored = pickle.loads(pickle.dumps(block))
    restored.__dict__.clear()
    restored.__setstate__(state)
    assert restored.conv_channelwise
    for name in ("conv_coupling", "conv_weight_index", "conv_input_order", "conv_output_order"):
        assert torch.equal(getattr(restored, name), getattr(block, name))
    assert "conv_coupling" not in restored.state_dict()


def test_a_block_unpickled_with_constants_of_another_layout_derives_them_again() -> None:
    """Our files written before the current layout carry its constants in the old meaning."""
    block = tiny_model().interactions[1]
    state = copy.deepcopy(block).__dict__
    state["conv_layout_version"] = 1
    state["_buffers"]["conv_input_order"] = state["_buffers"]["conv_input_order"].flip(0)
    restored = pickle.loads(pickle.dumps(block))
    restored.__dict__.clear()
    restored.__setstate__(state)
    assert torch.equal(restored.conv_input_order, block.conv_input_order)
    features = torch.randn(3, block.node_feats_irreps.dim, dtype=torch.float64)
    attrs = torch.randn(4, block.edge_attrs_irreps.dim, dtype=torch.float64)
    weights = torch.randn(4, block.conv_tp.weight_numel, dtype=torch.float64)
    edges = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 2]])
    torch.testing.assert_close(restored.convolve(features, attrs, weights, edges), block.convolve(features, attrs, weights, edges))
