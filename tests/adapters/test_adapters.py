"""Adapted models: start as the foundation, stay exactly equivariant, train only adapters, merge."""
import copy

import numpy as np
import pytest
import torch
from e3nn import nn as e3nn_nn
from e3nn import o3

from mace.adapters import ELoRAConfig, LoRAConfig, MMEAConfig, count_trainable, inject_adapters, merge_elora
from mace.adapters.elora import LowRankUpdate
from mace.adapters.lora import DenseLoRA, IrrepsLoRA
from mace.adapters.mmea import MMEALinear

from .conftest import energies_forces, make_batch, max_difference, perturb_trainable

ADAPTERS = [
    ("mmea", MMEAConfig(rank=4, init="zero", phi="exp", input_norm="none")),
    ("mmea", MMEAConfig(rank=4, std=0.01)),
    ("elora", ELoRAConfig(rank=4, alpha=8.0)),
    ("lora", LoRAConfig(rank=4, alpha=2.0)),
]


def _orthogonal(seed: int, reflect: bool) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))
    return -q if reflect else q


@pytest.mark.parametrize("method, settings", [ADAPTERS[0], ("elora", ELoRAConfig()), ("lora", LoRAConfig())])
def test_zero_initialised_adapter_predicts_as_foundation(small_hco, acac_frames, method, settings):
    batch = make_batch(small_hco, acac_frames)
    reference = energies_forces(small_hco, batch)
    adapted = inject_adapters(small_hco, method, settings)
    assert max_difference(reference, energies_forces(adapted, batch)) == 0.0


def test_mmea_gates_start_at_one_and_wrap_every_linear(small_hco):
    model = inject_adapters(small_hco, "mmea", MMEAConfig(rank=4))
    wrappers = [m for m in model.modules() if isinstance(m, MMEALinear)]
    assert len(wrappers) == 10
    bases = {id(wrapper.base) for wrapper in wrappers}
    assert all(id(m) in bases for m in model.modules() if isinstance(m, o3.Linear))
    for wrapper in wrappers:
        assert wrapper.irreps_in == wrapper.base.irreps_in and wrapper.irreps_out == wrapper.base.irreps_out
        assert not wrapper.to_hidden.bias.any()
        if wrapper.to_gates is not None:
            assert not wrapper.to_gates.weight.any() and not wrapper.to_gates.bias.any()
        assert wrapper.to_scalars.weight.any() and not wrapper.to_scalars.bias.any()


@pytest.mark.parametrize("phi, gate", [("res", lambda s: 1.0 + s), ("exp", torch.exp)])
def test_mmea_gate_form_scales_each_channel_by_phi_of_s(phi, gate):
    torch.manual_seed(0)
    base = o3.Linear("3x0e+2x1o", "2x0e+2x1o").to(torch.float64)
    layer = MMEALinear(base, MMEAConfig(rank=4, init="zero", phi=phi))
    s = torch.tensor([0.3, -0.2], dtype=torch.float64)
    with torch.no_grad():
        layer.to_gates.bias.copy_(s)
    x = torch.randn(5, base.irreps_in.dim, dtype=torch.float64)
    y, expected = layer(x), base(x)
    assert torch.equal(y[:, :2], expected[:, :2])  # zero scalar branch
    scaled = expected[:, 2:].reshape(5, 2, 3) * gate(s)[None, :, None]
    assert torch.allclose(y[:, 2:], scaled.reshape(5, 6), atol=1e-14)


def _gated_layer(input_norm: str) -> MMEALinear:
    """An MMEA layer on '3x0e+2x1o' inputs whose gates and shifts both read the invariants."""
    torch.manual_seed(0)
    base = o3.Linear("3x0e+2x1o", "2x0e+2x1o").to(torch.float64)
    layer = MMEALinear(base, MMEAConfig(rank=4, input_norm=input_norm))
    with torch.no_grad():
        layer.to_gates.weight.normal_()
    return layer


