"""Parameter-efficient fine-tuning of a frozen MACE foundation model: the one place for adapters.

Methods (``registry.METHODS``): 'mmea' (magnitude-modulated equivariant adapters, the
default), 'elora' (equivariant low-rank updates), 'lora' (upstream mace-torch's LoRA) and
'none' (full fine-tuning).
:func:`inject_adapters` decides, once, which parameters train (``requires_grad``); training
code only ever asks ``p.requires_grad``. ``prepare`` turns a foundation file into the model
a run trains; ``io`` writes and reads adapter files.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from mace.adapters.config import ELoRAConfig, LoRAConfig, MMEAConfig
from mace.adapters.elora import LowRankUpdate, merge_elora
from mace.adapters.mmea import MMEALinear, mmea_banner
from mace.adapters.registry import METHODS, AdapterMethod, adapter_method
from mace.modules.models import MACE

AdapterConfig = Optional[Union[MMEAConfig, ELoRAConfig, LoRAConfig]]
ADAPTER_MODULES = (MMEALinear, LowRankUpdate)


def default_settings(method: str) -> AdapterConfig:
    settings_class = adapter_method(method).settings_class
    return None if settings_class is None else settings_class()


def inject_adapters(model: MACE, method: str, settings: Any = None) -> MACE:
    """Prepare ``model`` (in place) for fine-tuning with ``method``; ``settings=None``: defaults."""
    entry = adapter_method(method)
    settings = default_settings(method) if settings is None else settings
    expected = entry.settings_class
    if expected is not None and not isinstance(settings, expected):
        raise TypeError(f"adapter method {method!r} takes {expected.__name__}, not {type(settings).__name__}")
    return entry.inject(model, settings)


def train_readouts(model: MACE) -> MACE:
    """Readouts re-initialised for the new data (--foundation_model_readout off) must learn fully."""
    for parameter in model.readouts.parameters():
        parameter.requires_grad_(True)
    return model


# Upstream's --freeze levels: from which value on each block of the model stops training
# (a level between two thresholds freezes what the lower one does).
FREEZE_LEVELS = (("node_embedding", 1), ("interactions", 5), ("products", 6), ("readouts", 7))


def freeze_blocks(model: MACE, level: Optional[int]) -> List[str]:
    """--freeze: stop the blocks whose level is reached from training (their adapters
    included); returns their names. None, 0 or a negative level freeze nothing, as upstream."""
    frozen = [name for name, threshold in FREEZE_LEVELS if level is not None and level >= threshold]
    for name in frozen:
        for parameter in getattr(model, name).parameters():
            parameter.requires_grad_(False)
    return frozen


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _owner(name: str, adapter_paths: List[str]) -> str:
    """The adapter a parameter belongs to, else the module that holds it."""
    module_path = name.rpartition(".")[0]
    for path in adapter_paths:
        if module_path == path or module_path.startswith(path + "."):
            return path
    return module_path


def adapter_parameter_ids(model: torch.nn.Module) -> set:
    """ids of the trainable parameters that adapters add (not the foundation weights they wrap)."""
    return {
        id(p) for m in model.modules() if isinstance(m, ADAPTER_MODULES)
        for name, p in m.named_parameters() if p.requires_grad and not name.startswith("base.")
    }


def low_rank_b_parameter_ids(model: torch.nn.Module) -> set:
    """ids of the adapters' zero-initialised low-rank factors (``lora_B``), the factor that
    LoRA+ (Hayou et al. 2024) trains at a higher rate than ``lora_A``."""
    adapters = adapter_parameter_ids(model)
    return {
        id(p) for name, p in model.named_parameters()
        if id(p) in adapters and "lora_B" in name.split(".")
    }


def trainable_parameter_table(model: torch.nn.Module) -> List[Tuple[str, int]]:
    """(module path, trainable parameter count) rows, one per adapter or holding module."""
    adapter_paths = [path for path, m in model.named_modules() if isinstance(m, ADAPTER_MODULES)]
    counts: Dict[str, int] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            owner = _owner(name, adapter_paths)
            counts[owner] = counts.get(owner, 0) + parameter.numel()
    return list(counts.items())


__all__ = [
    "FREEZE_LEVELS",
    "freeze_blocks",
    "METHODS",
    "AdapterMethod",
    "ELoRAConfig",
    "LoRAConfig",
    "MMEAConfig",
    "adapter_method",
    "adapter_parameter_ids",
    "count_trainable",
    "default_settings",
    "inject_adapters",
    "merge_elora",
    "mmea_banner",
    "train_readouts",
    "trainable_parameter_table",
]
