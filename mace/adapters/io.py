"""Adapter files: the few trained tensors of a fine-tuning run, applied to the foundation later.

An adapter file (``NAME_adapter.pt``) holds a plain dictionary, readable with
``torch.load(..., weights_only=True)``:
- ``method`` and ``settings`` (the adapter config as a dict, None for full fine-tuning);
- ``atomic_numbers``: the elements the foundation was restricted to;
- ``dtype``: 'float64' or 'float32', the precision the model was fine-tuned in;
- ``foundation_sha256``: hash of the foundation file the adapter was trained on;
- ``parameters``: every trainable tensor (``requires_grad``) by state_dict name;
- ``buffers``: the non-parameter state fine-tuning sets: the E0s and, for
  ScaleShiftMACE, scale and shift;
- ``readouts_trained``: the readouts were re-initialised and trained in full;
- ``foundation_head``: the head of a multi-head foundation that was fine-tuned (files
  without it, or None: upstream's default head);
- ``heads``: the heads of the fine-tuned model; several after replay fine-tuning, each
  started as a copy of the foundation head (files without it: one head).
Rebuilding repeats the fine-tuning preparation (select the head, restrict elements, inject the adapter),
then loads those tensors, so the result predicts exactly as the fine-tuned model.
"""
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from mace.adapters import METHODS, AdapterConfig, inject_adapters, train_readouts
from mace.adapters.config import older_meaning
from mace.modules.loading import load_model
from mace.modules.heads import expand_heads, foundation_head_index, select_head
from mace.modules.models import MACE, model_heads
from mace.core.errors import UserInputError, one_line
from mace.core.files import atomic_torch_save, file_sha256
from mace.adapters.foundation import restrict_to_elements

PathLike = Union[str, os.PathLike]
FORMAT = "mace-adapter-1"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
FINETUNED_BUFFERS = ("atomic_energies_fn.atomic_energies", "scale_shift.scale", "scale_shift.shift")


def _trainable_tensors(model: MACE) -> Dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def _finetuned_buffers(model: MACE) -> Dict[str, torch.Tensor]:
    buffers = dict(model.named_buffers())
    return {name: buffers[name].detach().cpu().clone() for name in FINETUNED_BUFFERS if name in buffers}


def save_adapter(
    model: MACE,
    path: PathLike,
    method: str,
    settings: AdapterConfig,
    foundation_path: PathLike,
    readouts_trained: bool = False,
    foundation_head: Optional[str] = None,
) -> None:
    """Write the adapter of fine-tuned ``model`` (prepared from ``foundation_path``) to ``path``;
    ``foundation_head``: the --foundation_head it started from, needed only when the model's
    heads were all made from it (replay fine-tuning), else the model's one head names it."""
    heads = model_heads(model)
    payload = {
        "format": FORMAT,
        "method": method,
        "settings": None if settings is None else asdict(settings),
        "atomic_numbers": [int(z) for z in model.atomic_numbers.tolist()],
        "dtype": str(model.atomic_energies_fn.atomic_energies.dtype).replace("torch.", ""),
        "foundation_sha256": file_sha256(foundation_path),
        "parameters": _trainable_tensors(model),
        "buffers": _finetuned_buffers(model),
        "readouts_trained": readouts_trained,
        "foundation_head": heads[0] if len(heads) == 1 else foundation_head,
        "heads": heads,
    }
    atomic_torch_save(payload, path)


def _read_adapter(path: PathLike) -> Dict[str, Any]:
    if not Path(path).is_file():
        raise UserInputError(f"Adapter file '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not ours
        raise UserInputError(
            f"Adapter file '{path}' could not be read as an adapter file ({one_line(error)})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserInputError(f"'{path}' is not a MACE adapter file ({FORMAT})")
    return payload


def _settings(method: str, values: Optional[Dict[str, Any]]) -> AdapterConfig:
    if method not in METHODS:
        raise UserInputError(f"Adapter method {method!r} is unknown to this version of mace")
    settings_class = METHODS[method].settings_class
    if settings_class is None or values is None:
        return None
    try:
        return settings_class(**{**older_meaning(settings_class), **values})
    except (TypeError, ValueError) as error:
        raise UserInputError(f"Adapter settings {values!r} are not valid for method {method!r}: {error}") from None


def _check_foundation(foundation_path: PathLike, expected: str, adapter_path: PathLike) -> None:
    if not Path(foundation_path).is_file():
        raise UserInputError(f"Foundation model file '{foundation_path}' does not exist")
    actual = file_sha256(foundation_path)
    if actual != expected:
        raise UserInputError(
            f"Adapter '{adapter_path}' was trained on a foundation model with SHA-256 {expected}, "
            f"but '{foundation_path}' has SHA-256 {actual}: give the foundation it was trained on"
        )


def _load_tensors(model: MACE, payload: Dict[str, Any], adapter_path: PathLike) -> None:
    """Copy the stored tensors in; any name or shape mismatch means a different model."""
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    stored = set(payload["parameters"])
    if stored != expected:
        raise UserInputError(
            f"Adapter '{adapter_path}' does not fit the rebuilt model: missing "
            f"{sorted(expected - stored)[:5]}, unexpected {sorted(stored - expected)[:5]}"
        )
    try:
        model.load_state_dict({**payload["parameters"], **payload["buffers"]}, strict=False)
    except RuntimeError as error:
        raise UserInputError(f"Adapter '{adapter_path}' does not fit the rebuilt model: {error}") from error


def load_adapted_model(
    foundation_path: PathLike, adapter_path: PathLike, device: str = "cpu", trust_pickle: bool = False
) -> MACE:
    """The fine-tuned model: ``foundation_path`` with the adapter of ``adapter_path`` applied.

    Refuses (UserInputError) a foundation file other than the one the adapter was trained on;
    ``trust_pickle`` as for :func:`mace.modules.loading.load_model`.
    """
    payload = _read_adapter(adapter_path)
    _check_foundation(foundation_path, payload["foundation_sha256"], adapter_path)
    foundation = load_model(foundation_path, device=device, dtype=DTYPES[payload["dtype"]], trust_pickle=trust_pickle)
    foundation = select_head(foundation, foundation_head_index(foundation, payload.get("foundation_head")))
    model = restrict_to_elements(foundation, payload["atomic_numbers"])
    if len(payload.get("heads", [])) > 1:
        model = expand_heads(model, payload["heads"])
    method = payload["method"]
    inject_adapters(model, method, _settings(method, payload["settings"]))
    if payload.get("readouts_trained", False):
        train_readouts(model)
    _load_tensors(model, payload, adapter_path)
    return model
