#!/usr/bin/env python3
"""Put the benchmark data sets and foundation models where the run commands expect them.

    python repro_data/fetch.py [--mirror DIR] [--what datasets|foundation|all] [--dest repro_data]

Targets (both folders are git-ignored and never committed):

    <dest>/dataset/dataset_rmd17/revised_MOLECULE/{train,valid,test}.xyz   (REF_energy, REF_forces)
    <dest>/dataset/dataset_acac/*.xyz                                       (energy, forces)
    <dest>/dataset/dataset_3BPA/*.xyz                                       (energy, forces)
    <dest>/foundation_model/*.model

Where the files come from, per group (data sets, foundation models):

1. A local mirror, i.e. a folder laid out like ``repro_data/`` with ``dataset/`` and/or
   ``foundation_model/`` inside.  Looked up in this order: ``--mirror DIR``, the environment
   variable ``MMEA_MIRROR``, then ``repro_data`` of the shared folder (``$MMEA_SHARED``,
   default ``<repo>/../shared``; see :func:`shared_folder`).  Files are copied (default)
   or symbolically linked (``--link``).
2. Otherwise the public sources, with urllib: the rMD17 archive of figshare record 12672038
   (converted here to extended XYZ with the split used by the MMEA reference files), the
   BOTNet-datasets GitHub repository (3BPA, AcAc) and the ACEsuit mace-off GitHub
   repository (MACE-OFF23 small / medium / large).
3. If neither provides a requested file the script stops with a non-zero exit status and
   says which files are missing and how to point it at a mirror.

Re-running is cheap: present files are skipped.  Every file is written under a temporary
name in its final folder and renamed into place only when complete (and, where its SHA-256
is known, verified), so an interrupted run never leaves a truncated file behind.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / "repro_data"
SHARED_ENV = "MMEA_SHARED"
MIRROR_ENV = "MMEA_MIRROR"
# Set to 1 to forbid any network access (the downloader then fails at once).
OFFLINE_ENV = "MMEA_FETCH_OFFLINE"

# group name on the command line -> folder below <dest> (and below the mirror)
GROUP_DIRS: Dict[str, str] = {"datasets": "dataset", "foundation": "foundation_model"}

# SHA-256 of files whose content is fixed and known, keyed by path relative to <dest>.
KNOWN_SHA256: Dict[str, str] = {
    # the small foundation model shared with this project (see its README in the mirror)
    "foundation_model/MACE-rMD17x9_c64.model": (
        "ff838d022aeaf7e4edb7449d87aa550071f491789ba2a7bce143ab636089f27c"
    ),
}

SHARED_FOUNDATION = "MACE-rMD17x9_c64.model"

# ---------------------------------------------------------------------------------------
# Where the shared folder and the mirrors are (the benchmark and the tests ask here too)
# ---------------------------------------------------------------------------------------
def shared_folder() -> Path:
    """The project's read-only shared folder (data mirror, reference models, documents).

    ``$MMEA_SHARED`` when set; otherwise ``shared`` inside the checkout where a copy of the
    repository carries one, else ``shared`` beside the repository.  The folder may be
    absent: callers check, and tests skip.
    """
    chosen = os.environ.get(SHARED_ENV)
    if chosen:
        return Path(chosen).expanduser()
    inside = REPO_ROOT / "shared"
    return inside if inside.is_dir() else REPO_ROOT.parent / "shared"


def default_mirror() -> Path:
    """The mirror taken when neither ``--mirror`` nor ``$MMEA_MIRROR`` names one."""
    return shared_folder() / "repro_data"


def mirror_roots() -> List[Path]:
    """Folders laid out like repro_data/ that may hold the files, most preferred first:
    ``$MMEA_MIRROR`` when set, then :func:`default_mirror`."""
    chosen = os.environ.get(MIRROR_ENV)
    return ([Path(chosen).expanduser()] if chosen else []) + [default_mirror()]


# ---------------------------------------------------------------------------------------
# Public sources
# ---------------------------------------------------------------------------------------
RMD17_MOLECULES = (
    "aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde",
    "naphthalene", "paracetamol", "salicylic", "toluene", "uracil",
)
RMD17_SPLITS = ("train", "valid", "test")
# rMD17 (Christensen & von Lilienfeld 2020), figshare record 12672038, file rmd17.tar.bz2;
# the Materials Cloud archive entry of the same data set is the second choice.
RMD17_ARCHIVE_URLS = (
    "https://figshare.com/ndownloader/files/23950376",
    "https://archive.materialscloud.org/record/file?filename=rmd17.tar.bz2&record_id=466",
)
RMD17_ARCHIVE_NAME = "rmd17.tar.bz2"
# Facts of the conversion used for the MMEA reference files: energies in kcal/mol and forces
# in kcal/mol/A are multiplied by this factor to give eV and eV/A; a molecule's frames are
# ordered by a NumPy permutation seeded with 123 and cut into consecutive blocks of
# 100 (train), 50 (valid) and 1000 (test) frames; every frame sits in a 20 A periodic box.
KCAL_PER_MOL_IN_EV = 0.0433641
RMD17_SEED = 123
RMD17_COUNTS = {"train": 100, "valid": 50, "test": 1000}
RMD17_BOX = 20.0

BOTNET_BASES = (
    "https://raw.githubusercontent.com/davkovacs/BOTNet-datasets/HEAD",
    "https://raw.githubusercontent.com/davkovacs/BOTNet-datasets/"
    "29e6d467317e4b5967b7ea5cbee54de953fa0d45",
)
BOTNET_FILES = {
    "acac": (
        "dataset_acac",
        ("README.md", "isolated_atoms.xyz", "train_300K.xyz", "train_600K.xyz",
         "test_MD_300K.xyz", "test_MD_600K.xyz", "test_H_transfer.xyz",
         "test_dihedral.xyz"),
    ),
    "3bpa": (
        "dataset_3BPA",
        ("README.md", "iso_atoms.xyz", "train_300K.xyz", "train_mixedT.xyz",
         "test_300K.xyz", "test_600K.xyz", "test_1200K.xyz", "test_dih.xyz"),
    ),
}
DATASET_NAMES = ("rmd17", "acac", "3bpa")

MACE_OFF_BASES = (
    "https://github.com/ACEsuit/mace-off/raw/main/mace_off23",
    "https://raw.githubusercontent.com/ACEsuit/mace-off/v0.2/mace_off23",
)
MACE_OFF_SIZES = ("small", "medium", "large")
MACE_OFF_LICENCE_NOTE = (
    "MACE-OFF23 models are distributed by their authors under the Academic Software "
    "License (https://github.com/gabor1/ASL); by using them you accept its terms."
)


class FetchError(RuntimeError):
    """A requested file could not be provided, or provided content failed verification."""


class ChecksumError(FetchError):
    """A file's SHA-256 differs from the known value."""