def test_mmea_gate_mlp_reads_invariants_normalised_per_node():
    layer, raw = _gated_layer("layer"), _gated_layer("none")
    x = torch.randn(6, 9, dtype=torch.float64) * 3.0 + 1.0
    scalars = x[:, :3]
    normalised = (scalars - scalars.mean(-1, keepdim=True)) / torch.sqrt(scalars.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(layer._invariants(x), normalised, atol=1e-12)
    assert torch.equal(raw._invariants(x), scalars)
    hidden = torch.nn.functional.silu(layer.to_hidden(normalised))
    y, expected = layer(x), layer.base(x)
    assert torch.allclose(y[:, :2], expected[:, :2] + layer.to_scalars(hidden), atol=1e-12)
    gates = 1.0 + layer.to_gates(hidden)
    assert torch.allclose(y[:, 2:], (expected[:, 2:].reshape(6, 2, 3) * gates[:, :, None]).reshape(6, 6), atol=1e-12)
    assert not torch.allclose(raw(x), y)


def test_mmea_layer_of_an_older_model_file_reads_raw_invariants():
    """Model files written before ``input_norm`` existed unpickle without it."""
    layer, raw = _gated_layer("layer"), _gated_layer("none")
    state = dict(layer.__dict__)
    del state["input_norm"]
    older = MMEALinear.__new__(MMEALinear)
    older.__setstate__(state)
    x = torch.randn(4, 9, dtype=torch.float64)
    assert older.input_norm is False and torch.equal(older(x), raw(x))


def test_mmea_single_invariant_is_left_raw():
    base = o3.Linear("1x0e+2x1o", "2x1o").to(torch.float64)
    layer = MMEALinear(base, MMEAConfig(rank=4))
    x = torch.randn(3, 7, dtype=torch.float64)
    assert torch.equal(layer._invariants(x), x[:, :1])


@pytest.mark.parametrize("method, settings", ADAPTERS)
def test_adapted_model_is_equivariant(small_hco, acac_frames, method, settings):
    batch = make_batch(small_hco, acac_frames)
    foundation = energies_forces(small_hco, batch)
    model = inject_adapters(small_hco, method, settings)
    perturb_trainable(model)
    energy, forces = energies_forces(model, batch)
    assert max_difference(foundation, [energy, forces]) > 1e-3  # the adapter does act
    for seed, reflect in [(1, False), (2, True)]:
        rotation = _orthogonal(seed, reflect)
        rotated_energy, rotated_forces = energies_forces(model, make_batch(model, acac_frames, rotation))
        expected_forces = forces @ torch.from_numpy(rotation).T
        assert max_difference([energy, expected_forces], [rotated_energy, rotated_forces]) < 1e-10


@pytest.mark.parametrize("method, settings", [ADAPTERS[1], ADAPTERS[2], ADAPTERS[3], ("none", None)])
@pytest.mark.parametrize("foundation", ["densityzbl_hco_template", "nonlinear_hcno"])
def test_adapters_inject_into_the_newest_blocks_and_stay_equivariant(
    request, acac_frames, foundation, method, settings
):
    """Density blocks with ZBL and Agnesi (upstream's file) and the non-linear block: every
    method injects, trains something, and stays equivariant with random adapter weights."""
    model = inject_adapters(copy.deepcopy(request.getfixturevalue(foundation)), method, settings)
    assert count_trainable(model) > 0
    perturb_trainable(model)
    energy, forces = energies_forces(model, make_batch(model, acac_frames))
    for seed, reflect in [(3, False), (4, True)]:
        rotation = _orthogonal(seed, reflect)
        rotated = energies_forces(model, make_batch(model, acac_frames, rotation))
        assert max_difference([energy, forces @ torch.from_numpy(rotation).T], rotated) < 1e-10


@pytest.mark.parametrize("method, settings", ADAPTERS)
def test_training_moves_only_trainable_parameters(small_hco, acac_frames, method, settings):
    model = inject_adapters(small_hco, method, settings)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(model, acac_frames)
    for _ in range(3):
        optimizer.zero_grad()
        output = model(dict(batch), training=True, compute_force=True)
        loss = (output["energy"] + 1.0).square().mean() + output["forces"].square().mean()
        loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert parameter.grad is None, name
            assert torch.equal(parameter, frozen[name]), name
        else:
            assert not torch.equal(parameter, trainable[name]), name
    assert frozen and trainable


@pytest.mark.parametrize("method, settings", [ADAPTERS[1], ADAPTERS[2], ADAPTERS[3]])
def test_merge_folds_low_rank_updates(small_hco, small_hco_template, acac_frames, method, settings):
    batch = make_batch(small_hco, acac_frames)
    model = inject_adapters(small_hco, method, settings)
    perturb_trainable(model)
    before = energies_forces(model, batch)
    merged = merge_elora(model)
    assert max_difference(before, energies_forces(merged, batch)) < 1e-10
    assert not any(isinstance(m, LowRankUpdate) for m in merged.modules())
    if method != "mmea":
        assert merged.state_dict().keys() == small_hco_template.state_dict().keys()
        bessel = small_hco_template.radial_embedding.bessel_fn.bessel_weights.numel()
        assert sum(p.numel() for p in merged.parameters()) == sum(
            p.numel() for p in small_hco_template.parameters()
        ) + (bessel if method == "elora" else 0)  # ELoRA trains the Bessel frequencies, LoRA does not


def test_lora_wraps_upstreams_layers_and_trains_only_its_factors(small_hco):
    linears = sum(isinstance(m, o3.Linear) for m in small_hco.modules())
    dense = sum(len(list(m.children())) for m in small_hco.modules() if isinstance(m, e3nn_nn.FullyConnectedNet))
    model = inject_adapters(small_hco, "lora", LoRAConfig())
    assert sum(isinstance(m, IrrepsLoRA) for m in model.modules()) == linears == 10
    assert sum(isinstance(m, DenseLoRA) for m in model.modules()) == dense > 0
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A" in name or ".lora_B" in name for name in trainable)
    for module in model.modules():
        if isinstance(module, IrrepsLoRA):
            assert module.irreps_in == module.base.irreps_in and module.irreps_out == module.base.irreps_out
            assert not any(b.any() for b in module.lora_B) and module.scale == 0.25
        elif isinstance(module, DenseLoRA):
            assert not module.lora_B.any() and module.lora_A.std() < 1e-2 and module.scale == 0.25


def test_lora_update_of_an_o3_linear_is_upstreams_two_layer_bottleneck():
    """B(A(x)) through rank x (irreps shared by input and output), each an o3.Linear with
    e3nn's normalisation, scaled by alpha / rank, written as a weight update."""
    base = o3.Linear("16x0e+8x0e+8x1o+4x2e+3x1e", "5x0e+6x1o+2x0e+3x2o")
    wrapper = IrrepsLoRA(base, LoRAConfig(rank=3, alpha=2.0))
    assert [tuple(a.shape) for a in wrapper.lora_A] == [(16, 3), (8, 3), (8, 3)]  # 0e, 0e, 1o inputs
    assert [tuple(b.shape) for b in wrapper.lora_B] == [(3, 5), (3, 6), (3, 2)]  # 0e, 1o, 0e outputs
    torch.manual_seed(0)
    with torch.no_grad():
        for factor in wrapper.lora_B:
            factor.normal_()
    down, up = o3.Linear(base.irreps_in, "3x0e+3x1o"), o3.Linear("3x0e+3x1o", base.irreps_out)
    with torch.no_grad():
        down.weight.copy_(torch.cat([wrapper.lora_A[ins.i_in].reshape(-1) for ins in down.instructions]))
        up.weight.copy_(torch.cat([wrapper.lora_B[ins.i_out].reshape(-1) for ins in up.instructions]))
    x = torch.randn(7, base.irreps_in.dim)
    expected = base(x) + (2.0 / 3) * up(down(x))
    assert torch.allclose(wrapper(x), expected, atol=1e-12, rtol=0)
    merged_output = wrapper.merged()(x)
    assert torch.allclose(merged_output, expected, atol=1e-12, rtol=0)
