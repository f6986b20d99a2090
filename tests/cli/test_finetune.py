"""Fine-tuning from the command line: each adapter method's outputs, frozen weights, adapter files."""
import json
from pathlib import Path
from typing import List

import ase.io
import numpy as np
import pytest
import torch

from mace.adapters.io import load_adapted_model
from mace.cli import apply_adapter, run_train
from mace.data import config_from_atoms
from mace.modules import load_model
from mace.core.errors import UserInputError
from mace.adapters.prepare import PUBLISHED_MODELS, resolve_foundation_path
from mace.adapters.foundation import restrict_to_elements
from mace.modules.models import model_heads
from mace.modules.predict import predict
from tests.modules.helpers import multihead_model

FOUNDATION = "conformance/models/small_v0316.model"
ASPIRIN = "repro_data/dataset/dataset_rmd17/revised_aspirin/train.xyz"


@pytest.fixture
def workdir(shared_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    frames = ase.io.read(shared_dir / ASPIRIN, index=":8")
    ase.io.write(tmp_path / "train.xyz", frames[:6])
    ase.io.write(tmp_path / "test.xyz", frames[6:])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def finetune(shared: Path, name: str, extra: List[str]) -> int:
    argv = [
        f"--name={name}", "--train_file=train.xyz", "--valid_fraction=0.5", "--test_file=test.xyz",
        "--E0s=average", "--energy_key=REF_energy", "--forces_key=REF_forces", "--batch_size=3",
        "--valid_batch_size=3", "--max_num_epochs=2", "--eval_interval=1", "--lr=0.01",
        "--default_dtype=float64", f"--foundation_model={shared / FOUNDATION}", *extra,
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_train.main(argv)
    return exit_info.value.code


def energies_and_forces(model, frames):
    predictions = predict(model, [config_from_atoms(atoms) for atoms in frames])
    return np.array([p.energy for p in predictions]), np.concatenate([p.forces for p in predictions])


@pytest.mark.parametrize("method", ["mmea", "elora", "lora", "none"])
def test_each_method_writes_its_outputs_and_rebuilds(shared_dir: Path, workdir: Path, method: str, capsys) -> None:
    assert finetune(shared_dir, method, [f"--adapter={method}", "--num_channels=128"]) == 0
    stdout = capsys.readouterr().out
    assert ("MMEA_RANK:  16" in stdout) == (method == "mmea")
    assert ("Injecting LoRA layers with rank=4 and alpha=1.0" in stdout) == (method == "lora")
    log = (workdir / "logs" / f"{method}_run-123.log").read_text()
    assert f"Fine-tuning with adapter '{method}'" in log and "trainable of" in log
    assert "--num_channels=128 differs from the foundation model (16)" in log

    model = load_model(workdir / f"{method}.model", dtype=torch.float64)
    frames = ase.io.read(workdir / "test.xyz", index=":")
    reference = energies_and_forces(model, frames)
    rebuilt = load_adapted_model(shared_dir / FOUNDATION, workdir / f"{method}_adapter.pt")
    for ours, theirs in zip(reference, energies_and_forces(rebuilt, frames)):
        np.testing.assert_allclose(ours, theirs, atol=1e-10, rtol=0)
    compiled = torch.jit.load(str(workdir / f"{method}_compiled.model"))  # TorchScript, adapters included
    for ours, theirs in zip(reference, energies_and_forces(compiled, frames)):
        np.testing.assert_allclose(ours, theirs, atol=1e-10, rtol=0)
    assert (workdir / f"{method}_merged.model").exists() == (method in ("elora", "lora"))
    if method in ("elora", "lora"):
        merged = load_model(workdir / f"{method}_merged.model", dtype=torch.float64)
        for ours, theirs in zip(reference, energies_and_forces(merged, frames)):
            np.testing.assert_allclose(ours, theirs, atol=1e-8, rtol=0)

    with pytest.raises(SystemExit) as exit_info:
        apply_adapter.main(["--foundation_model", str(shared_dir / FOUNDATION), "--adapter_file",
                            f"{method}_adapter.pt", "--output", "applied.model"])
    assert exit_info.value.code == 0
    applied = load_model(workdir / "applied.model", dtype=torch.float64)
    np.testing.assert_allclose(reference[1], energies_and_forces(applied, frames)[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("foundation", ["mpres_v0316", "densityzbl_v0316"])
@pytest.mark.parametrize("method", ["mmea", "elora", "lora", "none"])
def test_every_method_fine_tunes_the_newest_foundation_architectures(
    shared_dir: Path, workdir: Path, foundation: str, method: str
) -> None:
    path = shared_dir / "conformance-foundations" / "models" / f"{foundation}.model"
    assert finetune(shared_dir, method, [f"--foundation_model={path}", f"--adapter={method}", "--max_num_epochs=1"]) == 0
    log = (workdir / "logs" / f"{method}_run-123.log").read_text()
    assert f"Fine-tuning with adapter '{method}'" in log and "trainable of" in log
    model = load_model(workdir / f"{method}.model", dtype=torch.float64)
    frames = ase.io.read(workdir / "test.xyz", index=":")
    rebuilt = load_adapted_model(path, workdir / f"{method}_adapter.pt")
    for ours, theirs in zip(energies_and_forces(model, frames), energies_and_forces(rebuilt, frames)):
        np.testing.assert_allclose(ours, theirs, atol=1e-10, rtol=0)


def test_mmea_keeps_foundation_weights_bitwise(shared_dir: Path, workdir: Path) -> None:
    assert finetune(shared_dir, "frozen", []) == 0
    finetuned = load_model(workdir / "frozen.model", dtype=torch.float64).state_dict()
    foundation = restrict_to_elements(load_model(shared_dir / FOUNDATION, dtype=torch.float64), [1, 6, 8])
    compared = skip_tps = 0
    for name, value in foundation.state_dict().items():
        if name.endswith("weights_max") or ".weights." in name or "conv_tp_weights" in name:
            continue
        wrapped = name.replace("linear.weight", "linear.base.weight").replace("linear_up.weight", "linear_up.base.weight")
        wrapped = wrapped.replace("skip_tp.weight", "skip_tp.base.weight")
        wrapped = wrapped.replace("linear_1.weight", "linear_1.base.weight").replace("linear_2.weight", "linear_2.base.weight")
        if name.endswith(".weight") and wrapped in finetuned:
            assert torch.equal(finetuned[wrapped], value), name
            compared += 1
            skip_tps += "skip_tp" in name
    assert compared >= 8
    assert skip_tps == 2  # the bases under their low-rank updates


@pytest.mark.usefixtures("float64_default")
def test_a_multihead_foundation_is_fine_tuned_from_the_chosen_head(shared_dir: Path, workdir: Path, capsys) -> None:
    torch.save(multihead_model(), workdir / "multihead.model")
    assert finetune(shared_dir, "heads", ["--foundation_model=multihead.model", "--foundation_head=mine"]) == 0
    log = (workdir / "logs" / "heads_run-123.log").read_text()
    assert "Selecting the head 'mine' of ['pt_head', 'Default', 'mine'] as the foundation head" in log
    model = load_model(workdir / "heads.model", dtype=torch.float64)
    assert model_heads(model) == ["mine"]
    frames = ase.io.read(workdir / "test.xyz", index=":")
    rebuilt = load_adapted_model("multihead.model", "heads_adapter.pt")
    for ours, theirs in zip(energies_and_forces(model, frames), energies_and_forces(rebuilt, frames)):
        np.testing.assert_allclose(ours, theirs, atol=1e-10, rtol=0)
    assert float(model.scale_shift.scale) == 1.1 and float(model.scale_shift.shift) == 0.05  # the head's own

    assert finetune(shared_dir, "nohead", ["--foundation_model=multihead.model", "--foundation_head=nope"]) == 1
    assert "head 'nope' is not in the model; its heads are ['pt_head', 'Default', 'mine']" in capsys.readouterr().err
    assert not (workdir / "nohead.model").exists()


def test_the_kept_foundation_head_predicts_exactly_the_foundation(shared_dir: Path, workdir: Path) -> None:
    assert finetune(shared_dir, "kept", ["--keep_foundation_head=True"]) == 0
    frames = ase.io.read(workdir / "test.xyz", index=":")
    configs = [config_from_atoms(atoms) for atoms in frames]
    two_heads = load_model(workdir / "kept.model", dtype=torch.float64)
    assert model_heads(two_heads) == ["foundation", "Default"]
    foundation = load_model(shared_dir / FOUNDATION, dtype=torch.float64)  # the file itself, all its elements
    fine_tuned = load_adapted_model(shared_dir / FOUNDATION, workdir / "kept_adapter.pt")
    compiled = torch.jit.load(str(workdir / "kept_compiled.model"))
    for head, reference in (("foundation", foundation), ("Default", fine_tuned), (None, fine_tuned)):
        expected = predict(reference, configs)
        for model in (two_heads, compiled):
            predicted = predict(model, configs, head=head)
            for ours, theirs in zip(predicted, expected):
                assert abs(ours.energy - theirs.energy) < 1e-12 * abs(theirs.energy)
                np.testing.assert_allclose(ours.forces, theirs.forces, atol=1e-12, rtol=0)
    assert abs(predict(foundation, configs)[0].energy - predict(fine_tuned, configs)[0].energy) > 1e-3


def test_elements_missing_from_foundation_are_listed(shared_dir: Path, workdir: Path, capsys) -> None:
    frames = ase.io.read(workdir / "train.xyz", index=":")
    frames[0].numbers[0] = 16
    ase.io.write(workdir / "train.xyz", frames)
    assert finetune(shared_dir, "sulfur", []) == 1
    assert "S" in capsys.readouterr().err.split("training data also has:")[-1]
    assert not (workdir / "sulfur.model").exists()


def test_published_name_offline_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MACE_CACHE", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(UserInputError, match="could not download"):
        resolve_foundation_path("medium_off")
    with pytest.raises(UserInputError, match="no such file"):
        resolve_foundation_path(str(tmp_path / "absent.model"))


class _FakeResponse:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data

    def __enter__(self) -> "_FakeResponse":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_published_model_goes_to_the_downloads_folder_when_one_is_given(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *args, **kwargs: _FakeResponse(b"model bytes"))
    path = resolve_foundation_path("small_off", tmp_path / "downloads")
    assert path.parent == tmp_path / "downloads" and path.read_bytes() == b"model bytes"
    assert not (tmp_path / "cache").exists()
    assert resolve_foundation_path("small_off").parent == tmp_path / "cache"


# Upstream 0.3.16's --foundation_model names (mace_mp_urls, the three MACE-OFF23 sizes,
# mace_omol, MACE-Polar).
UPSTREAM_0316_NAMES = (
    "small", "medium", "large", "small-0b", "medium-0b", "small-0b2", "medium-0b2", "large-0b2",
    "medium-0b3", "medium-mpa-0", "small-omat-0", "medium-omat-0", "mace-matpes-pbe-0",
    "mace-matpes-r2scan-0", "mh-0", "mh-1", "small_off", "medium_off", "large_off", "mace_omol",
    "polar-1-s", "polar-1-m", "polar-1-l",
)


def test_every_upstream_published_name_resolves_to_its_download(monkeypatch, tmp_path: Path) -> None:
    assert set(PUBLISHED_MODELS) == set(UPSTREAM_0316_NAMES)
    requested: List[str] = []

    def fake_urlopen(url, *args, **kwargs):
        requested.append(url)
        return _FakeResponse(f"bytes of {url}".encode())

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    files = set()
    for name in UPSTREAM_0316_NAMES:
        url = PUBLISHED_MODELS[name]
        assert url.startswith("https://") and url.endswith(".model"), name
        path = resolve_foundation_path(name, tmp_path)
        assert requested[-1] == url and path == tmp_path / url.rsplit("/", 1)[-1]
        assert path.read_bytes() == f"bytes of {url}".encode()
        assert (tmp_path / f"{path.name}.sha256").is_file()
        files.add(path)
    assert len(files) == len(UPSTREAM_0316_NAMES)  # no two names share a cached file
    assert resolve_foundation_path("medium-mpa-0", tmp_path) == tmp_path / "mace-mpa-0-medium.model"
    assert len(requested) == len(UPSTREAM_0316_NAMES)  # cached: not downloaded again


def test_an_unknown_name_lists_the_published_ones(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("urllib.request.urlopen", lambda *args, **kwargs: pytest.fail("no download expected"))
    with pytest.raises(UserInputError, match="no such file") as error:
        resolve_foundation_path("medium-mpa-9", tmp_path)
    assert "medium-mpa-0" in str(error.value) and "mh-1" in str(error.value) and "small_off" in str(error.value)


def test_estimated_e0s_remove_the_foundations_mean_energy_error(shared_dir: Path, workdir: Path) -> None:
    from mace.data import load_from_xyz
    from mace.core.atomic_numbers import AtomicNumberTable
    from mace.adapters.prepare import set_finetuning_e0s

    torch.set_default_dtype(torch.float64)
    _, configs = load_from_xyz("train.xyz", energy_key="REF_energy", forces_key="REF_forces")
    model = restrict_to_elements(load_model(shared_dir / FOUNDATION, dtype=torch.float64), [1, 6, 8])
    before = np.array([p.energy for p in predict(model, configs)]) - [c.energy for c in configs]
    set_finetuning_e0s(model, "estimated", configs, {}, AtomicNumberTable([1, 6, 8]))
    after = np.array([p.energy for p in predict(model, configs)]) - [c.energy for c in configs]
    assert abs(before.mean()) > 1.0
    assert abs(after.mean()) < 1e-6
    np.testing.assert_allclose(after - after.mean(), before - before.mean(), atol=1e-8)


ETHANOL = "repro_data/dataset/dataset_rmd17/revised_ethanol/train.xyz"


def test_replay_fine_tuning_trains_a_pretraining_head_beside_the_new_one(shared_dir: Path, workdir: Path) -> None:
    """--multiheads_finetuning as upstream: head 'pt_head' on --pt_train_file, head 'Default' on
    the data, the universal loss, lr 1e-4 and a slow EMA; the adapter file rebuilds both heads."""
    ase.io.write(workdir / "pt.xyz", ase.io.read(shared_dir / ETHANOL, index=":6"))
    replay = ["--multiheads_finetuning=True", "--pt_train_file=pt.xyz", "--E0s=estimated", "--skip_evaluate_heads="]
    assert finetune(shared_dir, "replay", replay) == 0
    log = (workdir / "logs" / "replay_run-123.log").read_text()
    assert "Multi-head replay fine-tuning: heads 'pt_head' (--pt_train_file) and 'Default'; --loss universal" in log
    assert "--lr 0.0001 --ema --ema_decay 0.99999" in log
    assert "Epoch 1: head pt_head: loss=" in log and "Epoch 1: head Default: loss=" in log
    records = [json.loads(line) for line in (workdir / "results" / "replay_run-123_train.txt").read_text().splitlines()]
    assert {r["head"] for r in records if r["mode"] == "eval"} == {"pt_head", "Default"}
    assert {"pt_head:train", "pt_head:valid", "train", "valid", "test"} <= {r["set"] for r in records if r["mode"] == "final"}

    model = load_model(workdir / "replay.model", dtype=torch.float64)
    assert model_heads(model) == ["pt_head", "Default"]
    foundation = restrict_to_elements(load_model(shared_dir / FOUNDATION, dtype=torch.float64), [1, 6, 8])
    energies = model.atomic_energies_fn.atomic_energies
    torch.testing.assert_close(energies[0], torch.atleast_2d(foundation.atomic_energies_fn.atomic_energies)[0], rtol=0, atol=0)
    assert (energies[1] - energies[0]).abs().max() > 1e-3  # the fine-tuned head's estimated E0s

    frames = ase.io.read(workdir / "test.xyz", index=":")
    configs = [config_from_atoms(atoms) for atoms in frames]
    rebuilt = load_adapted_model(shared_dir / FOUNDATION, workdir / "replay_adapter.pt")
    compiled = torch.jit.load(str(workdir / "replay_compiled.model"))
    for head in ("pt_head", "Default"):
        expected = predict(model, configs, head=head)
        for other in (rebuilt, compiled):
            for ours, theirs in zip(predict(other, configs, head=head), expected):
                assert abs(ours.energy - theirs.energy) < 1e-10
                np.testing.assert_allclose(ours.forces, theirs.forces, atol=1e-10, rtol=0)
    assert abs(predict(model, configs, head="pt_head")[0].energy - predict(model, configs)[0].energy) > 1e-3


def test_replay_without_pretraining_data_fine_tunes_one_head(shared_dir: Path, workdir: Path) -> None:
    assert finetune(shared_dir, "noreplay", ["--multiheads_finetuning=True"]) == 0
    log = (workdir / "logs" / "noreplay_run-123.log").read_text()
    assert "--multiheads_finetuning needs --pt_train_file: training without replayed pretraining data" in log
    assert model_heads(load_model(workdir / "noreplay.model", dtype=torch.float64)) == ["Default"]


def test_foundation_model_elements_keeps_every_element_of_the_foundation(shared_dir: Path, workdir: Path) -> None:
    assert finetune(shared_dir, "allz", ["--foundation_model_elements=True", "--max_num_epochs=1"]) == 0
    foundation = load_model(shared_dir / FOUNDATION, dtype=torch.float64)
    model = load_model(workdir / "allz.model", dtype=torch.float64)
    assert model.atomic_numbers.tolist() == foundation.atomic_numbers.tolist()
    assert len(foundation.atomic_numbers) > 3  # more than the data's H, C, O
    energies = torch.atleast_2d(model.atomic_energies_fn.atomic_energies)[0]
    foundation_energies = torch.atleast_2d(foundation.atomic_energies_fn.atomic_energies)[0]
    for index, z in enumerate(foundation.atomic_numbers.tolist()):
        assert (energies[index] == foundation_energies[index]) == (z not in (1, 6, 8))  # no data: the foundation's E0
    frames = ase.io.read(workdir / "test.xyz", index=":")
    rebuilt = load_adapted_model(shared_dir / FOUNDATION, workdir / "allz_adapter.pt")
    for ours, theirs in zip(energies_and_forces(model, frames), energies_and_forces(rebuilt, frames)):
        np.testing.assert_allclose(ours, theirs, atol=1e-10, rtol=0)
