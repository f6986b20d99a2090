"""Select pretraining configurations to replay when fine-tuning (upstream 0.3.16's tool).

python -m mace.cli.fine_tuning_select --configs_pt PT.xyz --configs_ft FT.xyz \
    --num_samples 1000 --model small --output replay.xyz
keeps the configurations of PT.xyz whose elements fit those of FT.xyz (--filtering_type),
takes --num_samples of them (farthest point sampling on the model's descriptors, or at
random) and writes replay.xyz (info ``pretrained=True``, ``config_weight``, ``head``),
replay_combined.xyz (those, then the fine-tuning frames with ``pretrained=False``) and, when
descriptors were computed, replay_descriptors.npy (one row per chosen configuration, which
--descriptors reads back). The selection itself is :mod:`mace.data.selection`.
"""
import argparse
import ast
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import ase.io
import numpy as np
import torch
from ase import Atoms

from mace.adapters.prepare import PUBLISHED_MODELS, resolve_foundation_path
from mace.cli.entry import add_trust_pickle_flag, run_cli
from mace.cli.logging_setup import setup_logging
from mace.core.errors import UserInputError, one_line
from mace.core.files import atomic_outputs, unwritable_folder_reason
from mace.core.torch_setup import dtype_from_name, select_device
from mace.data import Configuration, config_from_atoms
from mace.data.configuration import read_frames
from mace.data.selection import (
    FILTERING_TYPES,
    SUBSELECT_METHODS,
    DescriptorSource,
    configuration_descriptor,
    element_species,
    filter_mask,
    filtering_elements,
    select_configurations,
    tag_frames,
)
from mace.modules.heads import head_index
from mace.modules.loading import load_model
from mace.modules.models import model_heads
from mace.modules.predict import invariant_descriptors

EXTXYZ_SUFFIXES = (".xyz", ".extxyz")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Select pretraining configurations to replay when fine-tuning.")
    parser.add_argument("--configs_pt", required=True, help="extxyz file of the pretraining configurations")
    parser.add_argument("--configs_ft", default=None,
                        help="extxyz file, or a list literal of files, of the fine-tuning configurations")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="configurations to select (default: all that pass the filter)")
    parser.add_argument("--subselect", default="fps", choices=SUBSELECT_METHODS,
                        help="how to choose among those that pass: farthest point sampling or at random")
    parser.add_argument("--model", default="small",
                        help="model file or published foundation name whose descriptors fps uses")
    parser.add_argument("--output", required=True, help="extxyz file (.xyz or .extxyz) for the selection")
    parser.add_argument("--descriptors", default=None,
                        help="descriptors to use instead of computing them: a .npy array, one row per "
                             "configuration of --configs_pt")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--default_dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--head_pt", default=None, help="head written into the selected frames' info")
    parser.add_argument("--head_ft", default=None, help="head written into the fine-tuning frames' info")
    parser.add_argument("--filtering_type", default="none", choices=FILTERING_TYPES,
                        help="which pretraining configurations may be selected, by their elements")
    parser.add_argument("--weight_ft", type=float, default=1.0, help="config_weight of the fine-tuning frames")
    parser.add_argument("--weight_pt", type=float, default=1.0, help="config_weight of the selected frames")
    parser.add_argument("--filter_atomic_numbers_pt", default=None,
                        help="elements to filter by, as a list literal, when no --configs_ft is given")
    parser.add_argument("--disallow_random_padding", action="store_true",
                        help="refuse a --num_samples above the number that pass the filter instead of "
                             "adding random others")
    parser.add_argument("--seed", type=int, default=42, help="seed of the random choices")
    add_trust_pickle_flag(parser)
    return parser


