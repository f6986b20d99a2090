"""Adapter files: only trained tensors are written, and they rebuild the fine-tuned model exactly."""
import shutil

import pytest
import torch

from mace.adapters import ELoRAConfig, LoRAConfig, MMEAConfig, count_trainable, inject_adapters
from mace.adapters.elora import LowRankUpdate
from mace.adapters.io import _settings, load_adapted_model, save_adapter
from mace.cli import apply_adapter
from mace.modules.loading import load_model
from mace.core.errors import UserInputError
from mace.adapters.foundation import set_e0s

from .conftest import energies_forces, make_batch, max_difference, model_path, perturb_trainable


def _fine_tuned(model, method, settings):
    """Adapter with moved parameters, new E0s and a new scale, as after a training run."""
    inject_adapters(model, method, settings)
    perturb_trainable(model)
    set_e0s(model, {1: -13.6, 6: -1029.8, 8: -2041.5})
    model.scale_shift.scale.mul_(1.5)
    return model


@pytest.mark.parametrize(
    "method, settings",
    [("mmea", MMEAConfig(rank=4, phi="exp")), ("mmea", MMEAConfig(rank=4, skip_tp="frozen")),
     ("elora", ELoRAConfig(rank=4)), ("lora", LoRAConfig(rank=2, alpha=3.0)), ("none", None)],
)
def test_round_trip_predicts_identically(small_hco, acac_frames, tmp_path, method, settings):
    model = _fine_tuned(small_hco, method, settings)
    path = tmp_path / "run_adapter.pt"
    save_adapter(model, path, method, settings, model_path("small_v0316"))
    payload = torch.load(path, weights_only=True)
    assert sum(t.numel() for t in payload["parameters"].values()) == count_trainable(model)
    assert payload["atomic_numbers"] == [1, 6, 8]
    rebuilt = load_adapted_model(model_path("small_v0316"), path)
    batch = make_batch(model, acac_frames)
    assert max_difference(energies_forces(model, batch), energies_forces(rebuilt, batch)) < 1e-10


def test_wrong_foundation_is_refused(small_hco, tmp_path):
    model = _fine_tuned(small_hco, "mmea", MMEAConfig(rank=4))
    path = tmp_path / "run_adapter.pt"
    save_adapter(model, path, "mmea", MMEAConfig(rank=4), model_path("small_v0316"))
    other = tmp_path / "other.model"
    shutil.copyfile(model_path("small_v0316"), other)
    with open(other, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserInputError, match="SHA-256"):
        load_adapted_model(other, path)


@pytest.mark.parametrize(
    "method, settings, merge",
    [("elora", ELoRAConfig(rank=4), True), ("mmea", MMEAConfig(rank=4), False),
     ("lora", LoRAConfig(), True), ("lora", LoRAConfig(), False)],
)
def test_apply_adapter_cli_writes_the_fine_tuned_model(
    small_hco, acac_frames, tmp_path, method, settings, merge
):
    model = _fine_tuned(small_hco, method, settings)
    adapter = tmp_path / "run_adapter.pt"
    save_adapter(model, adapter, method, settings, model_path("small_v0316"))
    output = tmp_path / "fine_tuned.model"
    argv = ["--foundation_model", str(model_path("small_v0316")), "--adapter_file", str(adapter),
            "--output", str(output)] + (["--merge"] if merge else [])
    with pytest.raises(SystemExit) as exit_info:
        apply_adapter.main(argv)
    assert exit_info.value.code == 0
    written = load_model(output)
    assert any(isinstance(m, LowRankUpdate) for m in written.modules()) != merge
    batch = make_batch(model, acac_frames)
    assert max_difference(energies_forces(model, batch), energies_forces(written, batch)) < 1e-10


def test_adapter_file_settings_older_than_a_field_mean_what_was_trained():
    """Adapter files written before ``input_norm`` (``skip_tp``) existed rebuild the gates on
    raw invariants (the skip_tp updates) they trained."""
    older = {"rank": 4, "std": 0.001, "init": None, "phi": "res", "lora_rank": 16, "lora_alpha": 16.0}
    assert _settings("mmea", older).input_norm == "none"
    assert _settings("mmea", older).skip_tp == "low_rank"
    newer = _settings("mmea", {**older, "input_norm": "layer", "skip_tp": "frozen"})
    assert (newer.input_norm, newer.skip_tp) == ("layer", "frozen")
    assert _settings("elora", {"rank": 4, "alpha": 8.0}) == ELoRAConfig(rank=4, alpha=8.0)