Downloader = Callable[[str, Path], None]


def urllib_download(url: str, out_path: Path, timeout: float = 60.0) -> None:
    """Write the body of ``url`` to ``out_path`` (plain urllib, streamed in 1 MiB pieces)."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise FetchError(f"network access disabled by {OFFLINE_ENV}")
    request = urllib.request.Request(url, headers={"User-Agent": "mmea-repro-fetch/1"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(out_path, "wb") as out:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        done, next_report = 0, 0.1
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if total and done / total >= next_report:
                print(f"    {done / 2**20:8.1f} / {total / 2**20:.1f} MiB", flush=True)
                next_report += 0.1


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Writing files safely
# ---------------------------------------------------------------------------------------
def _default_file_mode() -> int:
    """rw for everyone the umask allows (temporary files start out private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def install_file(target: Path, produce: Callable[[Path], None],
                 expected_sha256: Optional[str] = None) -> None:
    """Let ``produce`` write a temporary file next to ``target``; check it; rename it into place.

    On any failure the temporary file is removed and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                        dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        produce(tmp)
        if expected_sha256 is not None:
            got = sha256_of(tmp)
            if got != expected_sha256:
                raise ChecksumError(
                    f"SHA-256 mismatch for {target.name}: expected {expected_sha256}, got {got}"
                )
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def install_link(target: Path, source: Path) -> None:
    """Make ``target`` a symbolic link to ``source``, replacing it atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.link"
    os.symlink(os.path.abspath(source), tmp)
    try:
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def download_first(urls: Sequence[str], target: Path, downloader: Downloader,
                   expected_sha256: Optional[str] = None) -> str:
    """Try ``urls`` in order until one gives a complete (and verified) ``target``."""
    failures = []
    for url in urls:
        print(f"  downloading {url}", flush=True)
        try:
            install_file(target, lambda tmp: downloader(url, tmp), expected_sha256)
            return url
        except Exception as error:  # network errors come in many types; try the next URL
            failures.append(f"{url}: {error}")
    raise FetchError(f"could not download {target.name}:\n    " + "\n    ".join(failures))


# ---------------------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------------------
@dataclass
class Report:
    installed: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)    # requested, not provided
    errors: List[str] = field(default_factory=list)     # verification or download failures
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _present_and_valid(dest: Path, rel: str, known: Mapping[str, str]) -> bool:
    path = dest / rel
    if not path.is_file():
        return False
    expected = known.get(rel)
    if expected is not None and sha256_of(path) != expected:
        print(f"  {rel}: present but its SHA-256 is wrong; fetching it again")
        return False
    return True


