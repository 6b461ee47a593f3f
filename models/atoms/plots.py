"""Parity plots of predicted against reference energies and forces (logged to MLflow by the trainer)."""

from __future__ import annotations

import numpy as np
import torch


def _parity(ax, ref: np.ndarray, pred: np.ndarray, label: str, unit: str) -> None:
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
    ax.scatter(ref, pred, s=4, alpha=0.5)
    mae = float(np.abs(ref - pred).mean())
    ax.set(xlabel=f"reference {label} ({unit})", ylabel=f"predicted {label} ({unit})",
           title=f"{label}: MAE {1000 * mae:.1f} m{unit}")


def plots(model, batch: dict, outputs: dict, spec) -> dict:
    """{energy_parity, force_parity} figures for one evaluation batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    n_atoms = as_np(batch["n_atoms"])
    figures = {}
    fig, ax = plt.subplots(figsize=(4.5, 4.5), constrained_layout=True)
    _parity(ax, as_np(batch["energy"]) / n_atoms, as_np(outputs["energy"]) / n_atoms, "energy per atom", "eV")
    figures["energy_parity"] = fig
    fig, ax = plt.subplots(figsize=(4.5, 4.5), constrained_layout=True)
    _parity(ax, as_np(batch["forces"]).ravel(), as_np(outputs["forces"]).ravel(), "force component", "eV/A")
    figures["force_parity"] = fig
    return figures


def parity_from_arrays(energy_ref, energy_pred, n_atoms, forces_ref, forces_pred) -> dict:
    """The same figures from arrays gathered over a whole evaluation set (scripts and docs)."""
    batch = {"energy": torch.as_tensor(energy_ref), "n_atoms": torch.as_tensor(n_atoms),
             "forces": torch.as_tensor(forces_ref)}
    return plots(None, batch, {"energy": torch.as_tensor(energy_pred), "forces": torch.as_tensor(forces_pred)}, None)
