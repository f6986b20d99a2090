"""Command-line interface of ``python -m mace.cli.run_train``.

The flag names, defaults and choices are those of upstream MACE 0.3.5, plus the flags of
0.3.16 that its basic training tests pass (``--dry_run``, ``--use_reduced_cg``, the
multi-head fine-tuning flags, ...), so that existing training commands run unchanged.
Flags for features this fork does not implement are still *accepted by the parser* (so
that a user gets a message that says what is missing rather than "unrecognized
argument"), then rejected by :func:`parse_args` with a clear error. On top of upstream's
flags come the fine-tuning adapter flags (``--adapter`` and the settings of each method),
built from the adapter registry (``mace.adapters.registry``) and resolved with the
reference implementation's environment knobs by ``mace.adapters.settings``; upstream
0.3.16's ``--lora`` switch is another way to say ``--adapter lora``.

Public API: :func:`build_parser`, :func:`parse_args`, :func:`adapter_choice`, :func:`adapter_settings`,
:class:`UserInputError` (re-exported from ``mace.core.errors``);
:func:`defining_settings` and :data:`RESTART_MAY_CHANGE` (what a restart must keep);
the steps of :func:`parse_args` (:func:`config_file_defaults`,
:func:`apply_channel_override`, :func:`resolve_start_swa`);
the flag types :func:`str2bool`, :func:`float_or_none`; :func:`hidden_irreps_from_channels`;
and readers of the string-encoded flags: :func:`parse_radial_mlp`,
:func:`parse_atomic_numbers`, :func:`parse_config_type_weights`, :func:`parse_e0s`.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from e3nn import o3

from mace.adapters.registry import METHODS
from mace.adapters.settings import AdapterSettings, adapter_knobs, resolve_adapter_settings
from mace.core.errors import UserInputError  # shared with data and model loading
from mace.modules.heads import PRETRAINING_HEAD

# Label keys of models this fork does not have: only their upstream defaults are accepted.
UNUSED_KEYS = {"dipole_key": "dipole", "charges_key": "charges"}
SUPPORTED_SCHEDULERS = ("ReduceLROnPlateau", "ExponentialLR")
LORA_METHOD = "lora"  # the adapter method upstream's --lora switch selects
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_TRUE_WORDS = ("true", "t", "yes", "y", "1", "on")
_FALSE_WORDS = ("false", "f", "no", "n", "0", "off")


# --------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------


def str2bool(value: Union[str, bool]) -> bool:
    """Read a yes/no word, because upstream takes booleans as values (``--pin_memory False``)."""
    if isinstance(value, bool):
        return value
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def float_or_none(value: str) -> Optional[float]:
    """Read a float, or ``None`` to switch a feature off (e.g. ``--clip_grad None``)."""
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or None, got {value!r}") from exc


# Upstream (0.3.16) flags of multi-head replay fine-tuning that this fork does not have:
# flag -> (type, default, choices). Only their defaults are accepted.
MULTIHEAD_REPLAY_FLAGS: Dict[str, Tuple[Any, Any, Optional[List[str]]]] = {
    "pseudolabel_replay": (str2bool, False, None),
    "pseudolabel_replay_compute_stress": (str2bool, False, None),
    "head_key": (str, "head", None),
    "foundation_filter_elements": (str2bool, True, None),
    "foundation_model_kwargs": (str, "{}", None),
}

# Upstream's replay sets, which its run_train downloads by these names: not fetched here.
PUBLISHED_REPLAY_SETS = ("mp", "omat", "matpes_pbe", "matpes_r2scan")
# Settings upstream applies only when it selects frames of a downloaded replay set.
REPLAY_SELECTION_FLAGS = {"num_samples_pt": 10000, "subselect_pt": "random", "filter_type_pt": "none"}


def _literal(text: str, flag: str) -> Any:
    """Evaluate a Python literal, naming the flag when it is malformed."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise UserInputError(f"{flag}: {text!r} is not a valid Python literal") from exc


def parse_radial_mlp(text: str) -> List[int]:
    """Hidden-layer widths of the radial MLP, from a list literal such as ``[64, 64, 64]``."""
    widths = _literal(text, "--radial_MLP")
    if not isinstance(widths, (list, tuple)) or not widths:
        raise UserInputError(f"--radial_MLP: expected a non-empty list of widths, got {text!r}")
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise UserInputError(f"--radial_MLP: widths must be positive integers, got {text!r}")
    return list(widths)


def parse_atomic_numbers(text: Optional[str]) -> Optional[List[int]]:
    """Elements the model knows, from a list literal; ``None`` means 'take them from the data'."""
    if text is None:
        return None
    numbers = _literal(text, "--atomic_numbers")
    if not isinstance(numbers, (list, tuple)) or not numbers:
        raise UserInputError(f"--atomic_numbers: expected a non-empty list, got {text!r}")
    if not all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118 for z in numbers):
        raise UserInputError(
            f"--atomic_numbers: entries must be atomic numbers between 1 and 118, got {text!r}"
        )
    return sorted(set(numbers))


def _number_mapping(raw: Mapping[Any, Any], key: Callable[[Any], Any], message: str) -> Dict[Any, float]:
    """``{key(k): float(v)}``; ``message`` is the error when a key or value does not convert."""
    try:
        return {key(k): float(value) for k, value in raw.items()}
    except (TypeError, ValueError) as exc:
        raise UserInputError(message) from exc


DEFAULT_LR_PARAMS_FACTORS = (
    '{"embedding_lr_factor": 1.0, "interactions_lr_factor": 1.0, "products_lr_factor": 1.0, "readouts_lr_factor": 1.0}'
)
LR_PARAMS_FACTOR_KEYS = ("embedding_lr_factor", "interactions_lr_factor", "products_lr_factor", "readouts_lr_factor")


def parse_lr_params_factors(text: str) -> Dict[str, float]:
    """Upstream's --lr_params_factors: a JSON dict of block learning-rate factors."""
    try:
        factors = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserInputError(f"--lr_params_factors: not a JSON dict ({error.msg}): {text!r}") from None
    if not isinstance(factors, dict):
        raise UserInputError(f"--lr_params_factors: expected a JSON dict, got {text!r}")
    unknown = sorted(set(factors) - set(LR_PARAMS_FACTOR_KEYS))
    if unknown:
        raise UserInputError(f"--lr_params_factors: unknown key(s) {unknown}; the keys are {list(LR_PARAMS_FACTOR_KEYS)}")
    parsed = _number_mapping(factors, str, f"--lr_params_factors: factors must be numbers, got {text!r}")
    if not all(math.isfinite(value) and value >= 0 for value in parsed.values()):
        raise UserInputError(f"--lr_params_factors: factors must be finite and non-negative, got {text!r}")
    return parsed


