"""Readout heads: choosing one of a multi-head model, and cutting it out as a one-head model.

A multi-head file (upstream's multi-head fine-tuning, MACE-MH-*) shares every layer but
the readouts, E0s and scale/shift between its heads: head k reads energy column k, its E0
row k and its scale/shift entry k, and the last readout's hidden layer holds one block of
``MLP_irreps`` per head (see :class:`~mace.modules.blocks.NonLinearReadoutBlock`).
"""
import copy
from typing import Dict, List, Optional

import torch
from e3nn import o3
from e3nn.util.jit import compile_mode

from mace.core.errors import UserInputError
from mace.modules.blocks import AtomicEnergiesBlock, LinearReadoutBlock, NonLinearReadoutBlock, readout_gate
from mace.modules.models import MACE, model_heads

PRETRAINING_HEAD = "pt_head"  # upstream's name of the replayed pretraining head
FOUNDATION_HEAD = "foundation"  # the unchanged foundation kept beside a fine-tuned head


def head_index(model: torch.nn.Module, head: Optional[str]) -> int:
    """The index of ``head`` in the model; None picks upstream's default: the only head, else
    the one named 'default' (any case); beside a kept foundation head (:data:`FOUNDATION_HEAD`,
    our own) the fine-tuned head; else an error listing the heads."""
    heads = model_heads(model)
    if head is None:
        if len(heads) == 1:
            return 0
        defaults = [i for i, name in enumerate(heads) if name.lower() == "default"]
        fine_tuned = [i for i, name in enumerate(heads) if name != FOUNDATION_HEAD]
        if defaults:
            return defaults[0]
        if len(heads) == 2 and len(fine_tuned) == 1:
            return fine_tuned[0]
        raise UserInputError(f"the model has several heads {heads}: choose one (--head / head=)")
    if head not in heads:
        raise UserInputError(f"head '{head}' is not in the model; its heads are {heads}")
    return heads.index(head)


def foundation_head_index(model: torch.nn.Module, head: Optional[str]) -> int:
    """The head a fine-tune starts from (--foundation_head): the named one, else, as
    upstream, the first head that is not the pretraining replay head."""
    heads = model_heads(model)
    if head is not None:
        return head_index(model, head)
    for index, name in enumerate(heads):
        if name != PRETRAINING_HEAD:
            return index
    raise UserInputError(f"the foundation model has only the pretraining head {heads}: name one with --foundation_head")


def _linear_with_weight(irreps_in: o3.Irreps, irreps_out: o3.Irreps, weight: torch.Tensor) -> o3.Linear:
    linear = o3.Linear(irreps_in=irreps_in, irreps_out=irreps_out).to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(weight.reshape(-1))
    return linear


def _one_head_readout(readout: torch.nn.Module, index: int, num_heads: int) -> torch.nn.Module:
    """Readout ``index`` of a multi-head readout, as a one-head block predicting the same.

    Weights are [inputs, outputs] matrices. The last linear layer of the MLP reads only the
    head's hidden block, so its input count shrinks by ``num_heads``: e3nn divides by the
    square root of the input count, hence the factor sqrt(1/num_heads) on its weights.
    """
    if isinstance(readout, NonLinearReadoutBlock):
        irreps_in = readout.linear_1.irreps_in
        width = readout.linear_1.irreps_out.dim // num_heads
        hidden = o3.Irreps(f"{width}x0e")
        fresh = NonLinearReadoutBlock(irreps_in, hidden, readout_gate(readout))
        first = readout.linear_1.weight.reshape(-1, num_heads, width)[:, index, :]
        last = readout.linear_2.weight.reshape(num_heads, width, num_heads)[index, :, index] / num_heads**0.5
        fresh.linear_1 = _linear_with_weight(irreps_in, hidden, first)
        fresh.linear_2 = _linear_with_weight(hidden, o3.Irreps("0e"), last)
        return fresh.to(dtype=first.dtype, device=first.device)
    irreps_in = readout.linear.irreps_in
    weight = readout.linear.weight.reshape(-1, num_heads)[:, index]
    fresh = LinearReadoutBlock(irreps_in)
    fresh.linear = _linear_with_weight(irreps_in, o3.Irreps("0e"), weight)
    return fresh


def select_head(model: MACE, index: int) -> MACE:
    """A one-head copy of ``model`` that predicts exactly what its head ``index`` predicts
    (upstream's conversion of a multi-head foundation before fine-tuning)."""
    heads = model_heads(model)
    if len(heads) == 1:
        return model
    num_heads = len(heads)
    single = copy.deepcopy(model)
    for position, readout in enumerate(model.readouts):
        single.readouts[position] = _one_head_readout(readout, index, num_heads)
    energies = single.atomic_energies_fn.atomic_energies
    single.atomic_energies_fn.atomic_energies = energies[index].clone()
    if hasattr(single, "scale_shift"):
        for name in ("scale", "shift"):
            values = torch.atleast_1d(getattr(single.scale_shift, name))
            setattr(single.scale_shift, name, values[index if values.numel() > 1 else 0].clone())
    single.heads = [heads[index]]
    return single


