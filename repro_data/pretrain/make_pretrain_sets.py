#!/usr/bin/env python3
"""Build the pretraining sets of the shared foundation model from the rMD17 splits.

    python repro_data/pretrain/make_pretrain_sets.py [--rmd17 DIR] [--out DIR]

Uses the nine rMD17 molecules other than aspirin (aspirin stays unseen, so fine-tuning on it
is a transfer task).  Per molecule, from ``DIR/revised_MOLECULE/``:

    pretrain_train.xyz  <- all of train.xyz, all of valid.xyz, frames 0..449 of test.xyz
    pretrain_valid.xyz  <- frames 900..919 of test.xyz

With the published 100 / 50 / 1000 splits that is 9 x 600 = 5,400 training and
9 x 20 = 180 validation configurations.  Frames are copied verbatim (text level), molecule
by molecule in alphabetical order, so the numbers are exactly those of the source files.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

HERE = Path(__file__).resolve().parent
DEFAULT_RMD17 = HERE.parent / "dataset" / "dataset_rmd17"

PRETRAIN_MOLECULES = (
    "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene",
    "paracetamol", "salicylic", "toluene", "uracil",
)
TEST_FRAMES_FOR_TRAINING = slice(0, 450)   # first 450 frames of test.xyz
TEST_FRAMES_FOR_VALIDATION = slice(900, 920)  # frames 900-919 of test.xyz


def xyz_frames(path: Path) -> List[str]:
    """Split an (extended) XYZ file into the text of its frames, unchanged."""
    frames: List[str] = []
    with open(path, "r", encoding="utf-8") as handle:
        lines = handle.readlines()
    position = 0
    while position < len(lines):
        header = lines[position].strip()
        if not header:  # tolerate blank lines between or after frames
            position += 1
            continue
        try:
            num_atoms = int(header)
        except ValueError as error:
            raise ValueError(f"{path}: line {position + 1} should hold an atom count, "
                             f"found {header!r}") from error
        stop = position + 2 + num_atoms
        if stop > len(lines):
            raise ValueError(f"{path}: the frame starting at line {position + 1} is truncated")
        block = lines[position:stop]
        if not block[-1].endswith("\n"):
            block[-1] += "\n"
        frames.append("".join(block))
        position = stop
    return frames


def collect(rmd17_dir: Path, molecules: Sequence[str] = PRETRAIN_MOLECULES
            ) -> Tuple[List[str], List[str], Dict[str, Tuple[int, int]]]:
    """Frames for pretrain_train / pretrain_valid and the per-molecule counts."""
    train: List[str] = []
    valid: List[str] = []
    counts: Dict[str, Tuple[int, int]] = {}
    for molecule in molecules:
        folder = rmd17_dir / f"revised_{molecule}"
        missing = [name for name in ("train.xyz", "valid.xyz", "test.xyz")
                   if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {', '.join(missing)}; run `python repro_data/fetch.py "
                "--what datasets` first")
        test = xyz_frames(folder / "test.xyz")
        if len(test) < TEST_FRAMES_FOR_VALIDATION.stop:
            raise ValueError(f"{folder / 'test.xyz'} has {len(test)} frames; at least "
                             f"{TEST_FRAMES_FOR_VALIDATION.stop} are needed")
        mol_train = (xyz_frames(folder / "train.xyz") + xyz_frames(folder / "valid.xyz")
                     + test[TEST_FRAMES_FOR_TRAINING])
        mol_valid = test[TEST_FRAMES_FOR_VALIDATION]
        train += mol_train
        valid += mol_valid
        counts[molecule] = (len(mol_train), len(mol_valid))
    return train, valid, counts


def write_frames(path: Path, frames: Sequence[str]) -> None:
    """Write ``frames`` to ``path`` through a temporary file, so no partial file remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.writelines(frames)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rmd17", default=str(DEFAULT_RMD17),
                        help="folder holding revised_MOLECULE/{train,valid,test}.xyz "
                             "(default: repro_data/dataset/dataset_rmd17)")
    parser.add_argument("--out", default=str(HERE),
                        help="where pretrain_train.xyz and pretrain_valid.xyz go "
                             "(default: repro_data/pretrain)")
    args = parser.parse_args(argv)
    try:
        train, valid, counts = collect(Path(args.rmd17))
    except (OSError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    out = Path(args.out)
    write_frames(out / "pretrain_train.xyz", train)
    write_frames(out / "pretrain_valid.xyz", valid)
    for molecule, (n_train, n_valid) in counts.items():
        print(f"{molecule:14s} train {n_train:4d}  valid {n_valid:3d}")
    print(f"wrote {out / 'pretrain_train.xyz'} ({len(train)} configurations) and "
          f"{out / 'pretrain_valid.xyz'} ({len(valid)} configurations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
