"""``python -m mace.cli.preprocess_data`` and run_train on its output: upstream's flags, and
training on HDF5 data equal bitwise to training on the extxyz it came from. Files written
by upstream's own preprocess_data are tested when an upstream venv is at hand."""
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from mace.cli import preprocess_data
from mace.data import load_from_xyz
from mace.data.hdf5 import HDF5Configurations
from mace.data.statistics import read_statistics
from mace.modules import load_model
from mace.modules.predict import predict
from tests.cli.test_run_train import run_main
from tests.data.frames import KEYS, make_frames, write_xyz
from tests.shared import upstream_python_or_skip

KEY_FLAGS = ["--energy_key=REF_energy", "--forces_key=REF_forces", "--stress_key=REF_stress", "--virials_key=REF_virials"]
MODEL_FLAGS = [
    "--model=ScaleShiftMACE", "--num_channels=8", "--max_L=1", "--correlation=2", "--r_max=3.0", "--batch_size=4",
    "--valid_batch_size=3", "--eval_interval=1", "--device=cpu", "--default_dtype=float64", "--seed=3",
    "--error_table=TotalMAE",
]
NOT_RESULTS = ("time", "data_wait", "model")
# An upstream mace-torch 0.3.16 to write reference files with (never committed); tests that need it skip without it.


def test_flags_and_defaults_are_upstreams():
    args = preprocess_data.parse_args(["--train_file", "t.xyz"])
    assert (args.energy_key, args.forces_key, args.stress_key, args.virials_key) == ("REF_energy", "REF_forces", "REF_stress", "REF_virials")
    assert (args.h5_prefix, args.r_max, args.valid_fraction, args.seed, args.shuffle) == ("", 5.0, 0.1, 123, True)
    assert (args.compute_statistics, args.batch_size, args.scaling, args.E0s, args.work_dir) == (False, 16, "rms_forces_scaling", None, ".")
    assert args.num_process >= 1
    assert preprocess_data.parse_args(["--train_file", "t.xyz", "--shuffle", "False", "--compute_statistics"]).shuffle is False


@pytest.mark.parametrize(
    "extra, flag",
    [(["--dipole_key", "mu"], "--dipole_key"), (["--heads", "{}"], "--heads"), (["--num_process", "0"], "--num_process"),
     (["--E0s", "estimated"], "--E0s"), (["--valid_fraction", "1"], "--valid_fraction"), (["--r_max", "0.1"], "--r_max")],
)
def test_refusals_exit_2_naming_the_flag(capsys, extra, flag):
    with pytest.raises(SystemExit) as exit_:
        preprocess_data.parse_args(["--train_file", "t.xyz", *extra])
    assert exit_.value.code == 2 and flag in capsys.readouterr().err


def run_preprocess(cwd: Path, argv: List[str]) -> int:
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        preprocess_data.main(argv)
    except SystemExit as exit_:
        return exit_.code
    finally:
        os.chdir(previous)
    raise AssertionError("preprocess_data.main returned without calling sys.exit")


def test_main_writes_the_files_and_reports_bad_input_in_one_line(tmp_path, capsys):
    write_xyz(tmp_path / "train.xyz", make_frames(10))
    argv = ["--train_file=train.xyz", "--h5_prefix=processed/", "--num_process=2", "--r_max=3.0", "--E0s=average", "--compute_statistics"]
    assert run_preprocess(tmp_path, argv) == 0
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["statistics.json", "train", "val"]
    assert (len(HDF5Configurations(tmp_path / "processed/train")), len(HDF5Configurations(tmp_path / "processed/val"))) == (9, 1)
    assert run_preprocess(tmp_path, ["--train_file=missing.xyz"]) == 1
    assert "ERROR: Data file missing.xyz does not exist." in capsys.readouterr().err


def results(folder: Path, name: str) -> List[Dict]:
    """The run's results records, without what is not a result of the training: wall-clock
    times (of the epoch, of waiting for data) and the model's file name."""
    lines = (folder / "results" / f"{name}_run-3_train.txt").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in NOT_RESULTS} for line in lines]


def test_training_on_hdf5_equals_training_on_extxyz_bitwise(tmp_path):
    """The same split, E0s, statistics, batches and so losses, error tables and weights:
    extxyz (run_train splits it), HDF5 split by preprocess_data with its statistics file,
    and HDF5 of the whole file split by run_train."""
    write_xyz(tmp_path / "train.xyz", make_frames(12, seed=11))
    write_xyz(tmp_path / "test.xyz", make_frames(3, seed=12))
    write_xyz(tmp_path / "spare.xyz", make_frames(2, seed=13))
    common = ["--r_max=3.0", "--seed=3", "--shuffle=False", *KEY_FLAGS]
    assert run_preprocess(tmp_path, ["--train_file=train.xyz", "--valid_fraction=0.25", "--test_file=test.xyz",
                                     "--h5_prefix=split/", "--E0s=average", "--compute_statistics", "--num_process=2", *common]) == 0
    assert run_preprocess(tmp_path, ["--train_file=train.xyz", "--valid_file=spare.xyz", "--h5_prefix=whole/", *common]) == 0
    runs = {
        "xyz": ["--train_file=train.xyz", "--valid_fraction=0.25", "--test_file=test.xyz", "--E0s=average"],
        "h5": ["--train_file=split/train", "--valid_file=split/val", "--test_file=split/test",
               "--statistics_file=split/statistics.json"],
        "h5split": ["--train_file=whole/train", "--valid_fraction=0.25", "--test_file=test.xyz", "--E0s=average"],
    }
    for name, flags in runs.items():
        assert run_main(tmp_path, [f"--name={name}", "--max_num_epochs=2", *MODEL_FLAGS, *KEY_FLAGS, *flags]) == 0, name
    reference = results(tmp_path, "xyz")
    assert [r["set"] for r in reference if r["mode"] == "final"] == ["train", "valid", "test:molecule", "test:bulk"]
    assert results(tmp_path, "h5") == reference
    assert results(tmp_path, "h5split") == reference
    assert (tmp_path / "results/h5split_run-3_valid_indices.txt").read_text() == (tmp_path / "results/xyz_run-3_valid_indices.txt").read_text()
    models = {name: load_model(tmp_path / f"{name}.model") for name in runs}
    for name in ("h5", "h5split"):
        for (key, value), (_, other) in zip(models["xyz"].state_dict().items(), models[name].state_dict().items()):
            assert torch.equal(value, other), (name, key)
    _, test_configs = load_from_xyz(str(tmp_path / "test.xyz"), **KEYS)
    a, b = predict(models["xyz"], test_configs), predict(models["h5"], list(HDF5Configurations(tmp_path / "split/test")))
    assert [p.energy for p in a] == [p.energy for p in b]
    assert all(np.array_equal(p.forces, q.forces) for p, q in zip(a, b))


