"""Training loss and per-structure metrics of interatomic potentials."""

from __future__ import annotations

import torch


def _err(diff: torch.Tensor, kind: str) -> torch.Tensor:
    return diff.square() if kind == "mse" else diff.abs()


def loss(outputs: dict, batch: dict, spec) -> torch.Tensor:
    """Weighted energy-per-atom, force and stress errors.

    Forces: the summed per-component error over the micro-batch is divided by (structures x mean atoms
    per structure of the training set), not by this micro-batch's atom count, so every atom of the global
    batch carries the same weight however atoms are spread over micro-batches and ranks.
    """
    n_atoms = batch["n_atoms"].to(outputs["energy"].dtype)
    energy = _err((outputs["energy"] - batch["energy"]) / n_atoms, spec.loss).mean()
    force_sum = _err(outputs["forces"] - batch["forces"], spec.loss).sum() / 3.0
    forces = force_sum / batch["mean_atoms"].sum()
    total = spec.energy_weight * energy + spec.force_weight * forces
    if spec.stress and spec.stress_weight > 0 and "stress" in outputs:
        has = batch["has_stress"].to(outputs["stress"].dtype)
        per = _err(outputs["stress"] - batch["stress"], spec.loss).mean((-1, -2))
        total = total + spec.stress_weight * (per * has).sum() / has.sum().clamp_min(1.0)
    return total


def _per_structure_mean(values: torch.Tensor, batch: dict) -> torch.Tensor:
    sums = torch.zeros(len(batch["n_atoms"]), dtype=values.dtype, device=values.device)
    return sums.index_add(0, batch["batch"], values) / batch["n_atoms"].to(values.dtype)


@torch.no_grad()
def metrics(outputs: dict, batch: dict, spec) -> dict[str, torch.Tensor]:
    """Per-structure values [b]: energy MAE (meV/atom), force MAE (meV/A) and the zero-force baseline,
    stress MAE (meV/A^3; 0 for structures without a stress label)."""
    n_atoms = batch["n_atoms"].to(outputs["energy"].dtype)
    out = {
        "energy_mae_mev_atom": 1000 * ((outputs["energy"] - batch["energy"]).abs() / n_atoms),
        "force_mae_mev_a": 1000 * _per_structure_mean((outputs["forces"] - batch["forces"]).abs().mean(-1), batch),
        "force_zero_baseline_mae_mev_a": 1000 * _per_structure_mean(batch["forces"].abs().mean(-1), batch),
    }
    if "stress" in outputs:
        err = (outputs["stress"] - batch["stress"]).abs().mean((-1, -2))
        out["stress_mae_mev_a3"] = 1000 * err * batch["has_stress"].to(err.dtype)
    return {k: v.detach().float() for k, v in out.items()}