def _multi_head_readout(readout: torch.nn.Module, num_heads: int) -> torch.nn.Module:
    """A one-head readout repeated for ``num_heads`` heads, each predicting what it predicts
    (the inverse of :func:`_one_head_readout`; upstream's layout when it adds heads)."""
    heads_out = o3.Irreps(f"{num_heads}x0e")
    if isinstance(readout, NonLinearReadoutBlock):
        irreps_in = readout.linear_1.irreps_in
        width = readout.linear_1.irreps_out.dim
        hidden = o3.Irreps(f"{num_heads * width}x0e")
        fresh = NonLinearReadoutBlock(irreps_in, hidden, readout_gate(readout), heads_out, num_heads)
        first = readout.linear_1.weight.reshape(-1, width).repeat(1, num_heads)
        last = readout.linear_2.weight.reshape(width, 1).repeat(num_heads, num_heads) * num_heads**0.5
        fresh.linear_1 = _linear_with_weight(irreps_in, hidden, first)
        fresh.linear_2 = _linear_with_weight(hidden, heads_out, last)
        return fresh.to(dtype=first.dtype, device=first.device)
    irreps_in = readout.linear.irreps_in
    fresh = LinearReadoutBlock(irreps_in, heads_out)
    fresh.linear = _linear_with_weight(irreps_in, heads_out, readout.linear.weight.reshape(-1, 1).repeat(1, num_heads))
    return fresh


def expand_heads(model: MACE, heads: List[str]) -> MACE:
    """A copy of one-head ``model`` with the heads ``heads``, each a copy of its head: same
    readouts, E0s and scale/shift, so every head predicts exactly what ``model`` predicts
    (upstream's start of a multi-head fine-tune)."""
    if len(model_heads(model)) != 1:
        raise ValueError(f"expand_heads takes a one-head model, not one with heads {model_heads(model)}")
    num_heads = len(heads)
    multi = copy.deepcopy(model)
    for position, readout in enumerate(model.readouts):
        multi.readouts[position] = _multi_head_readout(readout, num_heads)
    energies = torch.atleast_2d(model.atomic_energies_fn.atomic_energies)[0]
    multi.atomic_energies_fn.atomic_energies = energies.repeat(num_heads, 1).clone()
    if hasattr(multi, "scale_shift"):
        for name in ("scale", "shift"):
            value = torch.atleast_1d(getattr(model.scale_shift, name))[0]
            setattr(multi.scale_shift, name, value.repeat(num_heads).clone())
    multi.heads = list(heads)
    return multi


def _take_where(mask: torch.Tensor, chosen: Optional[torch.Tensor], other: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``chosen`` where ``mask`` (over the first dimension), else ``other``."""
    if chosen is None:
        return other
    if other is None:
        return chosen
    return torch.where(mask.view([-1] + [1] * (chosen.dim() - 1)), chosen, other)


@compile_mode("script")
class ModelHeads(torch.nn.Module):
    """A model whose heads are whole one-head models on the same elements and cutoff: head i
    predicts exactly what ``models[i]`` predicts (each graph through the model of its head,
    a model only runs when a graph asks for its head).

    Fine-tuning writes one (``--keep_foundation_head``) to carry the unchanged foundation as
    head 'foundation' beside the fine-tuned head: nothing of the foundation is forgotten.
    """

    def __init__(self, models: List[torch.nn.Module], heads: List[str]) -> None:
        super().__init__()
        first = models[0]
        for model in models[1:]:
            if model.atomic_numbers.tolist() != first.atomic_numbers.tolist() or float(model.r_max) != float(first.r_max):
                raise ValueError("the models of a ModelHeads must have the same elements and cutoff")
        self.models = torch.nn.ModuleList(models)
        self.heads: List[str] = list(heads)
        self.node_outputs: List[str] = ["node_energy", "forces"]  # the rest are per graph
        self.register_buffer("atomic_numbers", first.atomic_numbers.clone())
        self.register_buffer("r_max", first.r_max.clone())
        self.register_buffer("num_interactions", first.num_interactions.clone())
        rows = [torch.atleast_2d(model.atomic_energies_fn.atomic_energies)[0] for model in models]
        self.atomic_energies_fn = AtomicEnergiesBlock(torch.stack(rows).detach().cpu().numpy())

    def forward(
        self,
        data: Dict[str, torch.Tensor],
        training: bool = False,
        compute_force: bool = True,
        compute_virials: bool = False,
        compute_stress: bool = False,
    ) -> Dict[str, Optional[torch.Tensor]]:
        graph_heads = data["head"] if "head" in data else torch.zeros_like(data["ptr"][1:])
        node_heads = graph_heads[data["batch"]]
        result: Dict[str, Optional[torch.Tensor]] = {}
        for index, model in enumerate(self.models):
            if bool((graph_heads == index).any()):
                one_head = dict(data)
                one_head["head"] = torch.zeros_like(graph_heads)  # each model has the one head
                output = model(one_head, training, compute_force, compute_virials, compute_stress)
                for key, value in output.items():
                    if key not in result:
                        result[key] = value
                    elif key in self.node_outputs:
                        result[key] = _take_where(node_heads == index, value, result[key])
                    else:
                        result[key] = _take_where(graph_heads == index, value, result[key])
        return result

    def node_features(self, data: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """The node features of the model of the first graph's head (descriptors)."""
        index = int(data["head"][0]) if "head" in data else 0
        return self.models[index].node_features(data)

    def layer_irreps(self) -> List[o3.Irreps]:
        return self.models[-1].layer_irreps()
