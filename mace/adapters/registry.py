"""The fine-tuning methods, by name: the single list the command line, the training run and
adapter files read.

Adding a method: write its settings class (``config.py``, fields with knobs) and its inject
function, then add one :class:`AdapterMethod` to :data:`METHODS`.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from mace.adapters.config import ELoRAConfig, LoRAConfig, MMEAConfig
from mace.adapters.elora import inject_elora, make_radial_basis_trainable, merge_elora
from mace.adapters.lora import inject_lora, lora_banner
from mace.adapters.mmea import inject_mmea, mmea_banner
from mace.modules.models import MACE


@dataclass(frozen=True)
class AdapterMethod:
    """A fine-tuning method: what it is called, what it takes, what it does and what it saves.

    ``settings_class`` is None for a method without settings. Every method saves an adapter
    file (the trained tensors); ``merge``, where given, also yields a plain model with the
    adapter folded in (NAME_merged.model). ``banner`` is what the reference code prints at start.
    """

    name: str
    summary: str
    settings_class: Optional[type]
    inject: Callable[[MACE, Any], MACE]
    merge: Optional[Callable[[MACE], MACE]] = None
    banner: Optional[Callable[[Any], str]] = None


def train_everything(model: MACE, settings: None = None) -> MACE:
    """Full fine-tuning: every weight (and the Bessel frequencies) trains."""
    make_radial_basis_trainable(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


METHODS: Dict[str, AdapterMethod] = {
    method.name: method
    for method in (
        AdapterMethod("mmea", "magnitude-modulated equivariant adapters (the default with --foundation_model)",
                      MMEAConfig, inject_mmea, banner=lambda config: mmea_banner(config.rank)),
        AdapterMethod("elora", "equivariant low-rank updates", ELoRAConfig, inject_elora, merge=merge_elora),
        AdapterMethod("lora", "upstream mace-torch's LoRA (its --lora): low-rank updates of every linear layer",
                      LoRAConfig, inject_lora, merge=merge_elora, banner=lora_banner),
        AdapterMethod("none", "train every weight (the default without a foundation model)", None, train_everything),
    )
}
FINETUNING_DEFAULT = "mmea"
NO_ADAPTER = "none"


def adapter_method(name: str) -> AdapterMethod:
    """The method called ``name`` (ValueError naming the known ones otherwise)."""
    if name not in METHODS:
        raise ValueError(f"unknown adapter method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
