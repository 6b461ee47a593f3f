"""WeatherBench2's deterministic scores for the weather family (the suite behind ``sciscale eval``).

Per output variable and lead, in the stored variable's physical units:

* RMSE: the square root of the time mean of the area-weighted spatial MSE (cell-area latitude weights
  normalised to mean 1, ``metrics.lat_weights``), as WeatherBench2 defines it (``metrics.py``, ``RMSE`` with
  ``_spatial_average`` then a time mean, then the square root);
* ACC: the uncentred anomaly correlation against the dataset's climatology (per hour of day, from the train
  range), per time and then averaged over times;

for the model, reached by autoregressive rollout (predictions fed back as the newest input) to every lead
the dataset holds that is a multiple of ``model.lead_hours``, beside persistence (the last input, RMSE and
ACC) and climatology (RMSE). A model whose outputs cannot be fed back (out_variables != in_variables, or a
history step that differs from the lead) is scored at its direct lead only, and the table says so.

Cost: one forward pass per rollout step per micro-batch (max lead / lead_hours of them; 40 for 6 h steps
to 10 days), plus a handful of reductions per scored lead; nothing is kept per sample beyond running sums,
so memory is that of one micro-batch and its current state. A bounded call during training
(``EvalOptions(max_samples=N, plots=False)``) costs N x steps forward passes.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from models.family import EvalOptions, EvalReport, real_indices
from models.weather.config import WeatherModelSpec
from models.weather.metrics import weighted_acc, weighted_mse
from models.weather.transform import WeatherTransform

# WeatherBench2's headline variables (Rasp et al. 2023) in its naming; marked in the table and scorecard.
HEADLINE = ("geopotential_500", "temperature_850", "specific_humidity_700", "2m_temperature",
            "10m_u_component_of_wind", "10m_v_component_of_wind", "u_component_of_wind_850",
            "v_component_of_wind_850", "mean_sea_level_pressure", "total_precipitation_24hr")
COLUMNS = ["variable", "headline", "lead_h", "rmse", "rmse_persistence", "rmse_climatology", "acc",
           "acc_persistence", "note"]
_CURVES_MAX = 12  # RMSE-vs-lead panels; with more outputs only the headline ones are drawn


def can_roll(spec: WeatherModelSpec, attrs: dict) -> bool:
    """Whether predictions can be fed back as inputs: the same variables, and a history step equal to the lead."""
    same_step = spec.history == 1 or int(attrs.get("history_step_hours", spec.lead_hours)) == spec.lead_hours
    return spec.model_outputs == spec.model_inputs and same_step


def eval_leads(spec: WeatherModelSpec, manifest) -> list[int]:
    """Leads scored (hours): every stored multiple of ``lead_hours``, or ``lead_hours`` alone without rollout."""
    attrs = dict(manifest.attrs or {})
    if not can_roll(spec, attrs):
        return [spec.lead_hours]
    return sorted(h for h in {int(x) for x in attrs.get("lead_hours", [])} if h % spec.lead_hours == 0)


def make_transform(spec: WeatherModelSpec, manifest) -> WeatherTransform:
    """The held-out transform: the family's, with targets at every lead in :func:`eval_leads`."""
    return WeatherTransform(spec, manifest, leads=eval_leads(spec, manifest))


class _Sums:
    """Running sums over held-out times of the per-time MSE (physical units) and ACC, [K leads, V]."""

    def __init__(self, leads: int, variables: int):
        zero = lambda: np.zeros((leads, variables))  # noqa: E731
        self.mse = {"model": zero(), "persistence": zero(), "climatology": zero()}
        self.acc = {"model": zero(), "persistence": zero()}
        self.count = 0

    def add(self, name: str, k: int, pred: torch.Tensor, batch: dict) -> None:
        truth, clim, w = batch["targets"][:, k].float(), batch["clim"][:, k].float(), batch["lat_weights"]
        mse = weighted_mse(pred.float(), truth, w) * batch["std"].float().square()
        self.mse[name][k] += mse.double().sum(0).cpu().numpy()
        if name in self.acc:
            self.acc[name][k] += weighted_acc(pred.float(), truth, clim, w).double().sum(0).cpu().numpy()


