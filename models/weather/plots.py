"""Figures for MLflow: prediction/truth/error maps and RMSE against lead time beside the baselines."""

from __future__ import annotations

import numpy as np
import torch

from models.weather.config import WeatherModelSpec
from models.weather.metrics import rmse_over_time, weighted_mse

_MAP_EXAMPLES = 2


@torch.no_grad()
def rollout(model, batch: dict, spec: WeatherModelSpec) -> torch.Tensor:
    """Autoregressive forecasts [b, K, V_out, H, W] at leads lead_hours * 1..K (normalised units).

    Each prediction becomes the newest input step; with history > 1 this assumes the stored history step
    equals the lead, as the converter's defaults do for 6 h leads. The model is called through ``forward``
    (not ``predict``): on a model split by Accelerate, hooks on ``forward`` move the inputs to the device of
    its first layers and load offloaded weights.
    """
    inputs, lead = batch["inputs"], batch["lead_hours"]
    steps = [model({"inputs": inputs, "lead_hours": lead})]
    if spec.rollout_steps > 1 and spec.model_outputs != spec.model_inputs:
        raise ValueError("model.rollout_steps > 1 feeds predictions back as inputs, so model.out_variables "
                         f"must equal model.in_variables; got {spec.model_outputs} vs {spec.model_inputs}")
    for _ in range(spec.rollout_steps - 1):
        inputs = torch.cat([inputs[:, 1:], steps[-1][:, None]], dim=1)
        steps.append(model({"inputs": inputs, "lead_hours": lead}))
    return torch.stack(steps, dim=1)


def rmse_by_lead(forecast: torch.Tensor, batch: dict, spec: WeatherModelSpec) -> dict[str, np.ndarray]:
    """WeatherBench2 RMSE [K, V] in physical units of a forecast [b, K, V, H, W] and of both baselines."""
    positions = [spec.model_inputs.index(v) for v in spec.model_outputs]
    k = forecast.shape[1]
    persistence = batch["inputs"][:, -1:, positions].expand(-1, k, -1, -1, -1)
    scale = batch["std"][:, None, :].square()
    w = batch["lat_weights"]
    out = {}
    for name, pred in (("model", forecast), ("persistence", persistence), ("climatology", batch["clim"])):
        mse = weighted_mse(pred.float(), batch["targets"], _per_lead(w)) * scale
        out[name] = rmse_over_time(mse, dim=0).cpu().numpy()
    return out


def _per_lead(w: torch.Tensor) -> torch.Tensor:
    # [b, H] -> [b, 1, 1, H, 1] for fields [b, K, V, H, W]
    return w[:, None, :] if w.ndim == 1 else w


def plots(model, batch: dict, outputs, spec: WeatherModelSpec) -> dict:
    """The family's ``plots``: maps for a few held-out times and RMSE against lead with the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    was_training = model.training
    model.eval()
    try:
        forecast = rollout(model, batch, spec)
    finally:
        model.train(was_training)
    shown = range(min(_MAP_EXAMPLES, len(forecast)))
    figures = {f"maps_{i}": _map_figure(forecast[i, 0], batch, i, spec) for i in shown}
    figures["rmse_vs_lead"] = _rmse_figure(rmse_by_lead(forecast, batch, spec), spec)
    return figures


def _map_figure(pred: torch.Tensor, batch: dict, i: int, spec: WeatherModelSpec):
    import matplotlib.pyplot as plt

    names = spec.model_outputs
    std = batch["std"][i].cpu().numpy()
    truth = batch["targets"][i, 0].cpu().numpy() * std[:, None, None]
    pred = pred.float().cpu().numpy() * std[:, None, None]
    fig, axes = plt.subplots(len(names), 3, figsize=(11, 2.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        # anomalies about the truth's mean: the stored mean is not in the batch, and anomalies read better
        base = truth[row].mean()
        lo, hi = np.percentile(truth[row] - base, [1, 99])
        for col, (title, field) in enumerate((("prediction", pred[row] - base), ("truth", truth[row] - base),
                                              ("error", pred[row] - truth[row]))):
            ax = axes[row, col]
            limit = max(abs(lo), abs(hi), 1e-12) if col < 2 else max(np.abs(field).max(), 1e-12)
            im = ax.imshow(field, cmap="RdBu_r", vmin=-limit, vmax=limit, extent=(0, 360, -90, 90))
            ax.set_title(f"{name} {title}", fontsize=8)
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, shrink=0.7)
    hours = int(batch["time"][i])
    fig.suptitle(f"init {np.datetime64(hours, 'h')} UTC, lead {spec.lead_hours} h (anomaly about the field mean)")
    fig.tight_layout()
    return fig


def _rmse_figure(rmse: dict[str, np.ndarray], spec: WeatherModelSpec):
    import matplotlib.pyplot as plt

    names, leads = spec.model_outputs, spec.rollout_leads
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for v, name in enumerate(names):
        ax = axes[v // cols, v % cols]
        for label, style in (("model", "o-"), ("persistence", "s--"), ("climatology", "^:")):
            ax.plot(leads, rmse[label][:, v], style, label=f"{spec.arch if label == 'model' else label}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("lead (h)")
        ax.set_ylabel("lat-weighted RMSE")
    for extra in range(len(names), rows * cols):
        axes[extra // cols, extra % cols].axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig
