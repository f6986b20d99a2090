"""Preparing a loaded foundation model for fine-tuning on a data set with fewer elements.

A foundation model (e.g. MACE-OFF23, ten elements) is fine-tuned on data with a few of
them. Dropping the unused elements keeps the predictions on the remaining ones exactly
while shrinking every element-dependent weight, so that fine-tuning (and the trainable
parameter count) only involves elements the data can teach, as in the reference runs.

Element-dependent parts of a MACE model, all indexed by the one-hot channel of
``model.atomic_numbers``:
- ``node_embedding.linear``: o3.Linear from ``n_elements x0e``;
- every interaction's ``skip_tp``: tensor product with ``n_elements x0e`` as second input
  (the non-linear block's is an element-blind o3.Linear), and the non-linear block's
  ``source_embedding`` / ``target_embedding``: o3.Linear from ``n_elements x0e``;
- every symmetric contraction's weights (first axis);
- ``atomic_energies_fn.atomic_energies`` (last axis) and the ``atomic_numbers`` buffer.
e3nn normalises each path by its fan-in, which includes the number of elements, so the
rebuilt e3nn modules get their weights rescaled by old/new path weight: outputs stay equal.
"""
import copy
from math import prod
from typing import Dict, List, Optional, Sequence

import torch
from ase.data import chemical_symbols
from e3nn import o3

from mace.modules.models import MACE
from mace.modules.symmetric_contraction import Contraction
from mace.core.errors import UserInputError


# Element embeddings of an interaction block (RealAgnosticResidualNonLinearInteractionBlock).
ELEMENT_EMBEDDINGS = ("source_embedding", "target_embedding")


def _symbols(zs: Sequence[int]) -> str:
    return ", ".join(chemical_symbols[z] for z in zs)


def _kept_channels(model: MACE, zs: Sequence[int]) -> List[int]:
    """One-hot channels of the requested elements, in the foundation's (sorted) order."""
    known = [int(z) for z in model.atomic_numbers.tolist()]
    wanted = {int(z) for z in zs}
    if not wanted:
        raise UserInputError("no elements given: the training data has no atoms")
    missing = sorted(wanted - set(known))
    if missing:
        raise UserInputError(
            f"the foundation model knows {_symbols(known)}; the training data also has: "
            f"{_symbols(missing)}"
        )
    return [channel for channel, z in enumerate(known) if z in wanted]


def _element_irreps(num_elements: int) -> o3.Irreps:
    return o3.Irreps([(num_elements, (0, 1))])


def _weight_blocks(module: torch.nn.Module, instructions: list) -> List[torch.Tensor]:
    """The flat e3nn ``weight`` cut into one (path_shape) block per weighted instruction."""
    sizes = [prod(ins.path_shape) for ins in instructions]
    blocks = torch.split(module.weight.detach(), sizes)
    return [block.reshape(ins.path_shape) for block, ins in zip(blocks, instructions)]


def linear_weight_paths(linear: o3.Linear) -> list:
    """Instructions of an o3.Linear that own a (mul_in, mul_out) block of its flat weight."""
    return [ins for ins in linear.instructions if ins.i_in >= 0]


def tp_weight_paths(tp: o3.TensorProduct) -> list:
    """Instructions of a TensorProduct that own a (path_shape) block of its flat weight."""
    return [ins for ins in tp.instructions if ins.has_weight]


def _copy_rescaled(target: torch.nn.Module, blocks: List[torch.Tensor], ratios: List[float]) -> None:
    with torch.no_grad():
        target.weight.copy_(torch.cat([(block * ratio).reshape(-1) for block, ratio in zip(blocks, ratios)]))


def _path_weight_ratios(old: list, new: list) -> List[float]:
    """old/new normalisation per path; the instruction structure must be the same."""
    if len(old) != len(new):
        raise ValueError("rebuilt e3nn module has a different set of paths")
    return [a.path_weight / b.path_weight for a, b in zip(old, new)]


