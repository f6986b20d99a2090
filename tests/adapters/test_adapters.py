"""Adapted models: start as the foundation, stay exactly equivariant, train only adapters, merge."""
import numpy as np
import pytest
import torch
from e3nn import o3

from mace.adapters import ELoRAConfig, MMEAConfig, inject_adapters, merge_elora
from mace.adapters.elora import LowRankUpdate
from mace.adapters.mmea import MMEALinear

from .conftest import energies_forces, make_batch, max_difference, perturb_trainable

ADAPTERS = [
    ("mmea", MMEAConfig(rank=4, init="zero")),
    ("mmea", MMEAConfig(rank=4, std=0.01, phi="res")),
    ("elora", ELoRAConfig(rank=4, alpha=8.0)),
]


def _orthogonal(seed: int, reflect: bool) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))
    return -q if reflect else q


@pytest.mark.parametrize("method, settings", [ADAPTERS[0], ("elora", ELoRAConfig())])
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


@pytest.mark.parametrize("method, settings", [ADAPTERS[1], ADAPTERS[2]])
def test_merge_folds_low_rank_updates(small_hco, small_hco_template, acac_frames, method, settings):
    batch = make_batch(small_hco, acac_frames)
    model = inject_adapters(small_hco, method, settings)
    perturb_trainable(model)
    before = energies_forces(model, batch)
    merged = merge_elora(model)
    assert max_difference(before, energies_forces(merged, batch)) < 1e-10
    assert not any(isinstance(m, LowRankUpdate) for m in merged.modules())
    if method == "elora":
        assert merged.state_dict().keys() == small_hco_template.state_dict().keys()
        assert sum(p.numel() for p in merged.parameters()) == sum(
            p.numel() for p in small_hco_template.parameters()
        ) + small_hco_template.radial_embedding.bessel_fn.bessel_weights.numel()