def _literal(text: str, flag: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserInputError(f"{flag}: {text!r} is not a valid Python literal") from None


def finetuning_paths(value: Optional[str]) -> List[str]:
    """--configs_ft as a list of files: one path, or a list literal of paths (as upstream)."""
    if value is None:
        return []
    if not value.lstrip().startswith("["):
        return [value]
    paths = _literal(value, "--configs_ft")
    if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
        raise UserInputError(f"--configs_ft: expected a file or a list of files, got {value!r}")
    return paths


def filter_atomic_numbers(value: Optional[str]) -> Optional[List[int]]:
    """--filter_atomic_numbers_pt as atomic numbers, from a list literal such as ``[1, 8]``."""
    if value is None:
        return None
    numbers = _literal(value, "--filter_atomic_numbers_pt")
    if not isinstance(numbers, (list, tuple)) or not all(
        isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118 for z in numbers
    ):
        raise UserInputError(f"--filter_atomic_numbers_pt: expected a list of atomic numbers (1 to 118), got {value!r}")
    return list(numbers)


def output_paths(output: str) -> List[Path]:
    """The selection, the combined file and the descriptors, beside each other (upstream's names)."""
    path = Path(output)
    if path.suffix.lower() not in EXTXYZ_SUFFIXES:
        raise UserInputError(f"--output {output}: the name must end in .xyz or .extxyz (an extxyz file)")
    reason = unwritable_folder_reason(path.parent)
    if reason is not None:
        raise UserInputError(f"--output {output}: {reason}")
    return [path, path.with_name(f"{path.stem}_combined{path.suffix}"), path.with_name(f"{path.stem}_descriptors.npy")]


def loaded_descriptors(path: str, num_configs: int) -> np.ndarray:
    """The rows of a --descriptors file: a plain numeric array, one row per pretraining
    configuration. Pickled files (upstream's) are refused: unpickling can run any code."""
    if not Path(path).is_file():
        raise UserInputError(f"--descriptors {path}: no such file")
    try:
        rows = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error):
            raise UserInputError(
                f"--descriptors {path} holds pickled objects (as upstream writes them), which are refused because "
                "loading a pickle can run code; leave --descriptors out to compute them here"
            ) from None
        raise UserInputError(f"--descriptors {path} is not a numpy array file ({one_line(error)})") from None
    except (OSError, EOFError) as error:
        raise UserInputError(f"--descriptors {path} could not be read ({one_line(error)})") from None
    if not isinstance(rows, np.ndarray) or rows.ndim != 2 or not np.issubdtype(rows.dtype, np.number):
        raise UserInputError(f"--descriptors {path} must hold one 2-D numeric array [configurations, features]")
    if len(rows) != num_configs:
        raise UserInputError(
            f"--descriptors {path} has {len(rows)} rows but --configs_pt has {num_configs} configurations: "
            "it needs one row per pretraining configuration"
        )
    return rows


def model_file(name: str) -> Path:
    """--model as a file: a path, or a published name downloaded once (as --foundation_model)."""
    if name not in PUBLISHED_MODELS and not Path(name).is_file():
        raise UserInputError(f"--model {name}: no such file (published names: {', '.join(PUBLISHED_MODELS)})")
    return resolve_foundation_path(name)


def descriptor_head(model: torch.nn.Module, head: Optional[str]) -> int:
    """The head whose features describe the data: --head_pt when the model has it; another
    name falls back to the model's last head, as upstream's calculator does."""
    heads = model_heads(model)
    if head is not None and head not in heads:
        logging.warning("--head_pt %s is not a head of the model %s: using its last head, %s", head, heads, heads[-1])
        return len(heads) - 1
    return head_index(model, head)


def configurations(frames: Sequence[Atoms], indices: Sequence[int], source: str) -> List[Configuration]:
    """The frames at ``indices`` as configurations, an error naming the file and frame."""
    configs = []
    for index in indices:
        try:
            configs.append(config_from_atoms(frames[index]))
        except UserInputError as error:
            raise UserInputError(f"{source} frame {index}: {error}") from None
    return configs


