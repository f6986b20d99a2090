"""eval_configs writes upstream's keys with our predictions, and fails cleanly on bad input."""
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from mace.cli import eval_configs
from mace.modules.heads import select_head
from mace.modules.predict import predict
from tests.modules.helpers import multihead_model, random_molecule


def conformance_pair(shared: Path):
    predictions = sorted((shared / "conformance" / "predictions").glob("small_v0316__*.xyz"))[0]
    return shared / "conformance" / "models" / "small_v0316.model", predictions


def test_writes_energies_and_forces_matching_upstream(shared_dir: Path, tmp_path: Path) -> None:
    model, configs = conformance_pair(shared_dir)
    output = tmp_path / "out.xyz"
    with pytest.raises(SystemExit) as exit_info:
        eval_configs.main(["--configs", str(configs), "--model", str(model), "--output", str(output),
                           "--info_prefix", "OURS_", "--batch_size", "3"])
    assert exit_info.value.code == 0
    written = ase.io.read(output, index=":")
    reference = ase.io.read(configs, index=":")
    assert len(written) == len(reference)
    for ours, theirs in zip(written, reference):
        assert abs(ours.info["OURS_energy"] - theirs.info["MACE_energy"]) < 1e-6
        np.testing.assert_allclose(ours.arrays["OURS_forces"], theirs.arrays["MACE_forces"], atol=1e-6)


def test_missing_configs_file_is_one_clear_error(shared_dir: Path, tmp_path: Path, capsys) -> None:
    model, _ = conformance_pair(shared_dir)
    output = tmp_path / "out.xyz"
    with pytest.raises(SystemExit) as exit_info:
        eval_configs.main(["--configs", str(tmp_path / "absent.xyz"), "--model", str(model), "--output", str(output)])
    assert exit_info.value.code == 1
    assert "absent.xyz" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("batch_size", ["0", "-5"])
def test_batch_size_must_be_positive(tmp_path: Path, capsys, batch_size: str) -> None:
    output = tmp_path / "out.xyz"
    with pytest.raises(SystemExit) as exit_info:
        eval_configs.main(["--configs", "any.xyz", "--model", "any.model", "--output", str(output),
                           "--batch_size", batch_size])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"ERROR: --batch_size must be a positive integer, got {batch_size}\n"
    assert not output.exists()


def test_a_non_finite_prediction_is_an_error_naming_the_configuration(shared_dir: Path, tmp_path: Path, capsys) -> None:
    model, configs = conformance_pair(shared_dir)
    frames = ase.io.read(configs, index=":3")
    frames[2].positions[1] = frames[2].positions[0]  # two atoms on one spot: a zero-length edge
    ase.io.write(tmp_path / "in.xyz", frames, format="extxyz")
    output = tmp_path / "out.xyz"
    with pytest.raises(SystemExit) as exit_info:
        eval_configs.main(["--configs", str(tmp_path / "in.xyz"), "--model", str(model), "--output", str(output)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: The model predicts a non-finite energy or forces") and "configuration 2" in err
    assert err.count("\n") == 1 and not output.exists()


@pytest.mark.usefixtures("float64_default")
def test_head_chooses_the_head_of_a_multihead_model(tmp_path: Path, capsys) -> None:
    model = multihead_model()
    torch.save(model, tmp_path / "multihead.model")
    rng = np.random.default_rng(2)
    molecules = [random_molecule(rng) for _ in range(3)]
    frames = [ase.Atoms(numbers=m.atomic_numbers, positions=m.positions) for m in molecules]
    ase.io.write(tmp_path / "in.xyz", frames)
    argv = ["--configs", str(tmp_path / "in.xyz"), "--model", str(tmp_path / "multihead.model"),
            "--output", str(tmp_path / "out.xyz")]
    with pytest.raises(SystemExit) as exit_info:
        eval_configs.main([*argv, "--head", "mine"])
    assert exit_info.value.code == 0
    written = ase.io.read(tmp_path / "out.xyz", index=":")
    for atoms, expected in zip(written, predict(select_head(model, 2), molecules)):
        assert atoms.info["MACE_energy"] == pytest.approx(expected.energy, abs=1e-8)
        np.testing.assert_allclose(atoms.arrays["MACE_forces"], expected.forces, atol=1e-8)
    with pytest.raises(SystemExit) as exit_info:
        eval_configs.main([*argv, "--head", "nope"])
    assert exit_info.value.code == 1
    assert "head 'nope' is not in the model" in capsys.readouterr().err
