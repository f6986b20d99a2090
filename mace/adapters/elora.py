"""ELoRA: equivariant low-rank updates of the weights of a frozen MACE model.

Every weight of an e3nn operation multiplies whole irreps (one scalar per path and
channel pair), so any change of those numbers keeps the operation equivariant. ELoRA
adds, per path, a low-rank update (alpha / r) A B to the (inputs, outputs) weight block:
- o3.Linear, per instruction: block (mul_in, mul_out);
- TensorProduct with internal weights (the skip_tp self-connection), per weighted path:
  block (mul_in1 * mul_in2, mul_out) for 'uvw' (in general: all but the last axis, last);
- FullyConnectedNet layers (the radial MLP producing conv_tp weights): (h_in, h_out);
- symmetric contraction ``weights_max`` (n_elements, n_params, channels): A is
  (n_elements, n_params, r), B (r, channels).
A starts random normal (divided by n_params for ``weights_max``), B at zero: the model
starts as the foundation. Updates fold back into the weights (:func:`merge_elora`).

Wrappers hold the frozen e3nn module as ``base`` and run its own ``forward`` with the
updated weight (``torch.func.functional_call``), so e3nn is used as is, never patched.

Trainable besides the factors (shared with MMEA): the radial Bessel frequencies and the
lower-order symmetric-contraction weights; every other foundation weight is frozen here,
once, with ``requires_grad=False``.
"""
from math import prod
from typing import List, Tuple, Union

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch.func import functional_call

from mace.adapters.config import ELoRAConfig, LoRAConfig
from mace.modules.export import replace_submodule
from mace.modules.models import MACE
from mace.modules.radial import BesselBasis
from mace.modules.symmetric_contraction import Contraction
from mace.adapters.foundation import linear_weight_paths, tp_weight_paths

IRREPS_ATTRIBUTES = ("irreps_in", "irreps_in1", "irreps_in2", "irreps_out")


