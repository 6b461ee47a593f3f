"""Poseidon's scores for the PDE family (the suite behind ``sciscale eval``).

Poseidon (camlab-ethz/poseidon ``scOT/inference.py`` with ``scOT/metrics.py``) scores a test set by the
relative L1 error of each sample and channel group (sum of |pred - target| over the group's channels and
points, divided by the sum of |target|, in %), takes the median over samples per group and then the mean
over the groups ("mean over median relative L1"). Here that is computed on physical fields with the
family's ``relative_l1`` (whose denominator has a small floor for identically zero targets), from the first
kept snapshot of every held-out trajectory:

* directly at every kept lead t_k - t_0 (the model conditioned on that lead time),
* by autoregressive rollout, k repeated steps of the smallest kept lead (error growth with rollout steps;
  step k is compared with kept snapshot k, which lies at k steps for equally spaced snapshots),
* and for persistence (the first snapshot predicted unchanged).

Rollout and persistence need the outputs to be the first input channels (extra inputs, e.g. coefficient
fields, are carried along unchanged). Cost: 2 (K - 1) forward passes per micro-batch for K kept snapshots
(K - 1 without rollout); per sample only K x groups floats are kept.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from models.family import EvalOptions, EvalReport, real_indices
from models.pde.config import PdeModelSpec
from models.pde.loss import denormalise, relative_l1
from models.pde.transform import PairTransform
from models.pde.transform import make_transform as _family_transform

COLUMNS = ["lead", "lead_time", "direct_median", "direct_mean", "rollout_median", "persistence_median"]
KINDS = ("direct", "rollout", "persistence")


def make_transform(spec: PdeModelSpec, manifest) -> PairTransform:
    """The held-out transform: first kept snapshot -> last, plus the whole kept trajectory (``traj``)."""
    return _family_transform(spec, manifest, split="val")


def group_errors(pred: torch.Tensor, target: torch.Tensor, groups: list[int], scale: torch.Tensor) -> np.ndarray:
    """Relative L1 (%) per sample and channel group of physical fields [b, C, H, W] -> [b, G]."""
    bounds = np.cumsum([0] + list(groups))
    per_group = [relative_l1(pred[:, a:b], target[:, a:b], [b - a], scale[:, a:b]) for a, b in
                 zip(bounds[:-1], bounds[1:])]
    return 100 * torch.stack(per_group, 1).double().cpu().numpy()


def poseidon_median(errors: np.ndarray) -> float:
    """Poseidon's headline: the median over samples per channel group, then the mean over groups; [N, G]."""
    return float(np.median(errors, axis=0).mean())


@torch.no_grad()
def _score_batch(model, batch: dict, spec: PdeModelSpec, errors: dict) -> None:
    """Append [b, G] errors for every (kind, kept lead k >= 1) of one micro-batch."""
    traj, leads = batch["traj"], batch["traj_lead"]
    x0, step, out_c = traj[:, 0], leads[:, 1] - leads[:, 0], spec.out_ch
    can_roll = out_c <= x0.shape[1]
    scale, state = batch["std"][:, :out_c].float(), x0
    for k in range(1, traj.shape[1]):
        target = denormalise(traj[:, k, :out_c].float(), batch)
        preds = {"direct": model({**batch, "x": x0, "lead_time": leads[:, k] - leads[:, 0]})}
        if can_roll:
            state = torch.cat([model({**batch, "x": state, "lead_time": step}), x0[:, out_c:]], 1)
            preds.update(rollout=state[:, :out_c], persistence=x0[:, :out_c])
        for kind, pred in preds.items():
            errors.setdefault((kind, k), []).append(
                group_errors(denormalise(pred.float(), batch), target, spec.groups, scale))


def evaluate(model, batches: Iterable[dict], spec: PdeModelSpec, manifest,
             options: EvalOptions = EvalOptions()) -> EvalReport:
    """The suite's ``evaluate``: Poseidon's median relative L1 at every lead, direct and by rollout."""
    errors, seen, lead_times = {}, 0, None
    for batch in batches:
        picked = real_indices(batch["_valid"].tolist(), seen, options.max_samples)
        if picked:
            index = torch.tensor(picked)
            moved = {k: v[index].to(options.device) for k, v in batch.items()}
            _score_batch(model, moved, spec, errors)
            lead_times = moved["traj_lead"][0].double().cpu().numpy()
            seen += len(picked)
        if options.max_samples is not None and seen >= options.max_samples:
            break
    if seen == 0:
        raise ValueError("pde eval: the held-out data gave no real samples to score; check the dataset "
                         "(sciscale data inspect URL) and --max-samples")
    stacked = {key: np.concatenate(parts) for key, parts in errors.items()}
    scores = _scores(stacked, spec, dict(manifest.attrs or {}))
    table = _table(stacked, lead_times)
    figures = _figures(table) if options.plots else {}
    return EvalReport(scores=scores, columns=list(COLUMNS), table=table, figures=figures, samples=seen)


def _scores(errors: dict, spec: PdeModelSpec, attrs: dict) -> dict[str, float]:
    names = {"direct": "rel_l1_median/lead_{}", "rollout": "rel_l1_median_rollout/step_{}",
             "persistence": "rel_l1_median_persistence/lead_{}"}
    out = {names[kind].format(k): poseidon_median(e) for (kind, k), e in sorted(errors.items())}
    out.update({f"rel_l1_mean/lead_{k}": float(e.mean()) for (kind, k), e in errors.items() if kind == "direct"})
    last = max(k for _, k in errors)
    out["rel_l1_median"] = out[f"rel_l1_median/lead_{last}"]
    out["rel_l1_mean"] = out[f"rel_l1_mean/lead_{last}"]
    if ("persistence", last) in errors:
        out["rel_l1_median_persistence"] = out[f"rel_l1_median_persistence/lead_{last}"]
    medians = np.median(errors[("direct", last)], axis=0)
    for name, value in zip(group_names(spec, attrs), medians):
        out[f"rel_l1_median_by_group/{name}"] = float(value)
    return out


def group_names(spec: PdeModelSpec, attrs: dict) -> list[str]:
    """One name per channel group from the dataset's ``channel_names`` (e.g. ``u+v``), else ``group_<i>``."""
    channels = list(attrs.get("channel_names") or [])
    bounds = np.cumsum([0] + spec.groups)
    if len(channels) < bounds[-1]:
        return [f"group_{i}" for i in range(len(spec.groups))]
    return ["+".join(channels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _table(errors: dict, lead_times: np.ndarray) -> list[dict]:
    rows = []
    for k in sorted({k for _, k in errors}):
        cell = lambda kind: poseidon_median(errors[(kind, k)]) if (kind, k) in errors else None  # noqa: E731
        rows.append({"lead": k, "lead_time": float(lead_times[k] - lead_times[0]), "direct_median": cell("direct"),
                     "direct_mean": float(errors[("direct", k)].mean()), "rollout_median": cell("rollout"),
                     "persistence_median": cell("persistence")})
    return rows


def _figures(table: list[dict]) -> dict:
    from models.pde.plots import lead_time_figure  # matplotlib only where figures are made

    curves = {"lead_time": [r["lead_time"] for r in table]}
    for kind in KINDS:
        if table[0][f"{kind}_median"] is not None:
            curves[kind] = [r[f"{kind}_median"] for r in table]
    fig = lead_time_figure(curves)
    fig.axes[0].set_ylabel("median relative L1 error (%)")
    fig.axes[0].set_title("Poseidon's metric: median over samples, mean over channel groups", fontsize=8)
    return {"error_vs_lead": fig}
