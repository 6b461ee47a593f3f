"""Edge vectors from the padded neighbour matrix, and forces/stress as derivatives of the energy."""

from __future__ import annotations

import torch


def strain_positions(batch: dict, strain: torch.Tensor | None):
    """Positions and cells deformed by a (symmetrised) per-structure strain, for the stress derivative."""
    pos, cell = batch["positions"], batch["cell"]
    if strain is None:
        return pos, cell
    sym = 0.5 * (strain + strain.transpose(-1, -2))
    pos = pos + torch.einsum("nc,ncd->nd", pos, sym[batch["batch"]])
    cell = cell + cell @ sym
    return pos, cell


def edge_vectors(batch: dict, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """[N, K, 3] vectors from each atom to its padded neighbours (periodic images included)."""
    offsets = torch.einsum("nkc,ncd->nkd", batch["nbr_shift"].to(pos.dtype), cell[batch["batch"]])
    return pos[batch["nbr_idx"]] - pos[:, None, :] + offsets


def safe_lengths(vec: torch.Tensor, mask: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths and unit vectors; padded slots get a dummy vector so that no NaN gradient leaks out."""
    dummy = torch.zeros_like(vec)
    dummy[..., 0] = fill
    vec = torch.where(mask[..., None], vec, dummy)
    length = torch.linalg.vector_norm(vec, dim=-1)
    return length, vec / length[..., None]


def poly_envelope(length: torch.Tensor, cutoff: float, p: int = 5) -> torch.Tensor:
    """Smooth cutoff (value and two derivatives vanish at the cutoff), from DimeNet."""
    x = (length / cutoff).clamp(max=1.0)
    env = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return torch.where(length < cutoff, env, torch.zeros_like(env))


def volumes(cell: torch.Tensor) -> torch.Tensor:
    """Cell volumes [B]; non-periodic structures (zero cell) get 1 so that stress stays finite."""
    vol = torch.linalg.det(cell).abs()
    return torch.where(vol > 1e-9, vol, torch.ones_like(vol))


def energy_derivatives(energy, pos, strain, cell, *, stress: bool, create_graph: bool):
    """forces = -dE/dx; stress = (1/V) dE/d(strain) in ASE's sign convention (eV/A^3, [B, 3, 3])."""
    inputs = [pos, strain] if stress else [pos]
    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph)
    out = {"forces": -grads[0]}
    if stress:
        out["stress"] = grads[1] / volumes(cell)[:, None, None]
    return out