def test_statistics_file_with_another_r_max_is_refused(tmp_path, capsys):
    write_xyz(tmp_path / "train.xyz", make_frames(10))
    assert run_preprocess(tmp_path, ["--train_file=train.xyz", "--h5_prefix=p/", "--E0s=average", "--compute_statistics",
                                     "--r_max=2.5", "--num_process=1", *KEY_FLAGS]) == 0
    flags = ["--name=x", "--train_file=p/train", "--valid_file=p/val", "--statistics_file=p/statistics.json", "--max_num_epochs=1"]
    assert run_main(tmp_path, [*flags, *MODEL_FLAGS]) == 1
    assert "counted neighbours within r_max=2.5, but --r_max is 3.0" in capsys.readouterr().err


# Run by upstream's python: its HDF5Dataset gives the same graphs from our shards as from its own.
UPSTREAM_READS_BOTH = """
import torch
from mace.data import HDF5Dataset
from mace.tools.utils import AtomicNumberTable
table = AtomicNumberTable([1, 6, 8])
for name in ("train/train_0", "train/train_1", "val/val_0", "val/val_1"):
    theirs, ours = (HDF5Dataset(f"{folder}/{name}.h5", r_max=3.0, z_table=table) for folder in ("upstream", "ours"))
    assert len(theirs) == len(ours) > 0
    for index in range(len(theirs)):
        a, b = theirs[index], ours[index]
        for key in a.keys:
            assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], (name, key)
print("same")
"""


@pytest.fixture(scope="module")
def upstream_python() -> Path:
    return upstream_python_or_skip("files written by upstream's preprocess_data")


def test_files_written_by_upstreams_preprocess_data_read_and_train(tmp_path, upstream_python):
    """Upstream's files hold the configurations ours would, in the same order (its split and
    shuffle); its statistics file reads (E0s equal ours); run_train trains on them."""
    frames = make_frames(12, seed=21)
    frames[4].info["REF_energy"] = -100.0  # upstream's E0s are NaN when a frame lacks its energy
    write_xyz(tmp_path / "train.xyz", frames)
    flags = ["--train_file=train.xyz", "--valid_fraction=0.25", "--E0s=average", "--compute_statistics",
             "--num_process=2", "--r_max=3.0", "--seed=3"]
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    upstream = subprocess.run([str(upstream_python), "-m", "mace.cli.preprocess_data", *flags, "--h5_prefix=upstream/"],
                              cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert upstream.returncode == 0, upstream.stderr[-2000:]
    assert run_preprocess(tmp_path, [*flags, "--h5_prefix=ours/"]) == 0
    for folder in ("train", "val"):
        theirs, ours = HDF5Configurations(tmp_path / "upstream" / folder), HDF5Configurations(tmp_path / "ours" / folder)
        assert len(theirs) == len(ours)
        for a, b in zip(theirs, ours):
            assert a.energy == b.energy and np.array_equal(a.positions, b.positions) and np.array_equal(a.forces, b.forces)
            assert (a.stress is None) == (b.stress is None) and (a.stress is None or np.array_equal(a.stress, b.stress))
            assert (a.weight, a.energy_weight, a.forces_weight, a.config_type, a.pbc) == (b.weight, b.energy_weight, b.forces_weight, b.config_type, b.pbc)
    compare = subprocess.run([str(upstream_python), "-c", UPSTREAM_READS_BOTH], cwd=tmp_path, env=environment,
                             capture_output=True, text=True, timeout=600)
    assert compare.returncode == 0 and compare.stdout.split()[-1] == "same", compare.stderr[-2000:]
    statistics = read_statistics(tmp_path / "upstream/statistics.json")
    assert statistics.atomic_energies == read_statistics(tmp_path / "ours/statistics.json").atomic_energies
    train = ["--name=up", "--train_file=upstream/train", "--valid_file=upstream/val",
             "--statistics_file=upstream/statistics.json", "--max_num_epochs=1"]
    assert run_main(tmp_path, [*train, *MODEL_FLAGS]) == 0
    assert [r["mode"] for r in results(tmp_path, "up")].count("eval") == 1
