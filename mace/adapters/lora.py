"""LoRA as upstream mace-torch 0.3.16 has it (``--lora``): low-rank updates of the linear
layers of a frozen MACE model.

What trains, how it starts and how it is scaled follow upstream (``mace/modules/lora.py``,
applied by ``run_train`` to the loaded, element-restricted foundation):
- every e3nn ``o3.Linear`` whose input and output share an irrep (all those of MACE);
- every layer of an e3nn ``FullyConnectedNet`` (the radial MLPs giving the convolution
  weights) and every ``torch.nn.Linear`` (none in the MACE files this fork reads);
- nothing else: tensor products (skip_tp), symmetric contractions, Bessel frequencies,
  E0s and scale/shift stay frozen.
Every update carries alpha / rank (upstream defaults: rank 4, alpha 1).

An ``o3.Linear`` keeps its irreps structure. Upstream routes its update through a bottleneck
of ``rank`` copies of each irrep shared by input and output: the map B(A(x)) of two
o3.Linear layers A: irreps_in -> rank x shared, B: rank x shared -> irreps_out, each with
e3nn's 'element' path normalisation. That composition is again one equivariant linear map,
so here it is written as an update of the base weight, path by path: the block of the path
from input block i to output block j (both of irrep ir) gains

    (alpha / rank) * a(ir) * b / c_ij * A_i @ B_j,   A_i: (mul_i, rank), B_j: (rank, mul_j),

with a(ir) = (sum of the multiplicities of the input blocks of ir)^-1/2 and b = rank^-1/2
(the path weights of A and B) and c_ij the base path's own weight. The trainable count per
Linear is upstream's: rank * (input channels + output channels of the shared irreps).
Dense layers: an e3nn layer's weight (in, out) gains (alpha / rank) A @ B with A (in, rank),
B (rank, out); a torch Linear's weight (out, in) gains (alpha / rank) B @ A with A (rank, in),
B (out, rank).

Initialisation as upstream: B = 0, so the adapted model starts exactly as the foundation;
A of a dense layer ~ N(0, 1e-3^2); A of an o3.Linear ~ N(0, 1), e3nn's weight init, which
upstream keeps (its small normal init touches 2-D parameters only, and e3nn stores an
o3.Linear weight flat). The updates fold back into the weights with
:func:`mace.adapters.elora.merge_elora`, which merges every :class:`LowRankUpdate`.
"""
from typing import Dict, List, Tuple

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3

from mace.adapters.config import LoRAConfig
from mace.adapters.elora import LowRankUpdate, freeze, replace_submodule
from mace.adapters.foundation import linear_weight_paths
from mace.modules.models import MACE

DENSE_A_STD = 1e-3


def _element_norm(fan_in: int) -> float:
    """e3nn's 'element' path weight for a summed input multiplicity (0 counts as 1)."""
    return float(fan_in if fan_in > 0 else 1) ** -0.5


def shared_irreps(linear: o3.Linear) -> set:
    """The irreps present in both the input and the output of ``linear``."""
    return {ir for _, ir in o3.Irreps(linear.irreps_in)} & {ir for _, ir in o3.Irreps(linear.irreps_out)}


