"""Hyper-parameters of the adapter methods, small dataclasses saved with every adapter file."""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ELoRAConfig:
    """Per-path low-rank updates W + (alpha / rank) A B (ELoRA; reference defaults 16, 16)."""

    rank: int = 16
    alpha: float = 16.0

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"ELoRA rank must be positive, got {self.rank}")
        if not self.alpha > 0.0:
            raise ValueError(f"ELoRA alpha must be positive, got {self.alpha}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class MMEAConfig:
    """Magnitude-modulated gates on every o3.Linear, ELoRA updates on the other weights.

    ``rank`` is the width r of the gate MLP (MMEA_RANK); it does not change the rank of the
    low-rank updates of tensor products, radial MLP and symmetric contraction, which keep
    ``lora_rank`` / ``lora_alpha`` (the reference's MMEA rank-32 count, 201,258, needs that).
    W_a (the additive scalar branch) starts at torch's Linear init when ``init`` and ``std``
    are unset, at N(0, std) for ``init='normal'`` or a positive ``std``, and at zero for
    ``init='zero'`` or ``std == 0`` (then the adapted model starts as the foundation).
    ``phi``: gates exp(s) ('exp') or 1 + s ('res').
    """

    rank: int = 16
    std: Optional[float] = None
    init: Optional[str] = None
    phi: str = "exp"
    lora_rank: int = 16
    lora_alpha: float = 16.0

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"MMEA rank must be positive, got {self.rank}")
        if self.phi not in ("exp", "res"):
            raise ValueError(f"MMEA phi must be 'exp' or 'res', got {self.phi!r}")
        if self.init not in (None, "zero", "normal"):
            raise ValueError(f"MMEA init must be None, 'zero' or 'normal', got {self.init!r}")
        if self.std is not None and not self.std >= 0.0:
            raise ValueError(f"MMEA std must be non-negative, got {self.std}")
        if self.init == "normal" and not (self.std or 0.0) > 0.0:
            raise ValueError("MMEA init 'normal' needs a positive std")
        ELoRAConfig(self.lora_rank, self.lora_alpha)

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