def parse_config_type_weights(text: str) -> Dict[str, float]:
    """Loss weight per ``config_type`` label, from a dict literal such as ``{"Default": 1.0}``."""
    weights = _literal(text, "--config_type_weights")
    if not isinstance(weights, dict):
        raise UserInputError(f"--config_type_weights: expected a dict literal, got {text!r}")
    parsed = _number_mapping(weights, str, f"--config_type_weights: weights must be numbers, got {text!r}")
    if not all(math.isfinite(weight) and weight >= 0 for weight in parsed.values()):
        raise UserInputError(f"--config_type_weights: weights must be finite and non-negative, got {text!r}")
    return parsed


# What a head of --heads may set (upstream's names): its data files and how they are read,
# and its E0s; every other setting is the run's.
HEAD_DATA_KEYS = (
    "train_file", "valid_file", "test_file", "test_dir", "valid_fraction", "energy_key", "forces_key",
    "stress_key", "virials_key", "config_type_weights", "keep_isolated_atoms",
)
HEAD_KEYS = HEAD_DATA_KEYS + ("E0s",)


def parse_heads(text: Optional[str]) -> Optional[Dict[str, Dict[str, Any]]]:
    """--heads: {head name: {setting: value}} (a dict literal, or a ``heads:`` mapping of a
    --config file), in the order the model's heads take; None without heads."""
    if text is None:
        return None
    heads = _literal(text, "--heads")
    if not isinstance(heads, dict) or not heads:
        raise UserInputError(f"--heads: expected a non-empty dict of head name -> settings, got {text!r}")
    for name, settings in heads.items():
        if not isinstance(name, str) or not name:
            raise UserInputError(f"--heads: head names must be non-empty strings, got {name!r}")
        if not isinstance(settings, dict):
            raise UserInputError(f"--heads: the settings of head '{name}' must be a dict, got {settings!r}")
        unknown = sorted(set(settings) - set(HEAD_KEYS))
        if unknown:
            raise UserInputError(
                f"--heads: head '{name}' sets {', '.join(unknown)}, which a head cannot set here "
                f"(a head sets {', '.join(HEAD_KEYS)}; the rest is the run's)"
            )
        if "config_type_weights" in settings:
            parse_config_type_weights(str(settings["config_type_weights"]))
        if "E0s" in settings:
            parse_e0s(str(settings["E0s"]))
    return heads


# Upstream builds --model=MACE with RealAgnosticInteractionBlock first whatever
# --interaction_first says, and ScaleShiftMACE with --interaction_first (default residual).
# Here an explicit --interaction_first wins for both.
DEFAULT_FIRST_INTERACTION = {
    "MACE": "RealAgnosticInteractionBlock",
    "ScaleShiftMACE": "RealAgnosticResidualInteractionBlock",
}
# Interaction blocks of upstream 0.3.16's newer foundation models, choices of both
# --interaction and --interaction_first.
NEWER_INTERACTIONS = (
    "RealAgnosticDensityInteractionBlock",
    "RealAgnosticDensityResidualInteractionBlock",
    "RealAgnosticResidualNonLinearInteractionBlock",
)
E0_KEYWORDS = ("average", "estimated", "foundation")
FOUNDATION_E0_KEYWORDS = ("estimated", "foundation")


def _e0s_dict(raw: Mapping[Any, Any], origin: str) -> Dict[int, float]:
    """Normalise an E0 mapping (JSON keys arrive as strings) to ``{Z: energy}``."""
    e0s = _number_mapping(raw, int, f"--E0s: {origin} must map atomic numbers to energies in eV")
    if not all(math.isfinite(energy) for energy in e0s.values()):
        raise UserInputError(f"--E0s: {origin} holds an energy that is NaN or inf")
    return e0s


