"""The module LAMMPS runs for ``pair_style mace`` (the ML-MACE package of ACEsuit's LAMMPS),
public as upstream's ``mace.calculators.lammps_mace.LAMMPS_MACE``.

``python -m mace.cli.create_lammps_model MODEL`` compiles it into ``MODEL-lammps.pt``. The pair
style loads that file with ``torch::jit::load`` and relies on this interface, which upstream
mace-torch's ``mace.calculators.lammps_mace.LAMMPS_MACE`` defines:
- buffers ``atomic_numbers`` (the model's elements, in the order of the one-hot node
  attributes), ``r_max`` (cutoff; the pair style's cutoff is ``num_interactions * r_max``)
  and ``num_interactions``; its float type is read off ``model.node_embedding.linear.weight``;
- ``forward(data, local_or_ghost, compute_virials)``: ``data`` one graph of the atoms LAMMPS
  holds (``positions``, ``node_attrs``, ``edge_index``, ``shifts``, ``unit_shifts``,
  ``cell``, ``batch``, ``ptr``, ...), ``local_or_ghost`` true for the atoms this process
  owns; it returns ``total_energy_local`` (the energy of the owned atoms, [1]),
  ``node_energy`` (each atom's energy, E0 included), ``forces`` (minus the gradient of
  ``total_energy_local`` by every position, ghosts included, which LAMMPS sums back onto
  their owners) and ``virials`` (minus its gradient by a symmetric strain, [1, 3, 3]; without
  ``compute_virials``, zeros shaped like ``cell``).
"""
from typing import Dict, Optional

import torch
from e3nn.util.jit import compile_mode

from mace.modules.heads import head_index
from mace.modules.models import MACE, model_heads
from mace.modules.utils import forces_and_virials, scatter_sum, symmetric_strain


def _head_index(model: MACE, head: Optional[str]) -> int:
    """The named head, else, as upstream's LAMMPS model, the last one."""
    return len(model_heads(model)) - 1 if head is None else head_index(model, head)


def _mark_float_type(model: MACE) -> None:
    """The pair style takes its float type from ``model.node_embedding.linear.weight``; where an
    adapter (MMEA) wraps that Linear, its weight lives one level down, so the wrapper gets an
    empty tensor of the model's dtype under that name (it enters no computation)."""
    embedding = model.node_embedding.linear
    if not hasattr(embedding, "weight"):
        embedding.register_buffer("weight", torch.empty(0, dtype=model.r_max.dtype, device=model.r_max.device))


@compile_mode("script")
class LAMMPS_MACE(torch.nn.Module):  # pylint: disable=invalid-name  (upstream's public name)
    """``model`` (frozen) with the interface ``pair_style mace`` calls (see the module docstring)."""

    def __init__(self, model: MACE, head: Optional[str] = None) -> None:
        super().__init__()
        _mark_float_type(model)
        self.model = model
        self.register_buffer("atomic_numbers", model.atomic_numbers)
        self.register_buffer("r_max", model.r_max)
        self.register_buffer("num_interactions", model.num_interactions)
        self.register_buffer("head", torch.tensor([_head_index(model, head)], dtype=torch.long))
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def forward(
        self, data: Dict[str, torch.Tensor], local_or_ghost: torch.Tensor, compute_virials: bool = False
    ) -> Dict[str, Optional[torch.Tensor]]:
        num_graphs = data["ptr"].numel() - 1
        data["head"] = self.head
        positions = data["positions"]
        strain: Optional[torch.Tensor] = None
        if compute_virials:
            positions, shifts, strain = symmetric_strain(
                positions, data["unit_shifts"], data["cell"], data["edge_index"], data["batch"], num_graphs
            )
            data["shifts"] = shifts
        else:
            positions.requires_grad_(True)
        data["positions"] = positions
        output = self.model(data, training=False, compute_force=False, compute_virials=False, compute_stress=False)
        node_energy = output["node_energy"]
        assert node_energy is not None  # every MACE model predicts node energies
        total_energy_local = scatter_sum(node_energy * local_or_ghost, data["batch"], num_graphs)
        forces, virials, _ = forces_and_virials(total_energy_local, positions, strain, data["cell"], training=False)
        if virials is None:  # as upstream: zeros shaped like the cell LAMMPS passed
            virials = torch.zeros_like(data["cell"])
        return {
            "total_energy_local": total_energy_local,
            "node_energy": node_energy,
            "forces": forces,
            "virials": virials,
        }