# ---------------------------------------------------------------------------------------
# The catalogue of files a complete fetch provides
# ---------------------------------------------------------------------------------------
def rmd17_relpath(molecule: str, split: str) -> str:
    return f"dataset/dataset_rmd17/revised_{molecule}/{split}.xyz"


def expected_files(group: str, datasets: Sequence[str], models: Sequence[str]) -> List[str]:
    """Paths (relative to <dest>) that the public sources provide for ``group``."""
    files: List[str] = []
    if group == "datasets":
        if "rmd17" in datasets:
            files += [rmd17_relpath(m, s) for m in RMD17_MOLECULES for s in RMD17_SPLITS]
        for name in ("acac", "3bpa"):
            if name in datasets:
                folder, names = BOTNET_FILES[name]
                files += [f"dataset/{folder}/{n}" for n in names]
    elif group == "foundation":
        files += [f"foundation_model/MACE-OFF23_{size}.model" for size in models]
    return files


# ---------------------------------------------------------------------------------------
# Source 1: a local mirror
# ---------------------------------------------------------------------------------------
def _mirror_files(root: Path) -> Iterable[Path]:
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders
                               if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(folder) / name


def copy_from_mirror(mirror_group: Path, dest: Path, group_dir: str, link: bool,
                     known: Mapping[str, str], report: Report) -> None:
    for source in _mirror_files(mirror_group):
        rel = f"{group_dir}/{source.relative_to(mirror_group).as_posix()}"
        target = dest / rel
        expected = known.get(rel)
        if link:
            if target.is_symlink() and os.path.realpath(target) == os.path.realpath(source):
                report.skipped.append(rel)
                continue
        elif target.is_file() and not target.is_symlink() \
                and target.stat().st_size == source.stat().st_size \
                and (expected is None or sha256_of(target) == expected):
            report.skipped.append(rel)
            continue
        try:
            if link:
                if expected is not None and sha256_of(source) != expected:
                    raise ChecksumError(f"SHA-256 mismatch for {source} (expected {expected})")
                install_link(target, source)
            else:
                install_file(target, lambda tmp, s=source: shutil.copyfile(s, tmp), expected)
        except (OSError, FetchError) as error:
            report.errors.append(f"{rel}: {error}")
            print(f"  ERROR {rel}: {error}")
            continue
        report.installed.append(rel)
        print(f"  {'linked' if link else 'copied'} {rel}")


# ---------------------------------------------------------------------------------------
# Source 2: public downloads
# ---------------------------------------------------------------------------------------
def _symbol(atomic_number: int) -> str:
    table = ("X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al",
             "Si", "P", "S", "Cl", "Ar")
    if 0 < atomic_number < len(table):
        return table[atomic_number]
    from ase.data import chemical_symbols  # only reached for elements rMD17 does not have
    return chemical_symbols[atomic_number]


def rmd17_split_indices(num_frames: int) -> dict:
    """Frame indices of the train / valid / test blocks (the reference files' scheme)."""
    import numpy as np

    order = np.random.RandomState(RMD17_SEED).permutation(num_frames)
    blocks, start = {}, 0
    for split in RMD17_SPLITS:
        stop = min(start + RMD17_COUNTS[split], num_frames)
        blocks[split] = order[start:stop]
        start = stop
    return blocks


def write_rmd17_xyz(path: Path, numbers, coords, energies_ev, forces_ev) -> None:
    """Extended XYZ with REF_energy (eV) in the info line and REF_forces (eV/A) per atom."""
    symbols = [_symbol(int(z)) for z in numbers]
    box = f"{RMD17_BOX:.1f}"
    lattice = " ".join(box if i == j else "0.0" for i in range(3) for j in range(3))
    with open(path, "w", encoding="ascii") as out:
        for frame_positions, energy, frame_forces in zip(coords, energies_ev, forces_ev):
            out.write(f"{len(symbols)}\n")
            out.write(f'Lattice="{lattice}" Properties=species:S:1:pos:R:3:REF_forces:R:3 '
                      f'REF_energy={float(energy)!r} config_type=Default pbc="T T T"\n')
            for symbol, position, force in zip(symbols, frame_positions, frame_forces):
                values = "".join(f" {float(v):16.8f}" for v in (*position, *force))
                out.write(f"{symbol:<2}{values}\n")