@torch.no_grad()
def _score_batch(model, batch: dict, spec: WeatherModelSpec, leads: list[int], sums: _Sums) -> None:
    """Roll the model out to the largest lead, scoring it and both baselines at every lead in ``leads``."""
    positions = [spec.model_inputs.index(v) for v in spec.model_outputs]
    persistence = batch["inputs"][:, -1, positions]
    at_step = {h // spec.lead_hours: k for k, h in enumerate(leads)}
    state, last = batch["inputs"], max(at_step)
    for step in range(1, last + 1):
        pred = model({"inputs": state, "lead_hours": batch["lead_hours"]})
        if step in at_step:
            sums.add("model", at_step[step], pred, batch)
        if step < last:  # the prediction becomes the newest input step
            state = torch.cat([state[:, 1:], pred[:, None].to(state.dtype)], dim=1)
    for k in range(len(leads)):
        sums.add("persistence", k, persistence, batch)
        sums.add("climatology", k, batch["clim"][:, k], batch)
    sums.count += len(persistence)


def evaluate(model, batches: Iterable[dict], spec: WeatherModelSpec, manifest,
             options: EvalOptions = EvalOptions()) -> EvalReport:
    """The suite's ``evaluate``: WeatherBench2 RMSE and ACC per variable and lead, with both baselines."""
    leads = eval_leads(spec, manifest)
    names = spec.model_outputs
    sums = _Sums(len(leads), len(names))
    for batch in batches:
        picked = real_indices(batch["_valid"].tolist(), sums.count, options.max_samples)
        if picked:
            index = torch.tensor(picked)
            _score_batch(model, {k: v[index].to(options.device) for k, v in batch.items()}, spec, leads, sums)
        if options.max_samples is not None and sums.count >= options.max_samples:
            break
    if sums.count == 0:
        raise ValueError("weather eval: the held-out data gave no real samples to score; check the dataset "
                         "(sciscale data inspect URL) and --max-samples")
    scores = _scores(sums, names, leads)
    note = "" if can_roll(spec, dict(manifest.attrs or {})) else _NO_ROLLOUT
    table = [_row(scores, v, h, note) for v in names for h in leads]
    figures = _figures(scores, names, leads, spec) if options.plots else {}
    return EvalReport(scores=scores, columns=list(COLUMNS), table=table, figures=figures, samples=sums.count)


_NO_ROLLOUT = ("direct lead only: outputs cannot be fed back (out_variables != in_variables, or the history "
               "step differs from lead_hours)")


def _scores(sums: _Sums, names: list[str], leads: list[int]) -> dict[str, float]:
    out = {}
    for label, suffix in (("model", ""), ("persistence", "_persistence"), ("climatology", "_climatology")):
        rmse = np.sqrt(sums.mse[label] / sums.count)
        acc = sums.acc[label] / sums.count if label in sums.acc else None
        for k, hours in enumerate(leads):
            for v, name in enumerate(names):
                out[f"rmse{suffix}/{name}/{hours}h"] = float(rmse[k, v])
                if acc is not None:
                    out[f"acc{suffix}/{name}/{hours}h"] = float(acc[k, v])
    return out


def _row(scores: dict, name: str, hours: int, note: str) -> dict:
    key = f"{name}/{hours}h"
    return {"variable": name, "headline": name in HEADLINE, "lead_h": hours, "rmse": scores[f"rmse/{key}"],
            "rmse_persistence": scores[f"rmse_persistence/{key}"],
            "rmse_climatology": scores[f"rmse_climatology/{key}"], "acc": scores[f"acc/{key}"],
            "acc_persistence": scores[f"acc_persistence/{key}"], "note": note}


def _grid(scores: dict, prefix: str, names: list[str], leads: list[int]) -> np.ndarray:
    return np.array([[scores[f"{prefix}/{n}/{h}h"] for h in leads] for n in names])


def _figures(scores: dict, names: list[str], leads: list[int], spec: WeatherModelSpec) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    return {"scorecard": _scorecard(scores, names, leads), "rmse_vs_lead": _curves(scores, names, leads, spec)}


def _scorecard(scores: dict, names: list[str], leads: list[int]):
    """WeatherBench2-style scorecard: (model - baseline) / baseline RMSE in %, variable by lead; blue is better."""
    import matplotlib.pyplot as plt

    model = _grid(scores, "rmse", names, leads)
    labels = [f"{n} *" if n in HEADLINE else n for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.6 * max(4, len(leads)), 1.5 + 0.35 * len(names)),
                             squeeze=False, constrained_layout=True)
    for ax, baseline in zip(axes[0], ("persistence", "climatology")):
        ref = _grid(scores, f"rmse_{baseline}", names, leads)
        rel = 100 * (model - ref) / np.where(ref > 0, ref, np.nan)
        limit = float(np.clip(np.nanmax(np.abs(rel)) if np.isfinite(rel).any() else 1.0, 1.0, 100.0))
        im = ax.imshow(rel, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        if rel.size <= 400:
            for (r, c), value in np.ndenumerate(rel):
                ax.text(c, r, f"{value:+.0f}" if np.isfinite(value) else "-", ha="center", va="center", fontsize=7,
                        color="white" if abs(value) > 0.6 * limit else "black")
        ax.set_xticks(range(len(leads)), [f"{h}h" for h in leads], fontsize=7, rotation=90)
        ax.set_yticks(range(len(names)), labels, fontsize=7)
        ax.set_title(f"RMSE vs {baseline} (%)", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("model RMSE relative to the baselines (* headline variable)", fontsize=9)
    return fig


def _curves(scores: dict, names: list[str], leads: list[int], spec: WeatherModelSpec):
    """RMSE against lead per variable, model beside persistence and climatology."""
    import matplotlib.pyplot as plt

    shown = names if len(names) <= _CURVES_MAX else ([n for n in names if n in HEADLINE] or names)[:_CURVES_MAX]
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, constrained_layout=True)
    for v, name in enumerate(shown):
        ax = axes[v // cols, v % cols]
        for label, prefix, style in ((spec.arch, "rmse", "o-"), ("persistence", "rmse_persistence", "s--"),
                                     ("climatology", "rmse_climatology", "^:")):
            ax.plot(leads, _grid(scores, prefix, [name], leads)[0], style, ms=3, label=label)
        ax.set_title(name + (" *" if name in HEADLINE else ""), fontsize=9)
        ax.set_xlabel("lead (h)")
        ax.set_ylabel("area-weighted RMSE")
    for extra in range(len(shown), rows * cols):
        axes[extra // cols, extra % cols].axis("off")
    axes[0, 0].legend(fontsize=7)
    return fig