def per_atom_descriptors(
    model: torch.nn.Module, configs: Sequence[Configuration], head: int, source: str
) -> List[np.ndarray]:
    """Each configuration's invariant descriptors [n_atoms, features], what the calculator's
    ``get_descriptors(invariants_only=True)`` gives; an element the model lacks names the file."""
    try:
        return invariant_descriptors(model, configs, head)
    except UserInputError as error:
        raise UserInputError(f"{source} cannot be described by the --model: {error}") from None


def computed_descriptors(args: argparse.Namespace, pretraining: Sequence[Atoms], candidates: List[int]) -> np.ndarray:
    """One row per candidate: the per-element means of the model's invariant descriptors,
    over the elements of all candidates (:func:`mace.data.selection.configuration_descriptor`)."""
    configs = configurations(pretraining, candidates, args.configs_pt)
    dtype = dtype_from_name(args.default_dtype)
    torch.set_default_dtype(dtype)
    path = model_file(args.model)
    logging.info("Computing descriptors of %d configurations with %s", len(configs), path)
    model = load_model(path, device=select_device(args.device), dtype=dtype, trust_pickle=args.trust_pickle).eval()
    per_atom = per_atom_descriptors(model, configs, descriptor_head(model, args.head_pt), args.configs_pt)
    species = element_species(pretraining[i] for i in candidates)
    return np.stack([configuration_descriptor(rows, c.atomic_numbers, species) for rows, c in zip(per_atom, configs)])


def descriptor_source(args: argparse.Namespace, frames: Sequence[Atoms]) -> DescriptorSource:
    """Where farthest point sampling gets the candidates' rows: --descriptors, else the model."""
    if args.descriptors is not None:
        return lambda candidates: loaded_descriptors(args.descriptors, len(frames))[candidates]
    return lambda candidates: computed_descriptors(args, frames, candidates)


def read_all(paths: Sequence[str]) -> List[Atoms]:
    return [atoms for path in paths for atoms in read_frames(path)]


def write_outputs(paths: Sequence[Path], selected: List[Atoms], combined: List[Atoms],
                  descriptors: Optional[np.ndarray]) -> None:
    """All files at once, or none (renamed into place together once all are written)."""
    targets = list(paths) if descriptors is not None else list(paths[:2])
    with atomic_outputs(targets) as temporaries:
        ase.io.write(temporaries[0], selected, format="extxyz")
        ase.io.write(temporaries[1], combined, format="extxyz")
        if descriptors is not None:
            with open(temporaries[2], "wb") as handle:  # a file name would get ".npy" appended
                np.save(handle, np.asarray(descriptors, dtype=float), allow_pickle=False)
    for path in targets:
        logging.info("Wrote %s", path)


def select(args: argparse.Namespace) -> int:
    setup_logging("INFO", None)
    paths = output_paths(args.output)
    select_device(args.device)  # --device cuda without CUDA: refused before any file is read
    finetuning = read_all(finetuning_paths(args.configs_ft))
    elements = filtering_elements(finetuning, filter_atomic_numbers(args.filter_atomic_numbers_pt))
    pretraining = read_frames(args.configs_pt)
    mask = filter_mask(pretraining, elements, args.filtering_type)
    logging.info("%d of %d pretraining configurations pass the %s filter (elements %s)",
                 sum(mask), len(mask), args.filtering_type, elements)
    selection = select_configurations(
        mask, args.num_samples, args.subselect, not args.disallow_random_padding,
        np.random.default_rng(args.seed), descriptor_source(args, pretraining),
    )
    selected = [pretraining[i] for i in selection.indices]
    tag_frames(selected, pretrained=True, weight=args.weight_pt, head=args.head_pt)
    tag_frames(finetuning, pretrained=False, weight=args.weight_ft, head=args.head_ft)
    computed = selection.descriptors if args.descriptors is None else None
    write_outputs(paths, selected, selected + finetuning, computed)
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    sys.exit(run_cli(lambda: select(build_parser().parse_args(argv))))


if __name__ == "__main__":
    main()
