"""Graph and autograd helpers of the model's forward pass (the hot path)."""
from typing import Optional, Tuple

import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` into ``dim_size`` bins given by ``index`` (along dim 0)."""
    out = torch.zeros((dim_size,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add(0, index, src)


def edge_vectors_and_lengths(
    positions: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Vectors from sender to the (periodic image of the) receiver, and their lengths [n_edges, 1]."""
    sender, receiver = edge_index[0], edge_index[1]
    vectors = positions[receiver] - positions[sender] + shifts
    return vectors, torch.linalg.norm(vectors, dim=-1, keepdim=True)


def symmetric_strain(
    positions: torch.Tensor,
    unit_shifts: torch.Tensor,
    cell: torch.Tensor,
    edge_index: torch.Tensor,
    batch: torch.Tensor,
    num_graphs: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply a zero, differentiable symmetric strain eps per graph: r -> r (1 + eps).

    dE/d(eps) is then the virial (up to sign); returns (positions, shifts, eps).
    """
    strain = torch.zeros((num_graphs, 3, 3), dtype=positions.dtype, device=positions.device)
    strain.requires_grad_(True)
    symmetric = 0.5 * (strain + strain.transpose(-1, -2))
    positions = positions + torch.einsum("ni,nij->nj", positions, symmetric[batch])
    cells = cell.view(-1, 3, 3)
    cells = cells + torch.matmul(cells, symmetric)
    shifts = torch.einsum("ei,eij->ej", unit_shifts, cells[batch[edge_index[0]]])
    return positions, shifts, strain


def forces_and_virials(
    energy: torch.Tensor,
    positions: torch.Tensor,
    strain: Optional[torch.Tensor],
    cell: torch.Tensor,
    training: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """F = -dE/dr; virials W = -dE/d(eps); stress = dE/d(eps) / V (ASE's sign convention),
    zero for a graph without a cell (a molecule: V = 0), where stress has no meaning."""
    inputs = [positions] if strain is None else [positions, strain]
    gradients = torch.autograd.grad(
        outputs=[energy.sum()],
        inputs=inputs,
        retain_graph=training,
        create_graph=training,
        allow_unused=True,
    )
    forces = _zero_if_none(gradients[0], positions)
    if strain is None:
        return -forces, None, None
    strain_gradient = _zero_if_none(gradients[1], strain)
    cells = cell.view(-1, 3, 3)
    volumes = torch.linalg.det(cells).abs().view(-1, 1, 1)
    has_volume = volumes > 0
    divisor = torch.where(has_volume, volumes, torch.ones_like(volumes))  # no 0/0 where there is no cell
    stress = torch.where(has_volume, strain_gradient / divisor, torch.zeros_like(strain_gradient))
    return -forces, -strain_gradient, stress


def _zero_if_none(gradient: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if gradient is None else gradient