class IrrepsLoRA(LowRankUpdate):
    """LoRA of an o3.Linear through ``rank`` copies of each shared irrep, as a weight update.

    ``lora_A[k]``: (mul, rank) for the k-th input block of a shared irrep; ``lora_B[k]``:
    (rank, mul) for the k-th such output block. ``paths``: per weighted base path, in the
    order of the flat weight, (A index, B index, normalisation factor).
    """

    def __init__(self, base: o3.Linear, config: LoRAConfig) -> None:
        super().__init__(base, "weight", config)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        irreps_in, irreps_out = o3.Irreps(base.irreps_in), o3.Irreps(base.irreps_out)
        shared = shared_irreps(base)
        a_of_block: Dict[int, int] = {}
        b_of_block: Dict[int, int] = {}
        fan_in: Dict[o3.Irrep, int] = {}
        self.lora_A = torch.nn.ParameterList()
        self.lora_B = torch.nn.ParameterList()
        for block, (mul, ir) in enumerate(irreps_in):
            if ir in shared:
                a_of_block[block] = len(self.lora_A)
                self.lora_A.append(torch.nn.Parameter(torch.randn(mul, config.rank, **like)))
                fan_in[ir] = fan_in.get(ir, 0) + mul
        for block, (mul, ir) in enumerate(irreps_out):
            if ir in shared:
                b_of_block[block] = len(self.lora_B)
                self.lora_B.append(torch.nn.Parameter(torch.zeros(config.rank, mul, **like)))
        weighted = linear_weight_paths(base)
        self._check_fully_connected(weighted, irreps_in, irreps_out)
        self.paths: List[Tuple[int, int, float]] = [
            (
                a_of_block[ins.i_in],
                b_of_block[ins.i_out],
                _element_norm(fan_in[irreps_in[ins.i_in].ir]) * _element_norm(config.rank) / ins.path_weight,
            )
            for ins in weighted
        ]

    @staticmethod
    def _check_fully_connected(weighted: list, irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> None:
        """B(A(x)) connects every input block to every output block of the same irrep; the
        weight form can only express that when the base Linear has all those paths too."""
        present = {(ins.i_in, ins.i_out) for ins in weighted}
        every = {
            (i, j)
            for i, (_, ir_in) in enumerate(irreps_in)
            for j, (_, ir_out) in enumerate(irreps_out)
            if ir_in == ir_out
        }
        if present != every:
            raise ValueError(
                f"LoRA needs an o3.Linear with every same-irrep path ({irreps_in} -> {irreps_out} "
                f"has {len(present)} of {len(every)})"
            )

    def delta(self) -> torch.Tensor:
        blocks = [factor * (self.lora_A[a] @ self.lora_B[b]).reshape(-1) for a, b, factor in self.paths]
        return self.scale * torch.cat(blocks).reshape(self.base_weight().shape)


class DenseLoRA(LowRankUpdate):
    """LoRA of a dense weight: e3nn layers store it (in, out), torch Linear (out, in).

    ``lora_A`` is the input-side factor (N(0, 1e-3^2)), ``lora_B`` the output-side one (zero).
    """

    def __init__(self, base: torch.nn.Module, config: LoRAConfig, in_out_layout: bool) -> None:
        super().__init__(base, "weight", config)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        rows, cols = base.weight.shape
        self.in_out_layout = in_out_layout
        a_shape = (rows, config.rank) if in_out_layout else (config.rank, cols)
        b_shape = (config.rank, cols) if in_out_layout else (rows, config.rank)
        self.lora_A = torch.nn.Parameter(torch.randn(*a_shape, **like) * DENSE_A_STD)
        self.lora_B = torch.nn.Parameter(torch.zeros(*b_shape, **like))

    def delta(self) -> torch.Tensor:
        product = self.lora_A @ self.lora_B if self.in_out_layout else self.lora_B @ self.lora_A
        return self.scale * product


def _lora_targets(model: torch.nn.Module, config: LoRAConfig) -> List[Tuple[str, LowRankUpdate]]:
    targets: List[Tuple[str, LowRankUpdate]] = []
    for path, module in model.named_modules():
        if isinstance(module, o3.Linear):
            if module.internal_weights and module.weight_numel > 0 and shared_irreps(module):
                targets.append((path, IrrepsLoRA(module, config)))
        elif isinstance(module, e3nn_nn.FullyConnectedNet):
            targets.extend(
                (f"{path}.{name}", DenseLoRA(layer, config, in_out_layout=True))
                for name, layer in module.named_children()
            )
        elif isinstance(module, torch.nn.Linear):
            targets.append((path, DenseLoRA(module, config, in_out_layout=False)))
    return targets


def lora_banner(config: LoRAConfig) -> str:
    """The line upstream logs when it injects LoRA, so that logs of both codes compare."""
    return f"Injecting LoRA layers with rank={config.rank} and alpha={config.alpha}"


def inject_lora(model: MACE, config: LoRAConfig) -> MACE:
    """Freeze ``model`` and wrap its linear layers with LoRA updates (in place): only the
    LoRA factors train."""
    freeze(model)
    for path, wrapper in _lora_targets(model, config):
        replace_submodule(model, path, wrapper)
    return model
