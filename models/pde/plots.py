"""Figures logged to MLflow at the end of training: fields of a few held-out samples and error vs lead time."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # workers have no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from models.pde.config import PdeModelSpec  # noqa: E402
from models.pde.loss import denormalise, lead_time_errors  # noqa: E402


def field_figure(batch: dict, outputs: torch.Tensor, channel: int = 0, samples: int = 3):
    """Rows: samples; columns: input, target, prediction, |error| of one channel (physical units)."""
    n = min(samples, outputs.shape[0])
    x = denormalise(batch["x"].float(), batch).cpu()
    y = denormalise(batch["y"].float(), batch).cpu()
    p = denormalise(outputs.detach().float(), batch).cpu()
    fig, axes = plt.subplots(n, 4, figsize=(11, 2.7 * n), squeeze=False)
    for r in range(n):
        lo, hi = float(y[r, channel].min()), float(y[r, channel].max())
        panels = [("input", x[r, channel]), ("target", y[r, channel]), ("prediction", p[r, channel]),
                  ("|error|", (p[r, channel] - y[r, channel]).abs())]
        for col, (title, img) in enumerate(panels):
            ax = axes[r, col]
            kwargs = {} if col == 3 else {"vmin": lo, "vmax": hi}
            im = ax.imshow(img.numpy(), origin="lower", cmap="magma" if col == 3 else "RdBu_r", **kwargs)
            lead = float(batch["lead_time"][r])
            ax.set_title(f"{title} (lead {lead:.2f})" if r == 0 or col == 0 else title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def lead_time_figure(curves: dict[str, list[float]]):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ("direct", "rollout", "persistence"):
        if name in curves:
            ax.plot(curves["lead_time"], curves[name], marker="o", ms=3, label=name)
    ax.set_xlabel("lead time (normalised)")
    ax.set_ylabel("relative L1 error (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plots(model, batch: dict, outputs: torch.Tensor, spec: PdeModelSpec) -> dict:
    """``{"fields": Figure[, "error_vs_lead_time": Figure]}``; the curve needs a held-out batch (with ``traj``)."""
    figures = {"fields": field_figure(batch, outputs)}
    if "traj" in batch:
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            figures["error_vs_lead_time"] = lead_time_figure(lead_time_errors(model, batch, spec))
        finally:
            model.train(was_training)
    return figures