def parse_e0s(text: Optional[str]) -> Union[None, str, Dict[int, float]]:
    """Isolated-atom energies: ``None``, a keyword of :data:`E0_KEYWORDS`, a dict literal, or a JSON file of one."""
    if text is None:
        return None
    keyword = parse_e0s_keyword(text)
    if keyword is not None:
        return keyword
    stripped = text.strip()
    if stripped.startswith("{"):
        raw = _literal(stripped, "--E0s")
        if not isinstance(raw, dict):
            raise UserInputError(f"--E0s: expected a dict literal, got {text!r}")
        return _e0s_dict(raw, "the dict literal")
    path = Path(stripped)
    if not path.is_file():
        raise UserInputError(
            f"--E0s: {text!r} is neither one of {', '.join(E0_KEYWORDS)}, a dict literal like "
            "'{1: -13.6, 8: -2041.0}', nor an existing JSON file"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserInputError(f"--E0s: file {path} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise UserInputError(f"--E0s: file {path} must hold a JSON object")
    return _e0s_dict(raw, f"file {path}")


def parse_e0s_keyword(text: Optional[str]) -> Optional[str]:
    """The E0 keyword ``text`` names, or None for no flag, a dict or a file."""
    return None if text is None or text.strip().lower() not in E0_KEYWORDS else text.strip().lower()


def hidden_irreps_from_channels(num_channels: int, max_L: int) -> str:
    """Node-feature irreps with ``num_channels`` copies of each l <= max_L, parity (-1)^l."""
    blocks = [f"{num_channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1)]
    return " + ".join(blocks)


# --------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------


# Stage-two warm-up after an optimiser reset: fresh Adam moments make the first steps as
# large as the rate in every parameter; measured on the cpu100 validation sets (benchmarks/README.md).
RESET_WARMUP_EPOCHS = 4

OUR_SWA_FLAGS = ("--swa_lr_schedule", "--swa_warmup_epochs")  # not upstream's: no --stage_two* alias


def _stage_two_alias(flag: str) -> List[str]:
    """Upstream 0.3.16's second name of a --swa* flag (--stage_two, --start_stage_two,
    --stage_two_lr, --stage_two_forces_weight, ...); the value lands under the --swa* name."""
    if flag == "--start_swa":
        return ["--start_stage_two"]
    if flag.startswith("--swa") and flag not in OUR_SWA_FLAGS:
        return ["--stage_two" + flag[len("--swa"):]]
    return []


def _value(group: Any, flag: str, kind: Any, default: Any, text: str, **extra: Any) -> None:
    """Add a flag that takes one value (the common case), keeping definitions one per line."""
    group.add_argument(flag, *_stage_two_alias(flag), type=kind, default=default, help=text, **extra)


def _switch(
    group: Any, flag: str, default: bool, text: str, given: Optional[bool] = None
) -> None:
    """Add a flag without value; giving it sets ``given`` (by default: ``not default``)."""
    given = (not default) if given is None else given
    action = "store_true" if given else "store_false"
    group.add_argument(flag, *_stage_two_alias(flag), action=action, default=default, help=text)


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Naming, output folders, device and precision of a run."""
    g = parser.add_argument_group("run")
    _value(g, "--config", str, None,
           "YAML or JSON file mapping flag names (without dashes) to values; they replace the "
           "built-in defaults and flags on the command line still win. A switch takes the value "
           "the option should end with, e.g. 'ema: true'.")
    _value(g, "--name", str, None,
           "Experiment name; it names the log, checkpoint, result and model files (required).")
    _value(g, "--seed", int, 123, "Random seed for splits, initialisation and shuffling.")
    _value(g, "--log_dir", str, "logs", "Folder for the text log.")
    _value(g, "--model_dir", str, ".", "Folder where the final NAME.model is written.")
    _value(g, "--checkpoints_dir", str, "checkpoints", "Folder for training checkpoints.")
    _value(g, "--results_dir", str, "results", "Folder for the JSON lines of metrics.")
    _value(g, "--downloads_dir", str, "downloads",
           "Folder for the published foundation models a run downloads, when given; without it "
           "they go to the cache ($MACE_CACHE, else ~/.cache/mace).")
    _value(g, "--device", str, "cpu",
           "Where to train; 'cuda' needs a CUDA build of torch and a visible GPU "
           "('mps' is not supported).", choices=["cpu", "cuda", "mps"])
    _value(g, "--default_dtype", str, "float64", "Floating-point precision of model and data.",
           choices=["float32", "float64"])
    _switch(g, "--distributed", False,
            "Data-parallel training over several processes (one per GPU, or CPU processes with "
            "gloo), started by the --launcher; see README, 'Training on several GPUs'.")
    _value(g, "--launcher", str, "slurm",
           "With --distributed: what started the processes, and so where each reads its rank: "
           "'torchrun' (RANK, WORLD_SIZE, LOCAL_RANK), 'slurm' (srun: SLURM_PROCID, "
           "SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST), 'mpi' (OMPI_COMM_WORLD_*).",
           choices=["slurm", "torchrun", "mpi", "none"])
    _value(g, "--log_level", str, "INFO", "Logging verbosity: DEBUG, INFO, WARNING or ERROR.")
    _switch(g, "--dry_run", False,
            "Check the flags, read the data and build the model (logged), then stop before "
            "training: no model, checkpoint or results are written.")
    _value(g, "--error_table", str, "PerAtomRMSE",
           "Which errors the final table reports (the dipole tables are not supported).",
           choices=["PerAtomRMSE", "TotalRMSE", "PerAtomRMSEstressvirials", "PerAtomMAE",
                    "TotalMAE", "DipoleRMSE", "DipoleMAE", "EnergyDipoleRMSE"])


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Architecture of a model trained from scratch (a foundation model brings its own)."""
    g = parser.add_argument_group("model")
    _value(g, "--model", str, "MACE", "Model family; this fork implements MACE and ScaleShiftMACE.",
           choices=["BOTNet", "MACE", "ScaleShiftMACE", "ScaleShiftBOTNet",
                    "AtomicDipolesMACE", "EnergyDipolesMACE"])
    _value(g, "--r_max", float, 5.0, "Neighbour cutoff radius in Angstrom.")
    _value(g, "--radial_type", str, "bessel",
           "Radial basis of the edge lengths: sine Bessel functions, Gaussians, or Chebyshev "
           "polynomials of the length.",
           choices=["bessel", "gaussian", "chebyshev"])
    _value(g, "--num_radial_basis", int, 8, "Number of radial basis functions.")
    _value(g, "--num_cutoff_basis", int, 5,
           "Order p of the polynomial envelope that takes edges smoothly to zero at r_max.")
    _switch(g, "--pair_repulsion", False,
            "Add the ZBL screened nuclear repulsion between neighbours (cut off at the pair's "
            "covalent radii) to the energy.")
    _value(g, "--distance_transform", str, "None",
           "Element-aware rescaling of edge lengths before the radial basis: Agnesi (onto (0, 1], "
           "scaled by the pair's covalent radii) or Soft (short lengths clamped smoothly).",
           choices=["None", "Agnesi", "Soft"])
    _value(g, "--apply_cutoff", str2bool, True,
           "Multiply the radial features by the cutoff envelope (true/false); false applies it "
           "to the radial-MLP outputs instead.")
    _value(g, "--use_last_readout_only", str2bool, False,
           "Read the energy out of the last layer only, not out of every layer (true/false).")
    _value(g, "--use_embedding_readout", str2bool, False,
           "Upstream's energy readout of its charge/spin embeddings (true/false); this fork has "
           "no such embeddings, so, as upstream without them, it changes nothing.")
    _value(g, "--interaction", str, "RealAgnosticResidualInteractionBlock",
           "Interaction block of the layers after the first.",
           choices=["RealAgnosticResidualInteractionBlock",
                    "RealAgnosticAttResidualInteractionBlock", "RealAgnosticInteractionBlock",
                    *NEWER_INTERACTIONS])
    _value(g, "--interaction_first", str, None,
           "Interaction block of the first layer; default: RealAgnosticInteractionBlock for "
           "--model MACE (the block upstream always builds there), "
           "RealAgnosticResidualInteractionBlock for ScaleShiftMACE. Given, it wins for both.",
           choices=["RealAgnosticResidualInteractionBlock", "RealAgnosticInteractionBlock",
                    *NEWER_INTERACTIONS])
    _value(g, "--max_ell", int, 3, "Highest l of the edge spherical harmonics.")
    _value(g, "--correlation", int, 3, "Body order of the symmetric product basis.")
    _value(g, "--use_reduced_cg", str2bool, False,
           "Upstream's reduced (cuequivariance) coupling basis of the symmetric contraction "
           "(true/false). Only false is accepted: that basis has other, fewer weights, so a "
           "model trained with it is not the one this fork trains.")
    _value(g, "--enable_cueq", str2bool, False,
           "Run the model with cuequivariance kernels (true/false); not part of this fork, "
           "only false is accepted.")
    _value(g, "--num_interactions", int, 2, "Number of message-passing layers.")
    _value(g, "--MLP_irreps", str, "16x0e", "Hidden irreps of the last layer's non-linear readout.")
    _value(g, "--radial_MLP", str, "[64, 64, 64]",
           "Hidden widths of the MLP that maps radial features to weights, as a list literal.")
    _value(g, "--hidden_irreps", str, "128x0e + 128x1o",
           "Irreps of the node features; rebuilt when --num_channels or --max_L is given.")
    _value(g, "--num_channels", int, None,
           "Channels per irrep of the node features (overrides --hidden_irreps).")
    _value(g, "--max_L", int, None,
           "Highest l of the node features, parity (-1)^l (overrides --hidden_irreps).")
    _value(g, "--gate", str, "silu", "Non-linearity of the readout MLP.",
           choices=["silu", "tanh", "abs", "None"])
    _value(g, "--scaling", str, "rms_forces_scaling",
           "How ScaleShiftMACE chooses the scale of its atomic energies.",
           choices=["std_scaling", "rms_forces_scaling", "no_scaling"])
    _value(g, "--avg_num_neighbors", float, 1,
           "Normaliser of the neighbour sum when it is not measured on the data.")
    _value(g, "--compute_avg_num_neighbors", str2bool, True,
           "Measure the average neighbour count on the training set (true/false).")
    _value(g, "--compute_stress", str2bool, False,
           "Also predict stress and virials at every evaluation, adding their errors to the "
           "metrics (on anyway when the loss or --error_table needs them; true/false).")
    _value(g, "--compute_forces", str2bool, True,
           "Predict forces (true/false); every loss here trains on forces, so only true is accepted.")


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Data files, splitting, statistics and the keys under which labels are stored."""
    g = parser.add_argument_group("data")
    _value(g, "--train_file", str, None,
           "Training configurations (required): extxyz, or preprocessed HDF5 (an .h5 file or a "
           "folder of them, read on access; see python -m mace.cli.preprocess_data).")
    _value(g, "--valid_file", str, None,
           "Validation configurations; without it --valid_fraction of the training file is used.")
    _value(g, "--valid_fraction", float, 0.1,
           "Share of the training file held out for validation when --valid_file is absent.")
    _value(g, "--test_file", str, None, "Test configurations (extxyz or HDF5), evaluated after training.")
    _value(g, "--test_dir", str, None, "Folder of test files, each evaluated after training.")
    _value(g, "--multi_processed_test", str2bool, False,
           "Load test sets with worker processes (not supported here).")
    _value(g, "--num_workers", int, 0, "Processes that collate training batches (0: this process).")
    _value(g, "--pin_memory", str2bool, True,
           "Page-lock training batches for faster copies to the GPU; with --device cpu it does nothing (true/false).")
    _value(g, "--atomic_numbers", str, None,
           "Elements the model covers, as a list literal like '[1, 6, 8]'; default: the data's.")
    _value(g, "--mean", float, None, "Energy shift of ScaleShiftMACE; default: from the data.")
    _value(g, "--std", float, None, "Energy scale of ScaleShiftMACE; default: from the data.")
    _value(g, "--statistics_file", str, None,
           "statistics.json of preprocess_data (ours or upstream's): its E0s, average neighbour "
           "count, mean and std (shift and scale) and elements replace --E0s, "
           "--avg_num_neighbors, --mean, --std and --atomic_numbers.")
    _value(g, "--heads", str, None,
           "Several readout heads, each trained on its own data: a dict literal (or a heads: "
           "mapping in --config) of head name -> {train_file, valid_file, test_file, test_dir, "
           "valid_fraction, energy_key, forces_key, stress_key, virials_key, config_type_weights, "
           "keep_isolated_atoms, E0s}; what a head leaves out is the run's flag. The last head "
           "chooses the checkpoints, as upstream.")
    _value(g, "--E0s", str, None,
           "Isolated-atom energies: 'average' (least squares over the training energies), "
           "'estimated' (fine-tuning: least squares over what the foundation leaves unexplained), "
           "'foundation' (fine-tuning: keep the foundation's), a dict literal such as "
           "'{1: -13.6, 8: -2041.0}', or a JSON file holding such a mapping.")
    _value(g, "--keep_isolated_atoms", str2bool, False,
           "Also train on single-atom configurations instead of using them only for E0s.")
    _value(g, "--energy_key", str, "energy", "Info key of the reference energy.")
    _value(g, "--forces_key", str, "forces", "Array key of the reference forces.")
    _value(g, "--virials_key", str, "virials", "Info key of the reference virials.")
    _value(g, "--stress_key", str, "stress", "Info key of the reference stress.")
    _value(g, "--dipole_key", str, UNUSED_KEYS["dipole_key"],
           "Info key of the reference dipole (dipole models are not supported: only the default is accepted).")
    _value(g, "--charges_key", str, UNUSED_KEYS["charges_key"],
           "Array key of the atomic charges (charge models are not supported: only the default is accepted).")


def _add_loss_flags(parser: argparse.ArgumentParser) -> None:
    """Loss function and the weight of each term, before and during SWA."""
    g = parser.add_argument_group("loss")
    _value(g, "--loss", str, "weighted",
           "Training loss ('universal': Huber terms as upstream's multi-head fine-tuning); the dipole losses are not supported.",
           choices=["ef", "weighted", "forces_only", "virials", "stress", "dipole", "huber",
                    "universal", "energy_forces_dipole"])
    weights = [("forces", 100.0, 100.0), ("energy", 1.0, 1000.0), ("virials", 1.0, 10.0),
               ("stress", 1.0, 10.0), ("dipole", 1.0, 1.0)]
    for term, weight, swa_weight in weights:
        _value(g, f"--{term}_weight", float, weight, f"Weight of the {term} term.")
        _value(g, f"--swa_{term}_weight", float, swa_weight,
               f"Weight of the {term} term once SWA has started.")
    _value(g, "--config_type_weights", str, '{"Default":1.0}',
           "Extra loss weight per config_type label, as a dict literal.")
    _value(g, "--huber_delta", float, 0.01, "Transition point of the Huber loss.")


def _add_optimizer_flags(parser: argparse.ArgumentParser) -> None:
    """Optimiser, learning-rate schedule, SWA, EMA and checkpointing."""
    g = parser.add_argument_group("optimisation")
    _value(g, "--optimizer", str, "adam", "Optimiser.", choices=["adam", "adamw"])
    _value(g, "--batch_size", int, 10, "Training batch size.")
    _value(g, "--valid_batch_size", int, 10, "Evaluation batch size.")
    _value(g, "--lr", float, 0.01, "Learning rate.")
    _value(g, "--swa_lr", float, 0.001, "Learning rate once SWA has started.")
    _value(g, "--adapter_lr_factor", float, 1.0,
           "Fine-tuning: the adapters' own parameters (MMEA gates, low-rank factors) train at "
           "this multiple of --lr (and of --swa_lr); 1 is the reference codes' choice.")
    _value(g, "--low_rank_b_lr_factor", float, 1.0,
           "Fine-tuning: the low-rank updates' zero-initialised factors (lora_B of ELoRA, MMEA "
           "and LoRA) train at this further multiple of the adapters' rate (LoRA+); 1 is the "
           "reference codes' choice.")
    _value(g, "--swa_reset_optimizer", str2bool, None,
           "Start the SWA stage with fresh Adam moment estimates. When stage two weighs forces "
           "less (--swa_forces_weight below --forces_weight, e.g. 1000 -> 100), its gradients "
           "are that much smaller, and the main stage's squared-gradient averages (AMSGrad "
           "keeps their maximum) would shrink every stage-two step by as much. Default: on when "
           "fine-tuning a --foundation_model with a falling force weight (with every adapter "
           "method and with none, each measured on validation), else off (upstream's "
           "behaviour).")
    _value(g, "--swa_lr_schedule", str, "constant",
           "Learning rate over the SWA stage: 'constant' (--swa_lr throughout, as upstream) or "
           "'cosine' (from --swa_lr down to zero at the last epoch, half a cosine).",
           choices=["constant", "cosine"])
    _value(g, "--swa_warmup_epochs", int, None,
           "The SWA stage's first N epochs train at a linearly rising share of its rate "
           "(1/(N+1), 2/(N+1), ...); 0: the full rate at once, as upstream. Default: "
           f"{RESET_WARMUP_EPOCHS} when the stage starts with a fresh optimiser "
           "(--swa_reset_optimizer), else 0.")
    _value(g, "--weight_decay", float, 5e-07, "L2 penalty on the decayed weights.")
    _value(g, "--lr_params_factors", str, DEFAULT_LR_PARAMS_FACTORS,
           "Learning-rate factor of each block, as a JSON dict (upstream's keys: "
           "embedding_lr_factor, interactions_lr_factor, products_lr_factor, readouts_lr_factor); "
           "the SWA stage trains every block at --swa_lr, as upstream.")
    _value(g, "--freeze", int, None,
           "Stop blocks from training, as upstream: 1 or more freezes the node embedding, 5 or "
           "more also the interactions, 6 the products, 7 the readouts (with their adapters); "
           "0, negative or unset: nothing.")
    # Upstream quirk kept for compatibility: on by default, and giving it keeps it on.
    _switch(g, "--amsgrad", True, "Use the AMSGrad variant of Adam (always on, as upstream).",
            given=True)
    _value(g, "--beta", float, 0.9, "Adam's first-moment decay (beta1; beta2 stays 0.999, as upstream).")
    _value(g, "--scheduler", str, "ReduceLROnPlateau",
           "Learning-rate schedule: ReduceLROnPlateau or ExponentialLR.")
    _value(g, "--lr_factor", float, 0.8, "Factor by which ReduceLROnPlateau lowers the rate.")
    _value(g, "--scheduler_patience", int, 50,
           "Evaluations without improvement before ReduceLROnPlateau lowers the rate.")
    _value(g, "--lr_scheduler_gamma", float, 0.9993, "Per-epoch decay factor of ExponentialLR.")
    _switch(g, "--swa", False,
            "Switch to stochastic weight averaging and the swa_* loss weights at --start_swa.")
    _value(g, "--start_swa", int, None,
           "Epoch at which SWA starts; default: three quarters of --max_num_epochs.")
    _switch(g, "--ema", False, "Evaluate and save an exponential moving average of the weights.")
    _value(g, "--ema_decay", float, 0.99, "Decay of the moving average, in (0, 1).")
    _value(g, "--max_num_epochs", int, 2048, "Number of training epochs.")
    _value(g, "--patience", int, 2048,
           "Stop after this many evaluations without a better validation loss.")
    _value(g, "--eval_interval", int, 2, "Evaluate on the validation set every N epochs.")
    _switch(g, "--keep_checkpoints", False, "Keep older checkpoints instead of only the newest.")
    _switch(g, "--save_all_checkpoints", False,
            "Write a checkpoint at every evaluation, not only on improvement.")
    _switch(g, "--restart_latest", False,
            "Resume from the newest checkpoint of this name and seed.")
    _switch(g, "--save_cpu", False, "Move the final model to the CPU before saving it.")
    _value(g, "--clip_grad", float_or_none, 10.0,
           "Clip the gradient norm to this value; 'None' disables clipping.")
    _switch(g, "--lbfgs", False, "Train with L-BFGS (not supported here: Adam or AdamW).")


def _add_finetuning_flags(parser: argparse.ArgumentParser) -> None:
    """Foundation model and the parameter-efficient adapter that fine-tunes it."""
    g = parser.add_argument_group("fine-tuning")
    _value(g, "--foundation_model", str, None,
           "MACE model file to fine-tune, or a published name (read safely; see --trust_pickle).")
    _switch(g, "--foundation_model_readout", True,
            "Given: do NOT reuse the foundation model's readout weights.")
    _switch(g, "--trust_pickle", False,
            "Unpickle --foundation_model without the safe loader's restrictions, so it can run any "
            "code it names: only for a file you trust (README, 'What is safe to load').")
    _value(g, "--foundation_head", str, None,
           "Head of a multi-head foundation model to fine-tune (it is cut out as a one-head "
           "model); default, as upstream: the first head that is not 'pt_head'.")
    _value(g, "--keep_foundation_head", str2bool, False,
           "Fine-tuning: NAME.model (and NAME_compiled.model) also carry the unchanged foundation "
           "as head 'foundation' beside the fine-tuned head (true/false): it predicts exactly what "
           "the foundation predicts, so nothing is forgotten. The files are then twice the size.")
    _value(g, "--foundation_model_elements", str2bool, False,
           "Keep every element of the foundation model (true/false), as upstream; default: the "
           "foundation is restricted to the data's elements, or to --atomic_numbers. Elements "
           "without data keep the foundation's E0s (upstream sets them to 0).")
    _value(g, "--multiheads_finetuning", str2bool, False,
           "Upstream's multi-head replay fine-tuning (true/false; upstream 0.3.16 defaults to "
           "true, this fork to false, see --keep_foundation_head): the model gets a second "
           "head 'pt_head' that trains on --pt_train_file while head 'Default' trains on "
           "--train_file, so the shared layers keep fitting the pretraining data. As upstream "
           "it sets --loss universal and, unless --force_mh_ft_lr, --lr 0.0001 --ema "
           "--ema_decay 0.99999.")
    _value(g, "--pt_train_file", str, None,
           "Replay fine-tuning: the pretraining configurations (extxyz, or preprocessed HDF5), "
           "read with the same keys as --train_file. Make a subset with "
           "python -m mace.cli.fine_tuning_select. Upstream's downloaded sets "
           f"({', '.join(PUBLISHED_REPLAY_SETS)}) are not fetched: give a file.")
    _value(g, "--pt_valid_file", str, None,
           "Replay fine-tuning: validation configurations of the pretraining head (default: "
           "--valid_fraction of --pt_train_file).")
    _value(g, "--weight_pt_head", float, 1.0,
           "Replay fine-tuning: factor on the label weights of the pretraining configurations.")
    _value(g, "--real_pt_data_ratio_threshold", float, 0.1,
           "Replay fine-tuning: when there are fewer fine-tuning than this fraction of the "
           "pretraining training configurations, the fine-tuning ones are repeated (as upstream).")
    _value(g, "--force_mh_ft_lr", str2bool, False,
           "Replay fine-tuning: keep --lr, --ema and --ema_decay as given (true/false).")
    _value(g, "--skip_evaluate_heads", str, "pt_head",
           "Replay fine-tuning: comma-separated heads left out of the final error tables.")
    _value(g, "--num_samples_pt", int, 10000,
           "Upstream: how many frames of a downloaded replay set to select; no effect on a "
           "--pt_train_file (as upstream): select with python -m mace.cli.fine_tuning_select.")
    _value(g, "--subselect_pt", str, "random",
           "Upstream: how frames of a downloaded replay set are selected; no effect here (see --num_samples_pt).",
           choices=["fps", "random"])
    _value(g, "--filter_type_pt", str, "none",
           "Upstream: element filter of a downloaded replay set; no effect here (see --num_samples_pt).",
           choices=["none", "combinations", "inclusive", "exclusive"])
    for flag, (kind, default, choices) in MULTIHEAD_REPLAY_FLAGS.items():
        _value(g, f"--{flag}", kind, default,
               "Setting of upstream's multi-head replay fine-tuning (not supported: only the "
               "default is accepted).", choices=choices)
    methods = "; ".join(f"'{name}': {method.summary}" for name, method in METHODS.items())
    _value(g, "--adapter", str, None, f"How to fine-tune a foundation model: {methods}.",
           choices=list(METHODS))
    _value(g, "--lora", str2bool, False,
           "Upstream's LoRA switch (true/false; bare --lora is true): the same as --adapter "
           f"{LORA_METHOD}, and refused with any other --adapter.", nargs="?", const=True)
    for flag, (default, knob) in adapter_knobs().items():
        fallback = f"${knob.env}, else {default}" if knob.env else f"{default}"
        _value(g, f"--{flag}", knob.kind, None, f"{knob.help} Default: {fallback}.",
               choices=None if knob.choices is None else list(knob.choices))


def _add_wandb_flags(parser: argparse.ArgumentParser) -> None:
    """Weights & Biases logging, accepted only so that it can be refused clearly."""
    g = parser.add_argument_group("wandb (not supported)")
    _switch(g, "--wandb", False, "Log to Weights & Biases (not supported here).")
    _value(g, "--wandb_project", str, "", "W&B project (unused).")
    _value(g, "--wandb_entity", str, "", "W&B entity (unused).")
    _value(g, "--wandb_name", str, "", "W&B run name (unused).")
    _value(g, "--wandb_log_hypers", str,
           ["num_channels", "max_L", "correlation", "lr", "swa_lr", "weight_decay", "batch_size",
            "max_num_epochs", "start_swa", "energy_weight", "forces_weight"],
           "Hyper-parameters sent to W&B (unused).", nargs="+")


def build_parser() -> argparse.ArgumentParser:
    """All flags of ``run_train`` (upstream 0.3.5 names and defaults, some of 0.3.16, plus adapter flags)."""
    parser = argparse.ArgumentParser(
        prog="python -m mace.cli.run_train",
        description="Train a MACE interatomic potential, or fine-tune a foundation model "
        "with an equivariant adapter (MMEA by default).",
    )
    _add_run_flags(parser)
    _add_model_flags(parser)
    _add_data_flags(parser)
    _add_loss_flags(parser)
    _add_optimizer_flags(parser)
    _add_finetuning_flags(parser)
    _add_wandb_flags(parser)
    return parser


# --------------------------------------------------------------------------------------
# --config files
# --------------------------------------------------------------------------------------


def _read_config_file(path: str) -> Dict[str, Any]:
    """Load the {flag: value} mapping of a YAML or JSON file."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"--config: file {path} does not exist")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() == ".json":
            content = json.loads(text)
        else:
            import yaml  # only needed when a YAML config is used

            content = yaml.safe_load(text)
    except Exception as exc:  # json and yaml raise unrelated error types
        raise UserInputError(f"--config: cannot read {path}: {exc}") from exc
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UserInputError(f"--config: {path} must hold a mapping of flag names to values")
    return content


def _actions_by_dest(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Map each option's attribute name to its action (help is not a settable option)."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def _unknown_key_message(key: str, known: Sequence[str], path: str) -> str:
    """Name the bad key and, when there is one, the flag the user probably meant."""
    message = f"--config: {path} sets unknown flag {key!r}"
    close = difflib.get_close_matches(key, known, n=1)
    return message + (f" (did you mean {close[0]!r}?)" if close else "")


def _convert_one(action: argparse.Action, value: Any) -> Any:
    """Run a config value through the flag's own type, as if it had been typed."""
    text = value if isinstance(value, str) else repr(value)
    converted = action.type(text) if action.type is not None else text
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{converted!r} is not one of {list(action.choices)}")
    return converted


def _convert_config_value(action: argparse.Action, value: Any) -> Any:
    """Turn a value from the file into what the parsed attribute would hold."""
    if value is None:
        return None
    if action.nargs == 0:  # switch: the file states the final on/off value
        if not isinstance(value, bool):
            raise ValueError("a switch takes true or false")
        return value
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_convert_one(action, item) for item in items]
    return _convert_one(action, value)


def config_file_defaults(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """Read ``path`` and return {dest: value} to install as parser defaults."""
    actions = _actions_by_dest(parser)
    defaults: Dict[str, Any] = {}
    for raw_key, value in _read_config_file(path).items():
        key = str(raw_key).lstrip("-")
        if key == "config" or key not in actions:
            raise UserInputError(_unknown_key_message(key, sorted(actions), path))
        try:
            defaults[key] = _convert_config_value(actions[key], value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise UserInputError(
                f"--config: {path}: bad value {value!r} for {key!r}: {exc}"
            ) from exc
    return defaults


# --------------------------------------------------------------------------------------
# Derived values and validation
# --------------------------------------------------------------------------------------


def _irreps(text: str, flag: str) -> o3.Irreps:
    """Parse an irreps string, naming the flag when it is malformed."""
    try:
        irreps = o3.Irreps(text)
    except (ValueError, AssertionError) as exc:
        raise UserInputError(f"{flag}: {text!r} is not a valid irreps string") from exc
    if len(irreps) == 0:
        raise UserInputError(f"{flag}: irreps must not be empty")
    return irreps


def apply_channel_override(args: argparse.Namespace) -> None:
    """Rebuild ``hidden_irreps`` from ``--num_channels``/``--max_L`` when either is given.

    The missing one is read off the current ``hidden_irreps``: channels from the
    multiplicity of its first irrep, max_L from its highest l.
    """
    if args.num_channels is None and args.max_L is None:
        return
    current = _irreps(args.hidden_irreps, "--hidden_irreps")
    channels = args.num_channels if args.num_channels is not None else current[0].mul
    max_L = args.max_L if args.max_L is not None else current.lmax
    if channels <= 0:
        raise UserInputError(f"--num_channels must be positive, got {channels}")
    if max_L < 0:
        raise UserInputError(f"--max_L must be non-negative, got {max_L}")
    args.num_channels, args.max_L = channels, max_L
    args.hidden_irreps = hidden_irreps_from_channels(channels, max_L)


def _unsupported_feature_errors(args: argparse.Namespace) -> Iterator[str]:
    """Messages for upstream flags whose feature this fork does not implement."""
    if args.model not in ("MACE", "ScaleShiftMACE"):
        yield (f"--model {args.model} is not supported: this fork implements only MACE and "
               "ScaleShiftMACE (no BOTNet or dipole models)")
    if args.loss in ("dipole", "energy_forces_dipole"):
        yield f"--loss {args.loss} is not supported: this fork has no dipole models"
    if args.error_table in ("DipoleRMSE", "DipoleMAE", "EnergyDipoleRMSE"):
        yield f"--error_table {args.error_table} is not supported: this fork has no dipole models"
    if args.wandb:
        yield "--wandb is not supported: this fork does not log to Weights & Biases"
    if args.device == "mps":
        yield "--device mps is not supported: use cpu or cuda"
    for flag in ("interaction", "interaction_first"):
        if getattr(args, flag) == "RealAgnosticAttResidualInteractionBlock":
            yield (f"--{flag} RealAgnosticAttResidualInteractionBlock is not supported: this "
                   "fork implements RealAgnosticInteractionBlock, "
                   f"RealAgnosticResidualInteractionBlock and {', '.join(NEWER_INTERACTIONS)}")
    if args.multi_processed_test:
        yield "--multi_processed_test True is not supported: test sets are loaded in one process"
    if not args.compute_forces:
        yield ("--compute_forces False is not supported: every loss of this fork trains on "
               "forces, so they are always predicted")
    for flag, default in UNUSED_KEYS.items():
        if getattr(args, flag) != default:
            yield f"--{flag} {getattr(args, flag)} is not supported: this fork has no dipole or charge models"
    yield from _upstream_0316_feature_errors(args)


def _upstream_0316_feature_errors(args: argparse.Namespace) -> Iterator[str]:
    """Messages for flags of newer upstream releases (0.3.16) whose feature is missing here."""
    if args.use_reduced_cg:
        yield ("--use_reduced_cg True is not supported: upstream's reduced coupling basis "
               "(from cuequivariance) gives the symmetric contraction other, fewer weights, so "
               "the model it trains is not this fork's; use --use_reduced_cg False (the default)")
    if args.enable_cueq:
        yield ("--enable_cueq True is not supported: this fork runs its models with e3nn, "
               "without cuequivariance kernels")
    if args.lbfgs:
        yield "--lbfgs is not supported: this fork trains with adam or adamw (--optimizer)"
    yield from _replay_errors(args)
    for flag, (_, default, _) in MULTIHEAD_REPLAY_FLAGS.items():
        if getattr(args, flag) != default:
            yield (f"--{flag} is not supported: it configures upstream's multi-head fine-tuning "
                   "with replay data, which this fork does not have")


def _replay_errors(args: argparse.Namespace) -> Iterator[str]:
    """What multi-head replay fine-tuning cannot start without."""
    if args.pt_train_file in PUBLISHED_REPLAY_SETS:
        yield (f"--pt_train_file {args.pt_train_file}: upstream downloads this replay set; this fork "
               "does not fetch it: download it, select frames with python -m mace.cli.fine_tuning_select "
               "and give the file")
    if not args.multiheads_finetuning or not args.foundation_model or not args.pt_train_file:
        return
    if args.E0s is not None and args.E0s.strip().lower() == "average":
        yield ("--E0s average cannot be used with --multiheads_finetuning (as upstream): use "
               "--E0s estimated, foundation, or a dict")
    if args.keep_foundation_head:
        yield ("--keep_foundation_head and --multiheads_finetuning both add a head for the "
               "foundation: choose one")


def _heads_errors(args: argparse.Namespace) -> None:
    """--heads: readable, every head with training data, and no head named like the replay head."""
    heads = parse_heads(args.heads)
    if heads is None:
        return
    for name, settings in heads.items():
        if not settings.get("train_file", args.train_file):
            raise UserInputError(f"--heads: head '{name}' has no train_file (and there is no --train_file)")
    if args.multiheads_finetuning and PRETRAINING_HEAD in heads:
        raise UserInputError(f"--heads: '{PRETRAINING_HEAD}' is the replay head of --multiheads_finetuning; rename the head")


def _required_errors(args: argparse.Namespace) -> Iterator[str]:
    """Flags a training run cannot do without."""
    if not args.name:
        yield "--name is required: it names the log, checkpoint, result and model files"
    if not args.train_file and args.heads is None:
        yield "--train_file is required: give the extxyz file of training configurations"


@dataclass(frozen=True)
class _Range:
    """The values a numeric flag accepts: ``holds`` (False for NaN, which fails every
    comparison) and how the message words it. Infinity is refused for every flag."""

    holds: Callable[[float], bool]
    words: str


_POSITIVE = _Range(lambda value: value > 0, "a finite positive number")
_NON_NEGATIVE = _Range(lambda value: value >= 0, "a finite non-negative number")
_ANY_FINITE = _Range(lambda value: value == value, "a finite number")
_OPEN_UNIT = _Range(lambda value: 0 < value < 1, "strictly between 0 and 1")
_UNIT_FROM_ZERO = _Range(lambda value: 0 <= value < 1, "at least 0 and under 1")
_SEED = _Range(lambda value: 0 <= value < 2**32, "between 0 and 2**32 - 1 (numpy's seed range)")
# Below 0.5 A an atom has no neighbour in any real structure (the shortest bond, H2's, is
# 0.74 A): the model would see no edges and learn nothing but per-element energies.
_CUTOFF = _Range(lambda value: value >= 0.5, "at least 0.5 (Angstrom): no chemical bond is shorter")

_FLAG_RANGES: Dict[str, _Range] = {
    **dict.fromkeys(
        ("batch_size", "valid_batch_size", "max_num_epochs", "eval_interval", "patience",
         "num_radial_basis", "num_cutoff_basis", "num_interactions", "correlation",
         "lr", "swa_lr", "adapter_lr_factor", "low_rank_b_lr_factor", "lr_scheduler_gamma", "clip_grad", "huber_delta",
         "avg_num_neighbors", "std"),
        _POSITIVE),
    **dict.fromkeys(
        ("max_ell", "start_swa", "swa_warmup_epochs", "num_workers", "scheduler_patience", "weight_decay",
         *(f"{prefix}{term}_weight" for prefix in ("", "swa_")
           for term in ("energy", "forces", "stress", "virials", "dipole"))),
        _NON_NEGATIVE),
    **dict.fromkeys(("valid_fraction", "ema_decay", "lr_factor"), _OPEN_UNIT),
    "beta": _UNIT_FROM_ZERO,
    "mean": _ANY_FINITE,
    "seed": _SEED,
    "r_max": _CUTOFF,
}


def _is_finite(value: float) -> bool:
    """Python ints are always finite (and may be too large for a float)."""
    return isinstance(value, int) or math.isfinite(value)


def _range_errors(args: argparse.Namespace) -> Iterator[str]:
    """Messages for numeric flags outside their range in :data:`_FLAG_RANGES` (unset ones pass)."""
    for flag, valid in _FLAG_RANGES.items():
        value = getattr(args, flag)
        if value is not None and not (valid.holds(value) and _is_finite(value)):
            yield f"--{flag} must be {valid.words}, got {value}"


def _value_errors(args: argparse.Namespace) -> Iterator[str]:
    """Messages for numeric values and literal strings that cannot work."""
    yield from _range_errors(args)
    if parse_e0s_keyword(args.E0s) in FOUNDATION_E0_KEYWORDS and not args.foundation_model:
        yield f"--E0s={args.E0s} needs --foundation_model (it starts from the foundation's energies)"
    if args.swa and args.loss == "forces_only":
        yield "--swa cannot be used with --loss=forces_only: the SWA stage weighs energies"
    if args.scheduler not in SUPPORTED_SCHEDULERS:
        choices = ", ".join(SUPPORTED_SCHEDULERS)
        yield f"--scheduler {args.scheduler} is unknown; choose one of {choices}"
    if args.log_level.upper() not in LOG_LEVELS:
        yield f"--log_level {args.log_level} is unknown; choose one of {', '.join(LOG_LEVELS)}"


def _literal_errors(args: argparse.Namespace) -> Iterator[str]:
    """Messages for string-encoded flags (irreps, lists, dicts) that do not parse."""
    readers = (
        lambda: _irreps(args.hidden_irreps, "--hidden_irreps"),
        lambda: _irreps(args.MLP_irreps, "--MLP_irreps"),
        lambda: parse_radial_mlp(args.radial_MLP),
        lambda: parse_atomic_numbers(args.atomic_numbers),
        lambda: parse_config_type_weights(args.config_type_weights),
        lambda: parse_e0s(args.E0s),
        lambda: _heads_errors(args),
    )
    for read in readers:
        try:
            read()
        except UserInputError as exc:
            yield str(exc)


def _device_errors(args: argparse.Namespace) -> Iterator[str]:
    """Refuse ``--device cuda`` up front when torch cannot see a GPU."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            yield ("--device cuda requested but torch.cuda.is_available() is False (no GPU or a "
                   "CPU-only torch build); use --device cpu")


def resolve_start_swa(args: argparse.Namespace) -> None:
    """Fill the SWA start epoch like upstream, and warn when SWA would never begin."""
    if not args.swa:
        return
    if args.start_swa is None:
        args.start_swa = max(1, args.max_num_epochs // 4 * 3)
    if args.start_swa >= args.max_num_epochs:
        warnings.warn(
            f"--start_swa {args.start_swa} >= --max_num_epochs {args.max_num_epochs}: "
            "SWA will never start",
            UserWarning,
            stacklevel=3,
        )


def resolve_swa_reset_optimizer(args: argparse.Namespace) -> None:
    """Unset: reset at the SWA start when fine-tuning a foundation and stage two weighs forces
    less than the main stage. Then its gradients are smaller, and AMSGrad's maximum kept from
    the main stage holds stage two back: on cpu100 (forces 1000 -> 100) the reset lowered the
    final validation loss of MMEA, ELoRA, LoRA and full fine-tuning on each of three seeds.
    Where the force weight does not fall (LoRA, forces 1 -> 100) it raised it on each seed.
    Training from scratch keeps upstream's optimiser state."""
    if args.swa_reset_optimizer is None:
        args.swa_reset_optimizer = bool(args.foundation_model) and args.swa_forces_weight < args.forces_weight


def resolve_swa_warmup_epochs(args: argparse.Namespace) -> None:
    """Unset: warm stage two's rate up only where its optimiser starts afresh."""
    if args.swa_warmup_epochs is None:
        args.swa_warmup_epochs = RESET_WARMUP_EPOCHS if args.swa_reset_optimizer else 0


# --------------------------------------------------------------------------------------
# Adapter settings
# --------------------------------------------------------------------------------------


def adapter_choice(args: argparse.Namespace) -> Optional[str]:
    """The method the flags ask for: ``--adapter``, or 'lora' for upstream's ``--lora``
    (None: the run's default); a ``--lora`` that contradicts ``--adapter`` is a UserInputError."""
    if not getattr(args, "lora", False):
        return args.adapter
    if args.adapter not in (None, LORA_METHOD):
        raise UserInputError(
            f"--lora (upstream's switch for --adapter {LORA_METHOD}) contradicts --adapter "
            f"{args.adapter}: give only one of them"
        )
    return LORA_METHOD


def adapter_settings(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> AdapterSettings:
    """The method and its settings from the adapter flags and the MMEA_* variables (a flag
    always wins); UserInputError names the flag or variable at fault."""
    environ = os.environ if environ is None else environ
    return resolve_adapter_settings(adapter_choice(args), bool(args.foundation_model), vars(args), environ)


# --------------------------------------------------------------------------------------
# The settings that define a run (checked on --restart_latest)
# --------------------------------------------------------------------------------------

# Flags that do not change the trajectory up to a checkpoint: how long the run goes on and
# how often it evaluates, where outputs go, and on what hardware. The SWA start is the
# checkpoint's (the patience jump may have moved it), so --start_swa is ignored on restart.
RESTART_MAY_CHANGE = frozenset({
    "max_num_epochs", "patience", "eval_interval", "start_swa", "dry_run",
    "log_dir", "results_dir", "checkpoints_dir", "model_dir", "downloads_dir", "log_level",
    "keep_checkpoints", "save_all_checkpoints", "save_cpu", "keep_foundation_head", "test_file", "test_dir",
    "device", "num_workers", "pin_memory", "restart_latest", "trust_pickle", "config", "launcher",
    "wandb", "wandb_project", "wandb_entity", "wandb_name", "wandb_log_hypers",
})


def defining_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """Every flag but :data:`RESTART_MAY_CHANGE`, with the adapter flags as resolved from the
    MMEA_* variables too: what a resumed run must share with its checkpoint (plain data).
    ``--lora`` is recorded as the method it selects (``--adapter lora`` resumes it)."""
    flags = {flag: value for flag, value in vars(args).items() if flag not in RESTART_MAY_CHANGE | {"adapter_settings", "lora"}}
    return {**flags, **args.adapter_settings.record()}


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def _parse_with_config(
    parser: argparse.ArgumentParser, argv: Optional[List[str]]
) -> argparse.Namespace:
    """Parse once to find --config, install its values as defaults, then parse again."""
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    try:
        defaults = config_file_defaults(parser, args.config)
    except UserInputError as exc:
        parser.error(str(exc))
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def _first_error(args: argparse.Namespace) -> Optional[str]:
    """The first problem with the parsed flags, in the order a user should fix them."""
    checks = (_required_errors, _unsupported_feature_errors, _value_errors, _literal_errors,
              _device_errors)
    for check in checks:
        for message in check(args):
            return message
    return None


def parse_args(
    argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None
) -> argparse.Namespace:
    """Parse and validate ``run_train`` flags; exits with status 2 and one message on bad input.

    Steps: read flags (with ``--config`` values as defaults), rebuild ``hidden_irreps``
    from ``--num_channels``/``--max_L``, fill ``start_swa`` when ``--swa`` is on, then
    reject missing, unsupported or impossible values. The adapter flags, merged with the
    MMEA_* variables, are resolved once into ``args.adapter_settings``.
    """
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = _parse_with_config(parser, argv)
    try:
        apply_channel_override(args)
    except UserInputError as exc:
        parser.error(str(exc))
    message = _first_error(args)
    if message is not None:
        parser.error(message)
    try:
        args.adapter_settings = adapter_settings(args, environ)
    except UserInputError as exc:
        parser.error(str(exc))
    args.log_level = args.log_level.upper()
    resolve_start_swa(args)
    resolve_swa_reset_optimizer(args)
    resolve_swa_warmup_epochs(args)
    if args.interaction_first is None:
        args.interaction_first = DEFAULT_FIRST_INTERACTION[args.model]
    logging.getLogger(__name__).debug("parsed arguments: %s", vars(args))
    return args