def convert_rmd17_molecule(arrays: Mapping[str, "object"], out_dir: Path,
                           splits: Sequence[str] = RMD17_SPLITS) -> Dict[str, int]:
    """Write ``out_dir/{split}.xyz`` from one molecule's rMD17 arrays; returns frame counts.

    ``arrays`` holds the npz fields ``nuclear_charges`` (n_atoms,), ``coords``
    (n_frames, n_atoms, 3) in A, ``energies`` (n_frames,) in kcal/mol and ``forces``
    (n_frames, n_atoms, 3) in kcal/mol/A.
    """
    import numpy as np

    numbers = np.asarray(arrays["nuclear_charges"])
    coords = np.asarray(arrays["coords"], dtype=np.float64)
    energies = np.asarray(arrays["energies"], dtype=np.float64).reshape(-1)
    forces = np.asarray(arrays["forces"], dtype=np.float64)
    blocks = rmd17_split_indices(len(energies))
    counts = {}
    for split in splits:
        index = blocks[split]
        install_file(
            out_dir / f"{split}.xyz",
            lambda tmp, i=index: write_rmd17_xyz(
                tmp, numbers, coords[i], energies[i] * KCAL_PER_MOL_IN_EV,
                forces[i] * KCAL_PER_MOL_IN_EV),
        )
        counts[split] = len(index)
    return counts


