"""MMEA: magnitude-modulated equivariant adapters on the o3.Linear layers of a frozen MACE.

For y = Linear(x) the adapter computes, from the invariant (0e) part x_0 of the input,
    h = SiLU(W_h x_0 + b_h)                       r values (r = MMEA rank)
    s = W_s h + b_s                               one value per channel of every non-0e
                                                  output block
and returns y with each such channel (all its 2l+1 components together) multiplied by
phi(s) = exp(s) ('exp') or 1 + s ('res'), and with W_a h + b_a added to the 0e outputs.
A channel-wide scalar factor that only depends on invariants commutes with rotations and
reflections, so the adapted layer stays exactly equivariant.

x_0 is every 0e block of the input. In MACE-OFF23-era files that is the single leading
block (the reference's "first irrep block"); newer writers leave the interaction's
``linear`` input unsimplified (e.g. 16x0e+16x0e+16x1o...), where all 0e blocks are
invariants and all feed the gate. A Linear without any 0e input has no invariant to
drive a gate: it is left unwrapped and frozen (none of the MACE Linears is like that).
0o output blocks are gated, not shifted: an added invariant would break their parity.

Parameter names: ``to_hidden`` (W_h, b_h), ``to_gates`` (W_s, b_s), ``to_scalars``
(W_a, b_a). Initialisation: b_h = 0; W_s = b_s = 0 (every gate exactly 1); b_a = 0; W_a
per :attr:`MMEAConfig.scalar_init`.
"""
import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
from e3nn import o3

from mace.adapters.config import MMEAConfig
from mace.adapters.elora import copy_irreps_attributes, inject_nonlinear_low_rank, replace_submodule
from mace.modules.models import MACE

SCALAR = o3.Irrep("0e")


def _block_slices(irreps: o3.Irreps) -> List[Tuple[int, int, o3.Irrep]]:
    """(start, multiplicity, irrep) of each block: "m x l" spans m*(2l+1) entries, channel-major."""
    return [(block.start, mul, ir) for block, (mul, ir) in zip(irreps.slices(), irreps)]


def _output_block(block: tuple) -> Tuple[int, int, int, bool]:
    """(start, multiplicity, irrep dimension, is 0e) of an output block, the plain values
    TorchScript compiles (model files written before carry (start, multiplicity, irrep))."""
    if len(block) == 4:
        return block
    start, mul, ir = block
    return start, mul, ir.dim, ir == SCALAR


def _zeroed_linear(n_in: int, n_out: int, like: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(n_in, n_out, dtype=like.dtype, device=like.device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return layer


def _scalar_branch(rank: int, n_out: int, config: MMEAConfig, like: torch.Tensor) -> torch.nn.Linear:
    """W_a: torch's default init, N(0, std) or zeros; its bias b_a starts at zero."""
    layer = torch.nn.Linear(rank, n_out, dtype=like.dtype, device=like.device)
    if config.scalar_init == "normal":
        torch.nn.init.normal_(layer.weight, mean=0.0, std=config.std)
    elif config.scalar_init == "zero":
        torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return layer


class MMEALinear(torch.nn.Module):
    """A frozen o3.Linear (``base``) whose outputs are gated and shifted by invariant MLPs."""

    def __init__(self, base: o3.Linear, config: MMEAConfig) -> None:
        super().__init__()
        self.base = base
        copy_irreps_attributes(base, self)
        self.phi = config.phi
        self.input_norm = config.input_norm == "layer"
        self.input_scalars = [
            (start, mul) for start, mul, ir in _block_slices(base.irreps_in) if ir == SCALAR
        ]
        self.output_blocks = [_output_block(block) for block in _block_slices(base.irreps_out)]
        num_scalars_in = sum(mul for _, mul in self.input_scalars)
        num_scalars_out = sum(mul for _, mul, _, scalar in self.output_blocks if scalar)
        num_gates = sum(mul for _, mul, _, scalar in self.output_blocks if not scalar)
        like = base.weight
        self.to_hidden = torch.nn.Linear(num_scalars_in, config.rank, dtype=like.dtype, device=like.device)
        torch.nn.init.zeros_(self.to_hidden.bias)
        self.to_gates: Optional[torch.nn.Linear] = (
            _zeroed_linear(config.rank, num_gates, like) if num_gates else None
        )
        self.to_scalars: Optional[torch.nn.Linear] = (
            _scalar_branch(config.rank, num_scalars_out, config, like) if num_scalars_out else None
        )

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self.output_blocks = [_output_block(block) for block in self.output_blocks]
        if "input_norm" not in state:  # model files written before the option read raw invariants
            self.input_norm = False

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        """The scalar inputs the gate MLP reads, normalised over their channels per node
        unless ``input_norm`` is off (a single channel would normalise to zero: left raw)."""
        scalars = torch.cat([x[..., start : start + mul] for start, mul in self.input_scalars], dim=-1)
        if self.input_norm and scalars.shape[-1] > 1:
            return torch.nn.functional.layer_norm(scalars, [scalars.shape[-1]])
        return scalars

    def _gate_factors(self, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        if self.to_gates is None:
            return None
        s = self.to_gates(hidden)
        return torch.exp(s) if self.phi == "exp" else 1.0 + s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., irreps_in.dim] -> [..., irreps_out.dim]"""
        y = self.base(x)
        hidden = torch.nn.functional.silu(self.to_hidden(self._invariants(x)))
        gates = self._gate_factors(hidden)
        shifts = None if self.to_scalars is None else self.to_scalars(hidden)
        lead = list(y.shape[:-1])
        blocks: List[torch.Tensor] = []
        gate_at, shift_at = 0, 0
        for start, mul, dim, scalar in self.output_blocks:
            block = y[..., start : start + mul * dim]
            if scalar:
                assert shifts is not None  # a 0e output block has its shift
                block = block + shifts[..., shift_at : shift_at + mul]
                shift_at += mul
            else:
                assert gates is not None  # a gated block has its gate
                factors = gates[..., gate_at : gate_at + mul, None]
                block = (block.reshape(lead + [mul, dim]) * factors).reshape(lead + [mul * dim])
                gate_at += mul
            blocks.append(block)
        return torch.cat(blocks, dim=-1)


def _has_scalar_input(linear: o3.Linear) -> bool:
    return any(ir == SCALAR for _, ir in linear.irreps_in)


def mmea_banner(rank: int) -> str:
    """The reference's start-up banner; printing it lets logs of both codes be compared."""
    rule = "=" * 100
    return f"{rule}\n MMEA_RANK:  {rank}\n{rule}"


def inject_mmea(model: MACE, config: MMEAConfig) -> MACE:
    """Adapt ``model`` in place: MMEA gates on every o3.Linear, ELoRA updates elsewhere (on
    the skip_tp tensor products only with ``config.skip_tp == 'low_rank'``)."""
    inject_nonlinear_low_rank(model, config.lora, tensor_products=config.skip_tp == "low_rank")
    linears = [(path, m) for path, m in model.named_modules() if isinstance(m, o3.Linear)]
    for path, linear in linears:
        if _has_scalar_input(linear):
            replace_submodule(model, path, MMEALinear(linear, config))
        else:
            logging.warning("MMEA: %s has no 0e input to drive a gate; it stays frozen", path)
    return model
