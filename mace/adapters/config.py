"""Hyper-parameters of the adapter methods: small frozen dataclasses, saved with every adapter file.

Each field carries a :class:`Knob` in its metadata: the command-line flag that sets it, the
reference code's environment variable (if any), its choices and its check. The command line
builds its adapter flags from these, and :mod:`mace.adapters.settings` resolves flags and
environment against them, so a setting's default, check and flag are written once, here.
"""
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Dict, Iterator, Optional, Tuple

DEFAULT_MMEA_NORMAL_STD = 0.001


@dataclass(frozen=True)
class Check:
    """The values a setting accepts: ``holds`` (False for NaN, which fails every comparison)
    and how a message words it."""

    holds: Callable[[Any], bool]
    words: str


POSITIVE_INTEGER = Check(lambda value: value > 0, "a positive integer")
FINITE_POSITIVE = Check(lambda value: 0.0 < value < math.inf, "a finite positive number")
FINITE_NON_NEGATIVE = Check(lambda value: 0.0 <= value < math.inf, "a finite non-negative number")


@dataclass(frozen=True)
class Knob:
    """How a setting is given: ``--flag`` (whose value wins), else ``$env``, else the field default."""

    flag: str
    kind: Callable[[str], Any]
    help: str
    env: Optional[str] = None
    choices: Optional[Tuple[str, ...]] = None
    check: Optional[Check] = None


def setting(default: Any, knob: Knob) -> Any:
    """A dataclass field with its knob."""
    return field(default=default, metadata={"knob": knob})


def knobs(settings_class: type) -> Iterator[Tuple[str, Any, Knob]]:
    """(field name, default, knob) of every setting of ``settings_class``."""
    for item in fields(settings_class):
        yield item.name, item.default, item.metadata["knob"]


def older_meaning(settings_class: type) -> Dict[str, Any]:
    """field name -> the value that a record without that field (an adapter file or checkpoint
    written before the field existed) meant; empty for classes whose fields all date back."""
    return dict(getattr(settings_class, "absent_from_old_files", {}))


def check_settings(settings: Any) -> None:
    """Every field against its knob's choices and check (ValueError naming the field)."""
    for name, _, knob in knobs(type(settings)):
        value = getattr(settings, name)
        if value is None:
            continue
        if knob.choices is not None and value not in knob.choices:
            raise ValueError(f"{type(settings).__name__}.{name} must be one of {', '.join(knob.choices)}, got {value!r}")
        if knob.check is not None and not knob.check.holds(value):
            raise ValueError(f"{type(settings).__name__}.{name} must be {knob.check.words}, got {value}")


ELORA_RANK = Knob("elora_rank", int, "Rank of the ELoRA low-rank updates (also MMEA's updates of the "
                  "tensor products, radial MLPs and symmetric contractions).", check=POSITIVE_INTEGER)
ELORA_ALPHA = Knob("elora_alpha", float, "ELoRA scale numerator: updates carry alpha / rank.",
                   check=FINITE_POSITIVE)


class LowRankSettings:
    """What the settings of the low-rank methods share: their knobs are checked on creation,
    and every update carries ``alpha / rank``."""

    rank: int
    alpha: float

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class ELoRAConfig(LowRankSettings):
    """Per-path low-rank updates W + (alpha / rank) A B (ELoRA; reference defaults 16, 16)."""

    rank: int = setting(16, ELORA_RANK)
    alpha: float = setting(16.0, ELORA_ALPHA)


@dataclass(frozen=True)
class LoRAConfig(LowRankSettings):
    """Upstream's LoRA (mace-torch 0.3.16 ``--lora``): low-rank updates (alpha / rank) A B of
    every linear layer; upstream's defaults rank 4, alpha 1."""

    rank: int = setting(4, Knob("lora_rank", int, "Rank of the LoRA updates (--adapter lora, upstream's "
                                "--lora).", check=POSITIVE_INTEGER))
    alpha: float = setting(1.0, Knob("lora_alpha", float, "LoRA scale numerator: updates carry "
                                     "alpha / rank.", check=FINITE_POSITIVE))