def fetch_rmd17(dest: Path, downloader: Downloader, report: Report,
                keep_downloads: bool = False) -> None:
    todo = {m: [s for s in RMD17_SPLITS if not (dest / rmd17_relpath(m, s)).is_file()]
            for m in RMD17_MOLECULES}
    todo = {m: splits for m, splits in todo.items() if splits}
    report.skipped += [rmd17_relpath(m, s) for m in RMD17_MOLECULES for s in RMD17_SPLITS
                       if s not in todo.get(m, [])]
    if not todo:
        return
    archive = dest / "dataset" / ".downloads" / RMD17_ARCHIVE_NAME
    try:
        if not archive.is_file():
            print(f"rMD17: fetching the archive (figshare record 12672038) for {len(todo)} "
                  "molecule(s)")
            download_first(RMD17_ARCHIVE_URLS, archive, downloader)
        import numpy as np

        print(f"rMD17: converting {', '.join(sorted(todo))}")
        # one streaming pass over the bz2 archive; each npz is read into memory in turn
        with tarfile.open(archive, "r|bz2") as tar:
            for member in tar:
                name = Path(member.name).name
                if not (member.isfile() and name.startswith("rmd17_") and name.endswith(".npz")):
                    continue
                molecule = name[len("rmd17_"):-len(".npz")]
                if molecule not in todo:
                    continue
                payload = tar.extractfile(member).read()
                with np.load(io.BytesIO(payload)) as arrays:
                    out_dir = dest / "dataset" / "dataset_rmd17" / f"revised_{molecule}"
                    counts = convert_rmd17_molecule(arrays, out_dir, todo.pop(molecule))
                report.installed += [rmd17_relpath(molecule, s) for s in counts]
                print(f"  revised_{molecule}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
        if todo:
            raise FetchError(f"the archive holds no npz for: {', '.join(sorted(todo))}")
    except (OSError, EOFError, FetchError, tarfile.TarError, ValueError, KeyError) as error:
        if isinstance(error, (tarfile.TarError, EOFError)) and archive.exists():
            archive.unlink()  # unreadable: do not reuse it on the next run
        report.errors.append(f"rMD17: {error}")
        report.missing += [rmd17_relpath(m, s) for m, splits in todo.items() for s in splits]
        print(f"  ERROR rMD17: {error}")
        return
    if not keep_downloads and archive.exists():
        archive.unlink()


def fetch_urls(dest: Path, rel: str, urls: Sequence[str], downloader: Downloader,
               known: Mapping[str, str], report: Report) -> None:
    if _present_and_valid(dest, rel, known):
        report.skipped.append(rel)
        return
    try:
        download_first(urls, dest / rel, downloader, known.get(rel))
    except FetchError as error:
        report.errors.append(str(error))
        report.missing.append(rel)
        print(f"  ERROR {error}")
        return
    report.installed.append(rel)


def download_group(group: str, dest: Path, datasets: Sequence[str], models: Sequence[str],
                   downloader: Downloader, known: Mapping[str, str], report: Report,
                   only: Optional[Sequence[str]] = None, keep_downloads: bool = False) -> None:
    """Fetch the files of ``group`` from the public sources (``only``: restrict to these)."""
    wanted = set(only) if only is not None else None

    def wants(rel: str) -> bool:
        return wanted is None or rel in wanted

    if group == "datasets":
        for name in ("acac", "3bpa"):
            if name not in datasets:
                continue
            folder, names = BOTNET_FILES[name]
            for file_name in names:
                rel = f"dataset/{folder}/{file_name}"
                if wants(rel):
                    fetch_urls(dest, rel, [f"{b}/{folder}/{file_name}" for b in BOTNET_BASES],
                               downloader, known, report)
        licence = "dataset/LICENSE-BOTNet-datasets"
        if wanted is None and ("acac" in datasets or "3bpa" in datasets):
            fetch_urls(dest, licence, [f"{b}/LICENSE" for b in BOTNET_BASES], downloader,
                       known, report)
        if "rmd17" in datasets and (wanted is None or any("dataset_rmd17" in r for r in wanted)):
            fetch_rmd17(dest, downloader, report, keep_downloads)
    elif group == "foundation":
        for size in models:
            rel = f"foundation_model/MACE-OFF23_{size}.model"
            if wants(rel):
                print(f"  note: {MACE_OFF_LICENCE_NOTE}")
                fetch_urls(dest, rel, [f"{b}/MACE-OFF23_{size}.model" for b in MACE_OFF_BASES],
                           downloader, known, report)


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------
def resolve_mirror(cli_mirror: Optional[str], use_mirror: bool = True) -> Optional[Path]:
    """The mirror folder to use, or None.

    An explicit choice (``--mirror`` first, then ``$MMEA_MIRROR``) is the only candidate when
    given; the default location next to the repository is used only when neither is set.
    """
    if not use_mirror:
        return None
    chosen = cli_mirror or os.environ.get(MIRROR_ENV) or None
    path = Path(chosen).expanduser() if chosen else default_mirror()
    if path.is_dir():
        return path.resolve()
    if chosen:
        print(f"mirror {path} does not exist; falling back to the public sources")
    return None


def fetch(dest: Path, what: str = "all", mirror: Optional[Path] = None, link: bool = False,
          datasets: Sequence[str] = DATASET_NAMES, models: Sequence[str] = ("medium",),
          download_missing: bool = False, downloader: Optional[Downloader] = None,
          known_sha256: Optional[Mapping[str, str]] = None,
          keep_downloads: bool = False) -> Report:
    """Provide the requested groups under ``dest``; returns what was done and what is missing."""
    dest = Path(dest)
    downloader = downloader or urllib_download
    known = KNOWN_SHA256 if known_sha256 is None else known_sha256
    groups = list(GROUP_DIRS) if what == "all" else [what]
    report = Report()
    for group in groups:
        group_dir = GROUP_DIRS[group]
        catalogue = expected_files(group, datasets, models)
        source = mirror / group_dir if mirror is not None else None
        if source is not None and source.is_dir():
            print(f"{group}: from mirror {source}")
            copy_from_mirror(source, dest, group_dir, link, known, report)
            absent = [rel for rel in catalogue if not (dest / rel).is_file()]
            if absent and download_missing:
                print(f"{group}: {len(absent)} file(s) not in the mirror; trying public sources")
                download_group(group, dest, datasets, models, downloader, known, report,
                               only=absent, keep_downloads=keep_downloads)
            absent = [rel for rel in catalogue if not (dest / rel).is_file()]
            for rel in absent:
                if rel not in report.missing:
                    report.missing.append(rel)
            if absent:
                report.notes.append(
                    f"{group}: {len(absent)} file(s) of the public sources are not in the mirror "
                    "(run again with --download-missing where there is internet)")
        else:
            print(f"{group}: no mirror folder; downloading from the public sources")
            download_group(group, dest, datasets, models, downloader, known, report,
                           keep_downloads=keep_downloads)
            for rel in catalogue:
                if not (dest / rel).is_file() and rel not in report.missing:
                    report.missing.append(rel)
                    report.errors.append(f"{rel}: not provided")
    return report


def foundation_summary(dest: Path) -> List[str]:
    """One line per ``*.model`` file in ``<dest>/foundation_model``: path, size, SHA-256."""
    folder = Path(dest) / "foundation_model"
    lines = []
    for model in sorted(folder.glob("*.model")) if folder.is_dir() else []:
        size = model.stat().st_size / 2**20
        lines.append(f"  {model}  ({size:.1f} MiB, sha256 {sha256_of(model)})")
    return lines


def _csv(text: str, allowed: Sequence[str], what: str) -> List[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(allowed)
    bad = [t for t in items if t not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(bad)} "
                                         f"(choose from {', '.join(allowed)} or all)")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fetch the rMD17 / 3BPA / AcAc data sets and foundation models into "
                    "git-ignored folders below --dest, from a local mirror when one exists, "
                    "otherwise from the public sources.")
    parser.add_argument("--what", choices=("datasets", "foundation", "all"), default="all",
                        help="which group to fetch (default: all)")
    parser.add_argument("--dest", default=str(DEFAULT_DEST),
                        help="folder receiving dataset/ and foundation_model/ "
                             "(default: the repository's repro_data/)")
    parser.add_argument("--mirror", default=None,
                        help="local mirror folder laid out like repro_data/ "
                             f"(default: ${MIRROR_ENV}, else the shared folder's: {default_mirror()})")
    parser.add_argument("--no-mirror", action="store_true",
                        help="ignore any mirror and download from the public sources")
    parser.add_argument("--link", action="store_true",
                        help="symlink mirror files instead of copying them")
    parser.add_argument("--download-missing", action="store_true",
                        help="after copying from a mirror, download what it lacks "
                             "(e.g. the 3BPA test sets, MACE-OFF23)")
    parser.add_argument("--datasets", default="all",
                        type=lambda s: _csv(s, DATASET_NAMES, "data set"),
                        help="comma list of rmd17,acac,3bpa for downloads (default: all)")
    parser.add_argument("--models", default="medium",
                        type=lambda s: _csv(s, MACE_OFF_SIZES, "model size"),
                        help="MACE-OFF23 sizes to download: comma list of small,medium,large "
                             "or all (default: medium)")
    parser.add_argument("--keep-downloads", action="store_true",
                        help="keep the rMD17 archive in dataset/.downloads after conversion")
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero also when a mirror lacks some public files")
    return parser