def copy_irreps_attributes(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Let a wrapper state the same input/output irreps as the e3nn module it wraps."""
    for name in IRREPS_ATTRIBUTES:
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))


class LowRankUpdate(torch.nn.Module):
    """A frozen module whose parameter ``param_name`` is used as weight + delta()."""

    def __init__(self, base: torch.nn.Module, param_name: str, config: Union[ELoRAConfig, LoRAConfig]) -> None:
        super().__init__()
        self.base = base
        self.param_name = param_name
        self.scale = config.scale
        copy_irreps_attributes(base, self)

    def base_weight(self) -> torch.Tensor:
        return getattr(self.base, self.param_name)

    def delta(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        weight = self.base_weight() + self.delta()
        return functional_call(self.base, {self.param_name: weight}, args, kwargs)

    def merged(self) -> torch.nn.Module:
        """The base module with the update folded into its weight (no inference overhead)."""
        with torch.no_grad():
            self.base_weight().add_(self.delta())
        return self.base

    def scriptable(self) -> torch.nn.Module:
        """What TorchScript compiles in place of this wrapper (``mace.modules.export``), whose
        generic ``forward`` it cannot: the merged base. It gives the same numbers, as
        ``forward`` too adds ``delta()`` to the weight before calling the base."""
        return self.merged()


class PathLowRank(LowRankUpdate):
    """Low-rank update of each (rows, cols) block of a weight stored flat, block after block."""

    def __init__(self, base: torch.nn.Module, blocks: List[Tuple[int, int]], config: ELoRAConfig) -> None:
        super().__init__(base, "weight", config)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = torch.nn.ParameterList(torch.randn(rows, config.rank, **like) for rows, _ in blocks)
        self.lora_B = torch.nn.ParameterList(torch.zeros(config.rank, cols, **like) for _, cols in blocks)

    def delta(self) -> torch.Tensor:
        updates = [(a @ b).reshape(-1) for a, b in zip(self.lora_A, self.lora_B)]
        return self.scale * torch.cat(updates).reshape(self.base_weight().shape)


class ElementLowRank(LowRankUpdate):
    """Update of a symmetric contraction's ``weights_max`` [elements, params, channels]."""

    def __init__(self, base: Contraction, config: ELoRAConfig) -> None:
        super().__init__(base, "weights_max", config)
        num_elements, num_params, channels = base.weights_max.shape
        like = {"dtype": base.weights_max.dtype, "device": base.weights_max.device}
        self.lora_A = torch.nn.Parameter(
            torch.randn(num_elements, num_params, config.rank, **like) / max(num_params, 1)
        )
        self.lora_B = torch.nn.Parameter(torch.zeros(config.rank, channels, **like))

    def delta(self) -> torch.Tensor:
        return self.scale * torch.einsum("epr,rc->epc", self.lora_A, self.lora_B)


def linear_blocks(linear: o3.Linear) -> List[Tuple[int, int]]:
    """(mul_in, mul_out) of each weighted instruction, in the order of the flat weight."""
    return [tuple(ins.path_shape) for ins in linear_weight_paths(linear)]


def tensor_product_blocks(tp: o3.TensorProduct) -> List[Tuple[int, int]]:
    """Each weighted path as (product of its input multiplicities, output multiplicity)."""
    return [(prod(ins.path_shape[:-1]), ins.path_shape[-1]) for ins in tp_weight_paths(tp)]


def _has_internal_weight(module: torch.nn.Module) -> bool:
    return module.internal_weights and module.weight_numel > 0


def _nonlinear_targets(
    model: torch.nn.Module, config: ELoRAConfig, tensor_products: bool
) -> List[Tuple[str, LowRankUpdate]]:
    """Wrappers for the weights that both ELoRA and MMEA update with low-rank factors
    (the weighted tensor products, the skip_tp self-connections, only if ``tensor_products``)."""
    targets: List[Tuple[str, LowRankUpdate]] = []
    for path, module in model.named_modules():
        if isinstance(module, o3.TensorProduct) and _has_internal_weight(module):
            if tensor_products:
                targets.append((path, PathLowRank(module, tensor_product_blocks(module), config)))
        elif isinstance(module, e3nn_nn.FullyConnectedNet):
            targets.extend(
                (f"{path}.{name}", PathLowRank(layer, [tuple(layer.weight.shape)], config))
                for name, layer in module.named_children()
            )
        elif isinstance(module, Contraction):
            targets.append((path, ElementLowRank(module, config)))
    return targets


def _linear_targets(model: torch.nn.Module, config: ELoRAConfig) -> List[Tuple[str, LowRankUpdate]]:
    return [
        (path, PathLowRank(module, linear_blocks(module), config))
        for path, module in model.named_modules()
        if isinstance(module, o3.Linear) and _has_internal_weight(module)
    ]


def _install(model: torch.nn.Module, targets: List[Tuple[str, torch.nn.Module]]) -> None:
    for path, wrapper in targets:
        replace_submodule(model, path, wrapper)


def freeze(model: torch.nn.Module) -> None:
    """Freeze every foundation weight; adapters added afterwards are the trainable ones."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def make_radial_basis_trainable(model: torch.nn.Module) -> None:
    """Bessel frequencies become a trainable parameter, as fine-tuning does upstream.

    Foundation files store them as a buffer; the reference counts (e.g. full fine-tuning
    751,896 = 751,888 weights + 8 frequencies) include them as parameters.
    """
    for module in model.modules():
        if isinstance(module, BesselBasis):
            module.bessel_weights = torch.nn.Parameter(module.bessel_weights.detach().clone())


def train_shared_extras(model: torch.nn.Module) -> None:
    """What both adapter methods train directly: Bessel frequencies, lower-order contractions."""
    make_radial_basis_trainable(model)
    for module in model.modules():
        if isinstance(module, Contraction):
            for weights in module.weights:
                weights.requires_grad_(True)


def inject_nonlinear_low_rank(model: MACE, config: ELoRAConfig, tensor_products: bool = True) -> None:
    """Freeze ``model``, add low-rank updates to all weights except the o3.Linear ones (and
    except the weighted tensor products unless ``tensor_products``)."""
    freeze(model)
    _install(model, _nonlinear_targets(model, config, tensor_products))
    train_shared_extras(model)


def inject_elora(model: MACE, config: ELoRAConfig) -> MACE:
    """Wrap ``model`` (in place) with ELoRA updates on every weighted e3nn operation."""
    inject_nonlinear_low_rank(model, config)
    _install(model, _linear_targets(model, config))
    return model


def merge_elora(model: MACE) -> MACE:
    """Fold every low-rank update (ELoRA's, LoRA's: any :class:`LowRankUpdate`) into its base
    weight and drop the wrappers (in place)."""
    wrappers = [(path, m) for path, m in model.named_modules() if isinstance(m, LowRankUpdate)]
    _install(model, [(path, wrapper.merged()) for path, wrapper in wrappers])
    return model