@dataclass(frozen=True)
class MMEAConfig:
    """Magnitude-modulated gates on every o3.Linear, ELoRA updates on the other weights.

    ``rank`` is the width r of the gate MLP (MMEA_RANK); it does not change the rank of the
    low-rank updates of tensor products, radial MLP and symmetric contraction, which keep
    ``lora_rank`` / ``lora_alpha`` (the reference's MMEA rank-32 count, 201,258, needs that).
    W_a (the additive scalar branch) starts at N(0, std), std 0.001 by default (the MMEA
    paper's 3BPA setting; on aspirin it lowers the validation energy error by about 10% over
    torch's init, forces unchanged: benchmarks/README.md), at zero for ``init='zero'`` or
    ``std == 0`` (then the adapted model starts as the foundation), and at torch's Linear
    init for ``init='default'`` (the reference code's default, when its MMEA_STD is unset;
    adapter files written before the change hold ``std=None``, which also means that).
    ``phi``: gates 1 + s ('res', the default) or exp(s) ('exp', the reference code's default
    when its MMEA_PHI is unset). On aspirin 'res' lowered the final validation loss on each of
    three seeds (force MAE 40.5 -> 39.9 meV/A on average; benchmarks/README.md); the trainable
    count is the same. ``input_norm``: 'layer' (the default) normalises the invariants a gate
    MLP reads, per node, to zero mean and unit variance over their channels, without learned
    parameters; the foundation's invariants have standard deviations from 0.14 to 1.07 across
    layers, so raw ('none', the reference code) they leave the gate MLP's SiLU in its linear
    part in some layers and not others. On aspirin it lowered the final validation loss by 5%
    on average over three seeds (benchmarks/README.md). Adapter files written before it lack
    the field and mean 'none' (:func:`older_meaning`). ``skip_tp``: the element-dependent
    skip_tp tensor products get low-rank updates ('low_rank', the default, as the reference
    code) or stay frozen ('frozen': 8,192 fewer trainable on aspirin, 64,186 in all). Frozen,
    the final validation loss was 1.8% lower on aspirin, equal on acetylacetone and 1.7%
    higher on 3BPA (means over three seeds; benchmarks/README.md), so the default keeps the
    reference's updates.
    """

    absent_from_old_files: ClassVar[Dict[str, Any]] = {"input_norm": "none", "skip_tp": "low_rank"}

    rank: int = setting(16, Knob("mmea_rank", int, "Width of the MMEA gate MLP.", env="MMEA_RANK",
                                 check=POSITIVE_INTEGER))
    std: Optional[float] = setting(DEFAULT_MMEA_NORMAL_STD, Knob(
        "mmea_std", float, "Std of the normal init of the scalar-branch weights W_a; 0 means zeros.",
        env="MMEA_STD", check=FINITE_NON_NEGATIVE))
    init: Optional[str] = setting(None, Knob(
        "mmea_init", str, "Init of the scalar-branch weights W_a: 'normal' with std --mmea_std, "
        "'zero', or 'default' (torch's Linear init, the reference code's default); unset: "
        "decided by --mmea_std.", choices=("normal", "zero", "default")))
    phi: str = setting("res", Knob("mmea_phi", str, "Gate form: 'res' scales a channel by 1+s "
                                   "(default), 'exp' by exp(s) (the reference code's default).",
                                   env="MMEA_PHI", choices=("exp", "res")))
    input_norm: str = setting("layer", Knob(
        "mmea_input_norm", str, "What the gate MLP reads: 'layer' (default), the invariant inputs "
        "of each node normalised to zero mean and unit variance over the channels; 'none', the "
        "raw invariants (the reference code).", choices=("layer", "none")))
    skip_tp: str = setting("low_rank", Knob(
        "mmea_skip_tp", str, "The element-dependent skip_tp tensor products: 'low_rank' (default, "
        "the reference code), updated like the radial MLPs, or 'frozen' (fewer trainable).",
        choices=("low_rank", "frozen")))
    lora_rank: int = setting(16, ELORA_RANK)
    lora_alpha: float = setting(16.0, ELORA_ALPHA)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.init == "normal" and self.std is None:
            object.__setattr__(self, "std", DEFAULT_MMEA_NORMAL_STD)
        if self.init == "normal" and not self.std > 0.0:
            raise ValueError("MMEA init 'normal' needs a positive std")

    @property
    def scalar_init(self) -> str:
        """How W_a starts: 'default' (torch Linear init), 'normal' or 'zero'."""
        if self.init is not None:
            return self.init
        if self.std is None:
            return "default"
        return "normal" if self.std > 0.0 else "zero"

    @property
    def lora(self) -> ELoRAConfig:
        return ELoRAConfig(self.lora_rank, self.lora_alpha)