def main(argv: Optional[Sequence[str]] = None, downloader: Optional[Downloader] = None) -> int:
    args = build_parser().parse_args(argv)
    dest = Path(args.dest).expanduser().resolve()
    mirror = resolve_mirror(args.mirror, use_mirror=not args.no_mirror)
    report = fetch(dest, what=args.what, mirror=mirror, link=args.link,
                   datasets=args.datasets, models=args.models,
                   download_missing=args.download_missing, downloader=downloader,
                   keep_downloads=args.keep_downloads)

    print(f"\nsummary: {len(report.installed)} file(s) added, {len(report.skipped)} already "
          f"present, {len(report.missing)} missing, {len(report.errors)} error(s)")
    for note in report.notes:
        print(f"note: {note}")
    if report.missing:
        print("missing:")
        for rel in report.missing:
            print(f"  {rel}")
    if args.what in ("foundation", "all"):
        models = foundation_summary(dest)
        print("foundation models available:" if models else "no foundation model available")
        for line in models:
            print(line)
        if (dest / "foundation_model" / SHARED_FOUNDATION).is_file() and not \
                (dest / "foundation_model" / "MACE-OFF23_medium.model").is_file():
            print(f"  -> MACE-OFF23 is absent: pass --foundation_model="
                  f"repro_data/foundation_model/{SHARED_FOUNDATION} (see repro_data/run.md)")

    failed = not report.ok or (args.strict and report.missing)
    if failed:
        print("\nERROR: not everything requested could be provided.", file=sys.stderr)
        for error in report.errors:
            print(f"  {error}", file=sys.stderr)
        print(
            "Provide a local mirror: a folder holding dataset/ and/or foundation_model/ laid "
            "out like repro_data/ (for example ../shared/repro_data), given by --mirror DIR "
            f"or the environment variable {MIRROR_ENV}=DIR; or run where the public sources "
            "(figshare, github.com) can be reached.",
            file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
