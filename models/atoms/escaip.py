"""EScAIP: attention over each atom's neighbours with scalar features only (written for sciscale).

Tokens are the (atom, neighbour) pairs of the padded neighbour matrix [N, K]; each atom's tokens attend to
each other through ``F.scaled_dot_product_attention``. Smoothness matters for molecular dynamics, so every
place where a neighbour enters carries the cutoff envelope: attention logits get ``log(envelope)`` (a
neighbour at the cutoff has exactly zero weight), sums are envelope-weighted, and the bond-orientational
order features are envelope-weighted too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from models.atoms.config import AtomsModelSpec
from models.atoms.geometry import (edge_vectors, energy_derivatives, poly_envelope, safe_lengths,
                                   strain_positions, volumes)

_LOG_ZERO = -80.0  # exp(-80) ~ 1e-35: padded neighbours get no weight, yet rows never become all -inf


def _mlp(dim_in: int, dim_hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.SiLU(), nn.Linear(dim_hidden, dim_out))


def legendre(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """P_0..P_lmax of x stacked on a new last axis (Bonnet's recursion)."""
    polys = [torch.ones_like(x), x]
    for n in range(1, lmax):
        polys.append(((2 * n + 1) * x * polys[n] - n * polys[n - 1]) / (n + 1))
    return torch.stack(polys[: lmax + 1], dim=-1)


def bond_order(unit: torch.Tensor, env: torch.Tensor, lmax: int) -> torch.Tensor:
    """Steinhardt-like q_l^2 per atom: sum_jk w_j w_k P_l(u_j . u_k) / (1 + sum_j w_j)^2, [N, lmax + 1]."""
    cos = (unit @ unit.transpose(-1, -2)).clamp(-1.0, 1.0)
    weights = env[:, :, None] * env[:, None, :]
    q = torch.einsum("njk,njkl->nl", weights, legendre(cos, lmax))
    return q / (1.0 + env.sum(-1, keepdim=True)) ** 2


class NeighborBlock(nn.Module):
    """Self-attention over one atom's neighbour tokens, a feed-forward layer, and the node update."""

    def __init__(self, hidden: int, heads: int, ffn: int, scale: float | None = None):
        super().__init__()
        self.heads, self.scale = heads, scale  # attention logits' scale; None: SDPA's 1/sqrt(d_head)
        self.norm_attn, self.norm_ffn, self.norm_node = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ffn = _mlp(hidden, ffn * hidden, hidden)
        self.node_in = nn.Linear(hidden, 2 * hidden)
        self.node_mlp = _mlp(2 * hidden, 2 * hidden, hidden)

    def forward(self, edge, node, nbr_idx, bias, env):
        n, k, h = edge.shape
        tokens = edge + self.node_in(node)[..., :h][:, None] + self.node_in(node)[..., h:][nbr_idx]
        q, kk, v = self.qkv(self.norm_attn(tokens)).view(n, k, 3, self.heads, h // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), kk.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias[:, None, None, :], scale=self.scale)
        tokens = tokens + self.out(att.transpose(1, 2).reshape(n, k, h))
        tokens = tokens + self.ffn(self.norm_ffn(tokens))
        pooled = (tokens * env[..., None]).sum(1) / (1.0 + env.sum(1, keepdim=True))
        node = node + self.node_mlp(torch.cat([self.norm_node(node), pooled], dim=-1))
        return tokens, node


class EScAIP(nn.Module):
    """Energy (and forces, stress) of a batch of structures given as a padded neighbour matrix."""

    def __init__(self, spec: AtomsModelSpec):
        super().__init__()
        size = spec.sizes
        hidden, self.lmax = size["hidden"], size["boo_lmax"]
        self.cutoff, self.conservative, self.predict_stress = spec.cutoff, spec.forces == "conservative", spec.stress
        self.max_neighbors = spec.max_neighbors  # read by the ASE calculator to build neighbour lists
        self.activation_checkpointing = spec.activation_checkpointing
        self.embed_node = nn.Embedding(spec.max_atomic_number + 1, hidden)
        self.embed_pair = nn.Embedding(spec.max_atomic_number + 1, hidden)
        self.register_buffer("rbf_centers", torch.linspace(0.0, spec.cutoff, size["num_rbf"]))
        self.rbf_width = spec.cutoff / size["num_rbf"]
        self.edge_in = _mlp(size["num_rbf"] + hidden, hidden, hidden)
        self.boo_in = nn.Linear(self.lmax + 1, hidden)
        heads = size["heads"]
        # muP: 1/d_head logits, times sqrt(base d_head) so that the base model is standard (models/mup.py)
        scale = None if spec.mup is None else math.sqrt(spec.mup.base_width // heads) / (hidden // heads)
        self.blocks = nn.ModuleList(NeighborBlock(hidden, heads, size["ffn"], scale) for _ in range(size["layers"]))
        self.energy_head = nn.Sequential(nn.LayerNorm(hidden), _mlp(hidden, hidden, 1))
        if not self.conservative:
            self.force_head = nn.Sequential(nn.LayerNorm(hidden), _mlp(hidden, hidden, 2))
        self.register_buffer("ref_energy", torch.zeros(spec.max_atomic_number + 1))

    def set_reference_energies(self, table: torch.Tensor) -> None:
        """Per-element energies indexed by atomic number (eV), added to the per-atom energies."""
        self.ref_energy.copy_(table.to(self.ref_energy.dtype))

    def _features(self, batch, vec):
        mask = batch["nbr_mask"]
        length, unit = safe_lengths(vec, mask, fill=2 * self.cutoff)
        env = poly_envelope(length, self.cutoff) * mask
        rbf = torch.exp(-(((length[..., None] - self.rbf_centers) / self.rbf_width) ** 2))
        z = batch["numbers"]
        edge = self.edge_in(torch.cat([rbf * env[..., None], self.embed_pair(z)[batch["nbr_idx"]]], dim=-1))
        edge = edge * env[..., None]
        node = self.embed_node(z) + self.boo_in(bond_order(unit, env, self.lmax))
        return edge, node, env, length, unit

    def _trunk(self, batch, vec):
        edge, node, env, length, unit = self._features(batch, vec)
        bias = torch.log(env.clamp_min(math.exp(_LOG_ZERO)))
        for block in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                edge, node = checkpoint(block, edge, node, batch["nbr_idx"], bias, env, use_reentrant=False)
            else:
                edge, node = block(edge, node, batch["nbr_idx"], bias, env)
        return edge, node, env, length, unit

    def _energy(self, batch, node):
        atom_e = self.energy_head(node).squeeze(-1) + self.ref_energy[batch["numbers"]]
        energy = torch.zeros(batch["cell"].shape[0], dtype=atom_e.dtype, device=atom_e.device)
        return energy.index_add(0, batch["batch"], atom_e)

    def _direct(self, batch, edge, env, length, unit, cell):
        heads = self.force_head(edge) * env[..., None]
        forces = -(heads[..., :1] * unit).sum(1)  # sign learned; built from unit vectors, so rotation-equivariant
        out = {"forces": forces}
        if self.predict_stress:
            pair = torch.einsum("nk,nkc,nkd->ncd", heads[..., 1] * length, unit, unit)
            stress = torch.zeros_like(cell).index_add(0, batch["batch"], pair.to(cell.dtype))  # bf16 under autocast
            out["stress"] = stress / volumes(cell)[:, None, None]
        return out

    def forward(self, batch: dict) -> dict:
        if not self.conservative:
            edge, node, env, length, unit = self._trunk(batch, edge_vectors(batch, batch["positions"], batch["cell"]))
            return {"energy": self._energy(batch, node), **self._direct(batch, edge, env, length, unit, batch["cell"])}
        # forces are -dE/dx, so gradients are needed even when the caller evaluates under no_grad
        with torch.enable_grad():
            pos0 = batch["positions"].detach().requires_grad_(True)
            strain = torch.zeros_like(batch["cell"], requires_grad=True) if self.predict_stress else None
            pos, cell = strain_positions({**batch, "positions": pos0}, strain)
            vec = edge_vectors(batch, pos, cell)
            # double backward through SDPA needs the math kernel (fused kernels have no second derivative)
            with sdpa_kernel(SDPBackend.MATH):
                _, node, *_ = self._trunk(batch, vec)
            energy = self._energy(batch, node)
            out = energy_derivatives(energy, pos0, strain, batch["cell"], stress=self.predict_stress,
                                     create_graph=self.training)
        if not self.training:
            energy = energy.detach()
        return {"energy": energy, **out}
