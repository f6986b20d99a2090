"""Loading a model or checkpoint never runs code from the file, at every entry point.

Each payload, loaded without restriction, creates a marker file; every entry point must
refuse it with one line (UserInputError, or 'ERROR:' and exit code 1) and no marker.
"""
import contextlib
from pathlib import Path
from typing import List

import ase
import ase.io
import numpy as np
import pytest
import torch

from mace.adapters.io import save_adapter
from mace.calculators import MACECalculator
from mace.cli import apply_adapter, eval_configs
from mace.data import config_from_atoms
from mace.modules.builder import GATES
from mace.modules.loading import load_model, save_model
from mace.training.checkpoint import CheckpointHandler
from mace.core.errors import UserInputError
from mace.core.files import record_or_check_sha256
from mace.modules.predict import predict
from tests.cli.test_run_train import TINY_FLAGS, run_main, write_frames
from tests.security.payloads import (
    CreatesMarker,
    DoubledKernel,
    GraphModuleCreatingMarker,
    NamesATorchFunction,
    model_with_payload,
    molecule,
    small_model,
)


@pytest.fixture(autouse=True)
def float64_without_jit_optimisation():
    """Deterministic, quick TorchScript runs (no re-specialisation per graph size)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with torch.jit.optimized_execution(False):
        yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def payload_model(tmp_path: Path, marker: Path) -> Path:
    return model_with_payload(tmp_path / "payload.model", marker)


def energy_and_forces(model) -> List[np.ndarray]:
    (prediction,) = predict(model, [molecule()])
    return [np.array(prediction.energy), prediction.forces]


def assert_one_line_refusal(message: str, path: Path) -> None:
    assert "\n" not in message.strip()
    assert str(path) in message and "io.open" in message and "--trust_pickle" in message


# --------------------------------------------------------------------------------------
# The payloads are real: an unrestricted load runs them
# --------------------------------------------------------------------------------------


def test_an_unrestricted_load_runs_the_payloads(tmp_path: Path, payload_model: Path, marker: Path) -> None:
    load_model(payload_model, trust_pickle=True)
    assert marker.exists()
    model, fx_marker = small_model(), tmp_path / "fx-ran"
    model.products[0].symmetric_contractions.contractions[0].graph_opt_main = GraphModuleCreatingMarker(fx_marker)
    save_model(model, tmp_path / "fx.model")
    with contextlib.suppress(UserInputError):
        load_model(tmp_path / "fx.model", trust_pickle=True)
    assert fx_marker.exists()


# --------------------------------------------------------------------------------------
# Every entry point refuses a payload
# --------------------------------------------------------------------------------------


def test_load_model_refuses_a_payload(payload_model: Path, marker: Path) -> None:
    with pytest.raises(UserInputError) as error:
        load_model(payload_model)
    assert_one_line_refusal(str(error.value), payload_model)
    assert not marker.exists()


def test_eval_configs_refuses_a_payload(tmp_path: Path, payload_model: Path, marker: Path, capsys) -> None:
    configs = tmp_path / "configs.xyz"
    ase.io.write(configs, ase.Atoms(numbers=molecule().atomic_numbers, positions=molecule().positions))
    with pytest.raises(SystemExit) as exit_info:
        eval_configs.main(
            ["--configs", str(configs), "--model", str(payload_model), "--output", str(tmp_path / "out.xyz")]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR:")
    assert_one_line_refusal(err, payload_model)
    assert not marker.exists() and not (tmp_path / "out.xyz").exists()


def test_apply_adapter_refuses_a_payload_foundation(tmp_path: Path, payload_model: Path, marker: Path, capsys) -> None:
    adapter = tmp_path / "adapter.pt"
    save_adapter(small_model(), adapter, "none", None, foundation_path=payload_model)
    with pytest.raises(SystemExit) as exit_info:
        apply_adapter.main([
            "--foundation_model", str(payload_model), "--adapter_file", str(adapter),
            "--output", str(tmp_path / "out.model"),
        ])
    assert exit_info.value.code == 1
    assert_one_line_refusal(capsys.readouterr().err, payload_model)
    assert not marker.exists()


def test_calculator_refuses_a_payload(payload_model: Path, marker: Path) -> None:
    with pytest.raises(UserInputError) as error:
        MACECalculator(model_paths=str(payload_model))
    assert_one_line_refusal(str(error.value), payload_model)
    assert not marker.exists()


def test_torch_functions_other_than_the_gates_are_refused(tmp_path: Path) -> None:
    model = small_model()
    model.note = NamesATorchFunction("from_file")  # torch.from_file can create files
    save_model(model, tmp_path / "from_file.model")
    with pytest.raises(UserInputError, match="from_file") as error:
        load_model(tmp_path / "from_file.model")
    assert "--trust_pickle" in str(error.value)


def test_checkpoint_with_a_payload_is_refused(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "run_epoch-99.pt"
    torch.save({"model": small_model().state_dict(), "epoch": 99, "note": CreatesMarker(marker)}, path)
    with pytest.raises(UserInputError, match="io.open") as error:
        CheckpointHandler.load(path, torch.device("cpu"))
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


@pytest.fixture
def training_folder(shared_dir: Path, tmp_path: Path) -> Path:
    frames = ase.io.read(shared_dir / "repro_data/dataset/dataset_rmd17/revised_aspirin/train.xyz", index=":6")
    write_frames(tmp_path / "tiny.xyz", frames)
    return tmp_path


def test_run_train_refuses_a_payload_foundation(
    training_folder: Path, payload_model: Path, marker: Path, capsys
) -> None:
    argv = TINY_FLAGS + ["--name=ft", "--train_file=tiny.xyz", "--max_num_epochs=1",
                         f"--foundation_model={payload_model}"]
    assert run_main(training_folder, argv) == 1
    assert_one_line_refusal(capsys.readouterr().err, payload_model)
    assert not marker.exists()


def test_restart_refuses_a_planted_checkpoint(training_folder: Path, marker: Path, capsys) -> None:
    planted = training_folder / "checkpoints" / "tiny_run-123_epoch-99.pt"
    planted.parent.mkdir()
    torch.save({"epoch": 99, "note": CreatesMarker(marker)}, planted)
    argv = TINY_FLAGS + ["--name=tiny", "--train_file=tiny.xyz", "--max_num_epochs=1", "--restart_latest"]
    assert run_main(training_folder, argv) == 1
    err = capsys.readouterr().err
    assert "checkpoints/tiny_run-123_epoch-99.pt" in err and "io.open" in err
    assert not marker.exists()


# --------------------------------------------------------------------------------------
# Code the safe loader never takes from a file: torch.fx source, e3nn's compiled kernels
# --------------------------------------------------------------------------------------


def test_torch_fx_source_is_never_executed(tmp_path: Path, marker: Path) -> None:
    model = small_model()
    contraction = model.products[0].symmetric_contractions.contractions[0]
    contraction.graph_opt_main = GraphModuleCreatingMarker(marker)  # where upstream keeps its fx graphs
    save_model(model, tmp_path / "fx.model")
    loaded = load_model(tmp_path / "fx.model")
    assert not marker.exists()
    assert not hasattr(loaded.products[0].symmetric_contractions.contractions[0], "graph_opt_main")
    for ours, genuine in zip(energy_and_forces(loaded), energy_and_forces(model)):
        np.testing.assert_array_equal(ours, genuine)


def test_compiled_e3nn_kernels_are_regenerated_not_loaded(tmp_path: Path) -> None:
    model = small_model()
    genuine = energy_and_forces(model)
    linear = model.node_embedding.linear
    linear._compiled_main = torch.jit.script(DoubledKernel(linear._compiled_main))
    save_model(model, tmp_path / "doubled.model")
    assert energy_and_forces(load_model(tmp_path / "doubled.model", trust_pickle=True))[0] != genuine[0]
    for ours, expected in zip(energy_and_forces(load_model(tmp_path / "doubled.model")), genuine):
        np.testing.assert_array_equal(ours, expected)


def test_kernel_constants_of_a_float32_model_come_from_the_file(tmp_path: Path) -> None:
    """Wigner 3j blocks built in float32 differ from float64 ones; predictions must not."""
    torch.set_default_dtype(torch.float32)
    save_model(small_model().float(), tmp_path / "float32.model")
    torch.set_default_dtype(torch.float64)
    trusted = load_model(tmp_path / "float32.model", dtype=torch.float64, trust_pickle=True)
    safe = load_model(tmp_path / "float32.model", dtype=torch.float64)
    for ours, expected in zip(energy_and_forces(safe), energy_and_forces(trusted)):
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("write", [
    lambda path: torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path)),
    lambda path: torch.save(small_model(), path, _use_new_zipfile_serialization=False),
], ids=["torchscript", "legacy"])
def test_files_torch_would_hand_to_other_readers_are_refused(tmp_path: Path, write) -> None:
    write(tmp_path / "other.model")
    with pytest.raises(UserInputError, match="other.model"):
        load_model(tmp_path / "other.model")


@pytest.mark.parametrize("gate", sorted(GATES))
def test_models_with_every_gate_load_safely(tmp_path: Path, gate: str) -> None:
    model = small_model(gate=GATES[gate])
    save_model(model, tmp_path / f"{gate}.model")
    for ours, expected in zip(energy_and_forces(load_model(tmp_path / f"{gate}.model")), energy_and_forces(model)):
        np.testing.assert_array_equal(ours, expected)


def test_trust_pickle_still_loads_a_genuine_model(tmp_path: Path) -> None:
    model = small_model()
    save_model(model, tmp_path / "genuine.model")
    for loaded in (load_model(tmp_path / "genuine.model", trust_pickle=True), load_model(tmp_path / "genuine.model")):
        for ours, expected in zip(energy_and_forces(loaded), energy_and_forces(model)):
            np.testing.assert_array_equal(ours, expected)


# --------------------------------------------------------------------------------------
# Shared and upstream-written files load safely and predict exactly as before
# --------------------------------------------------------------------------------------


def shared_model_files(shared: Path) -> List[Path]:
    return [
        *sorted(shared.glob("conformance*/models/*.model")),
        *sorted((shared / "repro_data" / "foundation_model").glob("*.model")),
    ]


def test_every_shared_model_file_loads_safely_and_predicts_as_before(shared_dir: Path) -> None:
    """An upstream file our classes cannot express yet must be refused the same way by both."""
    frames = ase.io.read(shared_dir / "conformance/predictions/small_v0316__aspirin20.xyz", index=":2")
    configs = [config_from_atoms(atoms) for atoms in frames]
    files = shared_model_files(shared_dir)
    assert len(files) >= 3
    for path in files:
        try:
            trusted = load_model(path, dtype=torch.float64, trust_pickle=True)
        except UserInputError:
            with pytest.raises(UserInputError, match="does not have"):
                load_model(path, dtype=torch.float64)
            continue
        safe = load_model(path, dtype=torch.float64)
        assert safe.state_dict().keys() == trusted.state_dict().keys(), path
        assert all(torch.equal(a, b) for a, b in zip(safe.state_dict().values(), trusted.state_dict().values())), path
        for ours, expected in zip(predict(safe, configs), predict(trusted, configs)):
            assert ours.energy == expected.energy, path
            np.testing.assert_array_equal(ours.forces, expected.forces, err_msg=str(path))


# --------------------------------------------------------------------------------------
# Checkpoints are plain data; downloaded files are pinned to their hash
# --------------------------------------------------------------------------------------


def test_a_training_checkpoint_loads_as_plain_data(tmp_path: Path) -> None:
    from torch_ema import ExponentialMovingAverage

    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=5)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.99)
    handler = CheckpointHandler(str(tmp_path), "run")
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
        "ema": ema.state_dict(), "epoch": 3, "best": {"main": (1.5, 2)}, "patience_counter": 0,
        "last_valid_loss": 1.5, "swa_start_epoch": None,
    }
    loaded = CheckpointHandler.load(handler.save(state, epoch=3, swa=False), torch.device("cpu"))
    assert loaded["best"] == {"main": (1.5, 2)} and loaded["ema"]["decay"] == 0.99
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())


def test_damaged_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "run_epoch-1.pt"
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(UserInputError, match="run_epoch-1.pt"):
        CheckpointHandler.load(path, torch.device("cpu"))


def test_a_downloaded_file_is_pinned_to_its_hash(tmp_path: Path) -> None:
    downloaded = tmp_path / "foundation.model"
    downloaded.write_bytes(b"first download")
    digest = record_or_check_sha256(downloaded)
    assert (tmp_path / "foundation.model.sha256").read_text().strip() == digest
    assert record_or_check_sha256(downloaded) == digest
    downloaded.write_bytes(b"replaced by someone else")
    with pytest.raises(UserInputError, match="foundation.model"):
        record_or_check_sha256(downloaded)
