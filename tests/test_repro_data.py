"""Tests of the data/model fetcher and the pretraining-set builder in repro_data/.

No test touches the network: every download goes through an injected downloader (or is
forbidden with MMEA_FETCH_OFFLINE=1), and the mirrors are tiny fakes under tmp_path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, relpath: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fetch = _load("mmea_repro_fetch", "repro_data/fetch.py")
pretrain_sets = _load("mmea_make_pretrain_sets", "repro_data/pretrain/make_pretrain_sets.py")

MODEL_REL = "foundation_model/MACE-rMD17x9_c64.model"


def no_network(url, path):
    raise OSError(f"network disabled in tests ({url})")


def _frame(tag: str, energy: float = -1.0) -> str:
    return (f"1\nProperties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy={energy} "
            f"tag={tag} pbc=\"F F F\"\nH 0.0 0.0 0.0 0.1 0.2 0.3\n")


def _partials(root: Path):
    return [p for p in root.rglob("*") if p.name.endswith((".part", ".link"))]


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror"
    files = {
        "dataset/dataset_acac/train_300K.xyz": _frame("acac-0"),
        "dataset/dataset_3BPA/train_300K.xyz": _frame("3bpa-0"),
        "dataset/dataset_rmd17/revised_aspirin/train.xyz": _frame("aspirin-0"),
        "foundation_model/MACE-rMD17x9_c64.model": "not really a model",
        "foundation_model/README.md": "# fake\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _known(mirror: Path):
    return {MODEL_REL: hashlib.sha256((mirror / MODEL_REL).read_bytes()).hexdigest()}


# ---------------------------------------------------------------------------------------
# mirror
# ---------------------------------------------------------------------------------------
def test_copy_from_mirror_then_idempotent(mirror, tmp_path):
    dest = tmp_path / "dest"
    report = fetch.fetch(dest, "all", mirror=mirror, downloader=no_network,
                         known_sha256=_known(mirror))
    assert report.ok, report.errors
    copied = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file())
    assert sorted(report.installed) == copied
    for rel in copied:
        target = dest / rel
        assert target.is_file() and not target.is_symlink()
        assert target.read_bytes() == (mirror / rel).read_bytes()
    # the mirror lacks most public files: reported as missing, not as errors
    assert "dataset/dataset_3BPA/test_300K.xyz" in report.missing
    assert "foundation_model/MACE-OFF23_medium.model" in report.missing
    assert not _partials(dest)

    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    again = fetch.fetch(dest, "all", mirror=mirror, downloader=no_network,
                        known_sha256=_known(mirror))
    assert again.ok and again.installed == []
    assert sorted(again.skipped) == copied
    assert before == {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}


def test_link_mode_makes_symlinks(mirror, tmp_path):
    dest = tmp_path / "dest"
    report = fetch.fetch(dest, "foundation", mirror=mirror, link=True, downloader=no_network,
                         known_sha256=_known(mirror))
    assert report.ok
    model = dest / MODEL_REL
    assert model.is_symlink() and model.resolve() == (mirror / MODEL_REL).resolve()
    assert not (dest / "dataset").exists()  # only the requested group
    assert fetch.fetch(dest, "foundation", mirror=mirror, link=True, downloader=no_network,
                       known_sha256=_known(mirror)).installed == []


def test_hash_mismatch_is_an_error_and_installs_nothing(mirror, tmp_path, capsys):
    dest = tmp_path / "dest"
    # the fake model cannot match the real SHA-256 that fetch.py knows for this file name
    status = fetch.main(["--mirror", str(mirror), "--dest", str(dest), "--what", "foundation"],
                        downloader=no_network)
    assert status != 0
    assert not (dest / MODEL_REL).exists()
    assert (dest / "foundation_model/README.md").is_file()  # the rest still arrives
    assert not _partials(dest)
    assert "SHA-256 mismatch" in capsys.readouterr().err

    report = fetch.fetch(dest, "foundation", mirror=mirror, link=True, downloader=no_network)
    assert not report.ok and not (dest / MODEL_REL).exists()


def test_present_file_with_wrong_hash_is_replaced(mirror, tmp_path):
    dest = tmp_path / "dest"
    (dest / MODEL_REL).parent.mkdir(parents=True)
    (dest / MODEL_REL).write_text("corrupt, same size")  # as long as the fake model
    report = fetch.fetch(dest, "foundation", mirror=mirror, downloader=no_network,
                         known_sha256=_known(mirror))
    assert report.ok and MODEL_REL in report.installed
    assert (dest / MODEL_REL).read_bytes() == (mirror / MODEL_REL).read_bytes()


# ---------------------------------------------------------------------------------------
# no mirror, no network
# ---------------------------------------------------------------------------------------
def test_no_mirror_and_no_network_fails_clearly(tmp_path, capsys):
    dest = tmp_path / "dest"
    status = fetch.main(["--no-mirror", "--dest", str(dest)], downloader=no_network)
    assert status != 0
    err = capsys.readouterr().err
    assert "--mirror" in err and fetch.MIRROR_ENV in err
    assert "MACE-OFF23_medium.model" in err and "train_300K.xyz" in err
    assert not _partials(dest)
    assert not [p for p in dest.rglob("*") if p.is_file()]


def test_cli_offline_env_with_absent_mirror(tmp_path):
    env = dict(os.environ, MMEA_FETCH_OFFLINE="1")
    env.pop(fetch.MIRROR_ENV, None)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "repro_data/fetch.py"), "--mirror",
         str(tmp_path / "absent"), "--dest", str(tmp_path / "dest"), "--what", "foundation"],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "does not exist" in result.stdout
    assert "network access disabled" in result.stderr
    assert "Provide a local mirror" in result.stderr


def test_failed_download_leaves_no_partial_file(tmp_path):
    def half_then_fail(url, path):
        Path(path).write_bytes(b"half a file")
        raise OSError("connection reset")

    target = tmp_path / "sub" / "thing.xyz"
    with pytest.raises(fetch.FetchError):
        fetch.download_first(["https://a.invalid/x", "https://b.invalid/x"], target,
                             half_then_fail)
    assert not target.exists() and not _partials(tmp_path)


# ---------------------------------------------------------------------------------------
# downloads (served by a fake downloader)
# ---------------------------------------------------------------------------------------
def _fake_rmd17_archive(num_frames: int = 1200, num_atoms: int = 3) -> bytes:
    # low-entropy arrays keep the bz2 step quick; the values only need to be traceable
    frame_index = np.arange(num_frames, dtype=float)[:, None, None]
    coords = frame_index * 1e-3 + np.arange(num_atoms * 3).reshape(1, num_atoms, 3)
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:bz2") as tar:
        for molecule in fetch.RMD17_MOLECULES:
            arrays = io.BytesIO()
            np.savez(arrays, nuclear_charges=np.array([6, 1, 8][:num_atoms]),
                     coords=coords, energies=np.arange(num_frames, dtype=float) - 1000.0,
                     forces=-2.0 * coords)
            info = tarfile.TarInfo(f"rmd17/npz_data/rmd17_{molecule}.npz")
            info.size = len(arrays.getvalue())
            tar.addfile(info, io.BytesIO(arrays.getvalue()))
    return payload.getvalue()


def test_download_path_converts_rmd17_and_fetches_botnet(tmp_path):
    archive = _fake_rmd17_archive()
    calls = []

    def serve(url, path):
        calls.append(url)
        if url == fetch.RMD17_ARCHIVE_URLS[0]:
            Path(path).write_bytes(archive)
        elif "BOTNet-datasets" in url:
            Path(path).write_text(_frame(url.rsplit("/", 1)[-1]))
        else:
            raise OSError("unknown url")

    dest = tmp_path / "dest"
    report = fetch.fetch(dest, "datasets", mirror=None, downloader=serve)
    assert report.ok, report.errors
    assert report.missing == []
    for rel in fetch.expected_files("datasets", fetch.DATASET_NAMES, ()):
        assert (dest / rel).is_file(), rel
    assert not (dest / "dataset/.downloads" / fetch.RMD17_ARCHIVE_NAME).exists()
    assert not _partials(dest)

    folder = dest / "dataset/dataset_rmd17/revised_ethanol"
    order = np.random.RandomState(123).permutation(1200)
    expected = {"train": order[:100], "valid": order[100:150], "test": order[150:1150]}
    for split, index in expected.items():
        text = (folder / f"{split}.xyz").read_text()
        energies = np.array([float(e) for e in re.findall(r"REF_energy=(\S+)", text)])
        np.testing.assert_allclose(energies, (index - 1000.0) * 0.0433641, rtol=1e-14)

    import ase.io  # the written files are ordinary extended XYZ for ASE (and for us)

    frames = ase.io.read(folder / "train.xyz", ":")
    assert len(frames) == 100
    assert frames[0].info["REF_energy"] == pytest.approx((order[0] - 1000.0) * 0.0433641)
    assert frames[0].get_chemical_symbols() == ["C", "H", "O"]
    source_coords = order[0] * 1e-3 + np.arange(9.0).reshape(3, 3)
    np.testing.assert_allclose(frames[0].positions, source_coords, atol=1e-8)
    np.testing.assert_allclose(frames[0].arrays["REF_forces"],
                               -2.0 * source_coords * 0.0433641, atol=1e-8)
    assert np.allclose(frames[0].cell.lengths(), 20.0) and frames[0].pbc.all()

    # nothing is downloaded again once everything is present
    calls.clear()
    again = fetch.fetch(dest, "datasets", mirror=None, downloader=serve)
    assert again.ok and again.installed == [] and calls == []


def test_download_missing_completes_a_partial_mirror(mirror, tmp_path):
    served = []

    def serve(url, path):
        served.append(url.rsplit("/", 1)[-1])
        Path(path).write_text(_frame("downloaded"))

    dest = tmp_path / "dest"
    report = fetch.fetch(dest, "datasets", mirror=mirror, datasets=["3bpa"],
                         download_missing=True, downloader=serve)
    assert report.ok and report.missing == []
    assert (dest / "dataset/dataset_3BPA/test_dih.xyz").is_file()
    assert "train_300K.xyz" not in served  # taken from the mirror


# ---------------------------------------------------------------------------------------
# pretraining sets
# ---------------------------------------------------------------------------------------
def _fake_rmd17_layout(root: Path, num_test: int = 1000) -> Path:
    counts = {"train": 100, "valid": 50, "test": num_test}
    for molecule in fetch.RMD17_MOLECULES:
        folder = root / f"revised_{molecule}"
        folder.mkdir(parents=True)
        for split, count in counts.items():
            (folder / f"{split}.xyz").write_text(
                "".join(_frame(f"{molecule}-{split}-{i}") for i in range(count)))
    return root


def _tags(path: Path):
    return re.findall(r"tag=(\S+)", path.read_text())


def test_make_pretrain_sets_counts_and_frames(tmp_path, capsys):
    rmd17 = _fake_rmd17_layout(tmp_path / "rmd17")
    out = tmp_path / "out"
    assert pretrain_sets.main(["--rmd17", str(rmd17), "--out", str(out)]) == 0
    train, valid = _tags(out / "pretrain_train.xyz"), _tags(out / "pretrain_valid.xyz")
    assert len(train) == 5400 and len(valid) == 180
    assert not any(t.startswith("aspirin") for t in train + valid)
    for molecule in pretrain_sets.PRETRAIN_MOLECULES:
        mine = [t for t in train if t.startswith(f"{molecule}-")]
        assert mine == ([f"{molecule}-train-{i}" for i in range(100)]
                        + [f"{molecule}-valid-{i}" for i in range(50)]
                        + [f"{molecule}-test-{i}" for i in range(450)])
        assert [t for t in valid if t.startswith(f"{molecule}-")] == \
            [f"{molecule}-test-{i}" for i in range(900, 920)]
    assert "5400 configurations" in capsys.readouterr().out


def test_make_pretrain_sets_rejects_short_test_files(tmp_path, capsys):
    rmd17 = _fake_rmd17_layout(tmp_path / "rmd17", num_test=900)
    assert pretrain_sets.main(["--rmd17", str(rmd17), "--out", str(tmp_path / "out")]) == 1
    assert "920" in capsys.readouterr().err
    assert not (tmp_path / "out" / "pretrain_train.xyz").exists()