def _restricted_element_linear(linear: o3.Linear, keep: torch.Tensor) -> o3.Linear:
    """Linear from ``len(keep) x0e``: keep rows (inputs) of its (mul_in, mul_out) block."""
    paths = linear_weight_paths(linear)
    restricted = o3.Linear(
        _element_irreps(len(keep)),
        linear.irreps_out,
        internal_weights=linear.internal_weights,
        shared_weights=linear.shared_weights,
        instructions=[(ins.i_in, ins.i_out) for ins in paths],
        biases=linear.bias_numel > 0,
    ).to(device=linear.weight.device, dtype=linear.weight.dtype)
    blocks = [block[keep] for block in _weight_blocks(linear, paths)]
    _copy_rescaled(restricted, blocks, _path_weight_ratios(paths, linear_weight_paths(restricted)))
    with torch.no_grad():
        restricted.bias.copy_(linear.bias)
    return restricted


def _restricted_skip_tp(tp: o3.TensorProduct, keep: torch.Tensor) -> o3.FullyConnectedTensorProduct:
    """Self-connection TP with ``len(keep) x0e`` second input; 'uvw' blocks keep those v."""
    if not isinstance(tp, o3.FullyConnectedTensorProduct) or len(tp.irreps_in2) != 1:
        raise UserInputError(f"cannot restrict the elements of a {type(tp).__name__} self-connection")
    restricted = o3.FullyConnectedTensorProduct(
        tp.irreps_in1,
        _element_irreps(len(keep)),
        tp.irreps_out,
        internal_weights=tp.internal_weights,
        shared_weights=tp.shared_weights,
    ).to(device=tp.weight.device, dtype=tp.weight.dtype)
    paths = tp_weight_paths(tp)
    blocks = [block[:, keep] for block in _weight_blocks(tp, paths)]
    _copy_rescaled(restricted, blocks, _path_weight_ratios(paths, tp_weight_paths(restricted)))
    return restricted


def _restrict_contraction(contraction: Contraction, keep: torch.Tensor) -> None:
    contraction.weights_max = torch.nn.Parameter(contraction.weights_max.detach()[keep].clone())
    for i, weights in enumerate(contraction.weights):
        contraction.weights[i] = torch.nn.Parameter(weights.detach()[keep].clone())


def check_known_elements(model: MACE, zs: Sequence[int]) -> None:
    """Raise UserInputError naming the elements of ``zs`` that ``model`` does not know."""
    _kept_channels(model, zs)


def restrict_to_elements(model: MACE, zs: Sequence[int]) -> MACE:
    """Copy of ``model`` that only knows the elements ``zs`` and predicts exactly as before on them.

    Raises UserInputError naming the elements of ``zs`` that the model does not know.
    """
    channels = _kept_channels(model, zs)
    keep = torch.tensor(channels, dtype=torch.long, device=model.atomic_numbers.device)
    restricted = copy.deepcopy(model)
    restricted.node_embedding.linear = _restricted_element_linear(restricted.node_embedding.linear, keep)
    for interaction in restricted.interactions:
        if isinstance(interaction.skip_tp, o3.TensorProduct):  # an o3.Linear one is element-blind
            interaction.skip_tp = _restricted_skip_tp(interaction.skip_tp, keep)
        for name in ELEMENT_EMBEDDINGS:
            if hasattr(interaction, name):
                setattr(interaction, name, _restricted_element_linear(getattr(interaction, name), keep))
        interaction.node_attrs_irreps = _element_irreps(len(channels))
    for module in restricted.modules():
        if isinstance(module, Contraction):
            _restrict_contraction(module, keep)
    energies = restricted.atomic_energies_fn
    energies.atomic_energies = energies.atomic_energies[..., keep].clone()
    restricted.atomic_numbers = restricted.atomic_numbers[keep].clone()
    return restricted


def set_e0s(model: MACE, e0s: Dict[int, float], head: Optional[int] = None) -> None:
    """Set the isolated-atom energies of every element of ``model``, in place: of the head
    index ``head``, or of all heads (None).

    Entries for elements the model does not know are ignored; an element of the model
    without an entry is a user error, since it would silently keep the foundation's E0.
    """
    zs = [int(z) for z in model.atomic_numbers.tolist()]
    missing = [z for z in zs if z not in e0s]
    if missing:
        raise UserInputError(f"E0s are missing for element(s) {_symbols(missing)} of the model")
    buffer = model.atomic_energies_fn.atomic_energies
    values = torch.tensor([float(e0s[z]) for z in zs], dtype=buffer.dtype, device=buffer.device)
    if head is None:
        buffer.copy_(values.expand_as(buffer))
    else:
        torch.atleast_2d(buffer)[head].copy_(values)
