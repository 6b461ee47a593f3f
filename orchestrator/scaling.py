"""Scaling-law fit of a scaling ladder (torch-free: numpy, scipy, and matplotlib for the plots).

A ladder trains model sizes N (parameters) by data budgets D (training samples seen); each trial ends with a final
loss L. We fit Chinchilla's law L(N, D) = E + A / N^alpha + B / D^beta as Hoffmann et al. (2022, approach 3) do:
minimise the Huber loss of ``logsumexp(a - alpha log N, b - beta log D, e) - log L`` (A = e^a, B = e^b, E = e^e)
with L-BFGS-B from the best points of a grid of starts, alpha and beta >= 0. Fitting in log space weighs every
trial by its relative error, and the small Huber delta keeps one diverged trial from bending the law.

- ``Trial(id, n, d, loss, flops_per_sample=None)``: one finished trial.
- ``fit_ladder(trials, *, delta=1e-3, n_boot=200, level=0.95, seed=0) -> LawFit``: the law, percentile intervals
  from refits on trials resampled with replacement, the one-axis fits L(N) at the largest D and L(D) at the
  largest N, and k (C = k N D): 6 (the 6ND rule), or fitted to measured ``flops_per_sample`` when trials carry it.
- ``predict(fit, n, d)``: the fitted loss. ``compute_optimal(fit, compute)``: N_opt(C), D_opt(C) and intervals.
- ``fit_metrics(fit)``: the MLflow metrics. ``residual_table(fit, trials)``: one row per trial (held-out too).
- ``plot_loss_vs_n(fit, trials, path)``, ``plot_compute_optimal(fit, trials, path)``: PNGs; they return the path.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber

PARAMS = ("E", "A", "alpha", "B", "beta")
SIX_ND = 6.0  # training FLOPs per parameter per sample of a dense model: 2 forward + 4 backward (Kaplan et al.)
_LOCAL_STARTS = 8  # grid points refined by L-BFGS-B; the rest of the grid only ranks the starts


@dataclass(frozen=True)
class Trial:
    """One finished trial: ``n`` parameters trained on ``d`` samples to final ``loss``; ``flops_per_sample`` is
    the measured training FLOPs per sample of its model (optional, on every trial or none)."""

    id: str
    n: float
    d: float
    loss: float
    flops_per_sample: float | None = None


@dataclass(frozen=True, eq=False)  # eq would compare the boot arrays elementwise and fail
class LawFit:
    """The fitted law; ``intervals`` maps each of PARAMS to its (lo, hi) at ``level``, empty if no refit worked."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    huber: float  # the minimised objective: sum over trials of Huber_delta(log L_fit - log L)
    k: float  # FLOPs per parameter per sample: C = k N D
    n_trials: int
    level: float
    intervals: dict[str, tuple[float, float]]
    boot: np.ndarray  # (successful refits, 5): E, A, alpha, B, beta of each bootstrap refit
    n_boot_failed: int  # refits dropped: optimiser failed, or the resample had < 3 distinct N or D
    n_axis: dict[str, float] | None  # {E, A, alpha, d}: L(N) = E + A / N^alpha at the largest D = d
    d_axis: dict[str, float] | None  # {E, B, beta, n}: L(D) = E + B / D^beta at the largest N = n
    notes: tuple[str, ...] = ()  # why a one-axis fit was omitted


def _lse(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logsumexp over the last axis and its softmax from one exp (scipy's pair costs twice this per step)."""
    top = terms.max(-1, keepdims=True)
    ex = np.exp(terms - top)
    total = ex.sum(-1, keepdims=True)
    return (top + np.log(total))[..., 0], ex / total


def _objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Huber objective / delta and its gradient; theta = (e, a_1, alpha_1, ..., a_m, alpha_m), x = log features
    (trials, m), y = log L. Dividing by delta keeps the values near |r|, where L-BFGS-B's tolerances are meant."""
    lse, weights = _lse(np.column_stack([np.full(len(y), theta[0]), theta[1::2] - theta[2::2] * x]))
    w = weights * np.clip(lse - y, -delta, delta)[:, None]
    grad = np.empty_like(theta)
    grad[0], grad[1::2], grad[2::2] = w[:, 0].sum(), w[:, 1:].sum(0), -(w[:, 1:] * x).sum(0)
    return float(huber(delta, lse - y).sum()) / delta, grad / delta


def _local(x: np.ndarray, y: np.ndarray, delta: float, starts) -> np.ndarray | None:
    """The best L-BFGS-B minimum over ``starts``, or None if none is finite."""
    bounds = [(None, None)] + [(None, None), (0.0, None)] * x.shape[1]
    best = None
    for start in starts:
        res = minimize(_objective, start, args=(x, y, delta), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-9})
        if np.isfinite(res.fun) and np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    return None if best is None else best.x


def _global(x: np.ndarray, y: np.ndarray, delta: float) -> np.ndarray | None:
    """Rank a grid of starts by the objective (vectorised), refine the best few. The grid is relative to the data,
    to suit any loss scale (the paper's absolute grid assumes language-model losses near 2): exponents 0..2, each
    power term worth a fraction of the median loss at the ladder's centre, E a fraction of the smallest loss."""
    exps, fracs = np.linspace(0.0, 2.0, 9), np.log([0.1, 0.3, 1.0])
    mesh = np.meshgrid(y.min() + np.log([0.01, 0.3, 0.6, 0.9]), *[v for _ in x.T for v in (fracs, exps)],
                       indexing="ij")
    g = np.stack([v.ravel() for v in mesh], axis=1)
    g[:, 1::2] += np.median(y) + g[:, 2::2] * x.mean(0)
    terms = np.concatenate([np.broadcast_to(g[:, None, :1], (len(g), len(y), 1)),
                            g[:, None, 1::2] - g[:, None, 2::2] * x[None]], axis=2)
    return _local(x, y, delta, g[np.argsort(huber(delta, _lse(terms)[0] - y).sum(1))[:_LOCAL_STARTS]])


def _natural(theta: np.ndarray) -> np.ndarray:
    return np.array([math.exp(theta[0]), math.exp(theta[1]), theta[2], math.exp(theta[3]), theta[4]])


def _check(trials: list[Trial], delta: float, n_boot: int, level: float) -> None:
    if not (delta > 0 and n_boot >= 0 and 0 < level < 1):
        raise ValueError(f"delta = {delta}, n_boot = {n_boot}, level = {level}: expected delta > 0, n_boot >= 0, "
                         "0 < level < 1")
    for i, t in enumerate(trials):
        if any(t.id == u.id for u in trials[:i]):
            raise ValueError(f"trial {t.id!r} appears twice in the ladder; give every trial its own id")
        for name in ("n", "d", "loss") + (("flops_per_sample",) if t.flops_per_sample is not None else ()):
            v = getattr(t, name)
            if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
                raise ValueError(f"trial {t.id!r}: {name} = {v!r}; expected a finite positive number")
    for axis, label in (("n", "model sizes N"), ("d", "data budgets D")):
        values = sorted({getattr(t, axis) for t in trials})
        if len(values) < 3:
            raise ValueError(f"the ladder has {len(values)} distinct {label} ({', '.join(f'{v:g}' for v in values)});"
                             f" a scaling-law fit needs at least 3 on each axis: add {label} to the ladder")
    if len(trials) < 5:
        raise ValueError(f"the ladder has {len(trials)} trials; the law has 5 parameters: run at least 5 trials")
    missing = [t.id for t in trials if t.flops_per_sample is None]
    if 0 < len(missing) < len(trials):
        raise ValueError(f"flops_per_sample is set on some trials but not on {missing}: set it on every trial or none")


def _flops_per_param(trials: list[Trial]) -> float:
    """k of C = k N D: measured FLOPs per sample fitted as k N through the origin by least squares, which weights the
    largest models most, as their compute is where the frontier is read; without measurements, the 6ND rule."""
    if trials[0].flops_per_sample is None:
        return SIX_ND
    n, f = np.array([t.n for t in trials]), np.array([t.flops_per_sample for t in trials])
    return float(n @ f / (n @ n))


def _axis_fit(trials: list[Trial], axis: str, delta: float) -> tuple[dict[str, float] | None, str | None]:
    """L(x) = E + C / x^p on the trials at the largest value of the other axis; (fit, None) or (None, why not)."""
    other = "d" if axis == "n" else "n"
    at = max(getattr(t, other) for t in trials)
    sel = [t for t in trials if getattr(t, other) == at]
    distinct = len({getattr(t, axis) for t in sel})
    if distinct < 3:
        return None, f"{axis}-axis fit omitted: {distinct} distinct {axis.upper()} at {other.upper()} = {at:g}, needs 3"
    theta = _global(np.log([[getattr(t, axis)] for t in sel]), np.log([t.loss for t in sel]), delta)
    if theta is None:
        return None, f"{axis}-axis fit omitted: the optimiser found no finite minimum"
    coef, power = ("A", "alpha") if axis == "n" else ("B", "beta")
    return {"E": math.exp(theta[0]), coef: math.exp(theta[1]), power: float(theta[2]), other: float(at)}, None


def _bootstrap(x, y, theta, delta: float, n_boot: int, seed: int) -> tuple[np.ndarray, int]:
    """Refits on trials resampled with replacement, each started from the point estimate (it lies near theirs);
    a resample with < 3 distinct N or D counts as failed, as the ladder itself would be refused."""
    rng, rows = np.random.default_rng(seed), []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        fit = None if min(len(np.unique(c)) for c in x[idx].T) < 3 else _local(x[idx], y[idx], delta, [theta])
        rows += [] if fit is None else [_natural(fit)]
    return np.array(rows).reshape(-1, 5), n_boot - len(rows)


def _one_blas_thread():
    """L-BFGS-B (scipy >= 1.15) calls BLAS on 5-vectors, which a multi-threaded OpenBLAS makes 10-20x slower on a
    busy machine (scipy#22438). threadpoolctl is optional: without it the fit is the same, only slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_ladder(trials: list[Trial], *, delta: float = 1e-3, n_boot: int = 200, level: float = 0.95,
               seed: int = 0) -> LawFit:
    """Fit L(N, D) to the ladder's trials; ValueError names the trial or the axis that makes the fit impossible."""
    _check(trials, delta, n_boot, level)
    x, y = np.log([[t.n, t.d] for t in trials]), np.log([t.loss for t in trials])
    with _one_blas_thread():
        theta = _global(x, y, delta)
        if theta is None:
            raise ValueError("the scaling-law fit found no finite minimum; check the ladder's losses")
        boot, failed = _bootstrap(x, y, theta, delta, n_boot, seed)
        (n_axis, n_note), (d_axis, d_note) = _axis_fit(trials, "n", delta), _axis_fit(trials, "d", delta)
    q = 50 * (1 - level)
    lo, hi = np.percentile(boot, [q, 100 - q], axis=0) if len(boot) else ([], [])
    E, A, alpha, B, beta = (float(v) for v in _natural(theta))
    return LawFit(E=E, A=A, alpha=alpha, B=B, beta=beta, huber=delta * _objective(theta, x, y, delta)[0],
                  k=_flops_per_param(trials), n_trials=len(trials), level=level,
                  intervals={p: (float(u), float(v)) for p, u, v in zip(PARAMS, lo, hi)}, boot=boot,
                  n_boot_failed=failed, n_axis=n_axis, d_axis=d_axis, notes=tuple(n for n in (n_note, d_note) if n))


def predict(fit: LawFit, n, d) -> np.ndarray:
    """E + A / N^alpha + B / D^beta, broadcast over ``n`` and ``d``."""
    return fit.E + fit.A / np.asarray(n, float) ** fit.alpha + fit.B / np.asarray(d, float) ** fit.beta


def _n_opt(A, alpha, B, beta, samples_times_params):
    """argmin_N of A / N^alpha + B / D^beta subject to N D = C / k (Hoffmann et al., eq. 4)."""
    return (alpha * A / (beta * B)) ** (1 / (alpha + beta)) * samples_times_params ** (beta / (alpha + beta))


def compute_optimal(fit: LawFit, compute) -> dict[str, np.ndarray]:
    """``n_opt``, ``d_opt`` for each compute budget C (FLOPs) and their percentile intervals over the bootstrap
    refits (``n_lo``, ``n_hi``, ``d_lo``, ``d_hi``; NaN without refits)."""
    s = np.atleast_1d(np.asarray(compute, float)) / fit.k
    q = 50 * (1 - fit.level)
    # a law with alpha = beta = 0 has no optimum (NaN, skipped); no refits at all gives an all-NaN band
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        n_opt = _n_opt(fit.A, fit.alpha, fit.B, fit.beta, s)
        n_boot = _n_opt(*fit.boot.T[1:, :, None], s[None, :])
        (n_lo, n_hi), (d_lo, d_hi) = (np.nanpercentile(v, [q, 100 - q], axis=0) if len(fit.boot)
                                      else np.full((2, len(s)), np.nan) for v in (n_boot, s / n_boot))
    return {"compute": s * fit.k, "n_opt": n_opt, "d_opt": s / n_opt, "n_lo": n_lo, "n_hi": n_hi, "d_lo": d_lo,
            "d_hi": d_hi}


def fit_metrics(fit: LawFit) -> dict[str, float]:
    """``fit/{E,A,alpha,B,beta}``, each with ``_lo``/``_hi`` when the bootstrap gave intervals; ``fit/huber_loss``,
    ``fit/n_trials``, ``fit/bootstrap_used``, ``fit/bootstrap_failed``, ``fit/flops_per_param_sample``; and
    ``fit/n_axis/{E,A,alpha}``, ``fit/d_axis/{E,B,beta}`` when those fits were made."""
    out = {f"fit/{p}": float(getattr(fit, p)) for p in PARAMS}
    for p, (lo, hi) in fit.intervals.items():
        out[f"fit/{p}_lo"], out[f"fit/{p}_hi"] = lo, hi
    out.update({"fit/huber_loss": fit.huber, "fit/n_trials": float(fit.n_trials),
                "fit/bootstrap_used": float(len(fit.boot)), "fit/bootstrap_failed": float(fit.n_boot_failed),
                "fit/flops_per_param_sample": fit.k})
    for axis, values, keys in (("n_axis", fit.n_axis, "E A alpha"), ("d_axis", fit.d_axis, "E B beta")):
        out.update({f"fit/{axis}/{key}": float(values[key]) for key in keys.split()} if values else {})
    return out


def residual_table(fit: LawFit, trials: list[Trial]) -> list[dict]:
    """One row per trial: residual = log L - log L_fit, rel_residual = L / L_fit - 1 (positive: worse than the law)."""
    preds = [float(predict(fit, t.n, t.d)) for t in trials]
    return [{"trial": t.id, "N": t.n, "D": t.d, "L": t.loss, "L_fit": p, "residual": math.log(t.loss / p),
             "rel_residual": t.loss / p - 1} for t, p in zip(trials, preds)]


def _figure(rows: int):
    """Panels on their own Agg canvas: no pyplot, so no global backend switch and no figure kept alive."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 1.5 + 4 * rows), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]


def _save(fig, axes, path, title: str) -> str:
    for ax in axes:
        ax.set(xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return str(path)


def plot_loss_vs_n(fit: LawFit, trials: list[Trial], path) -> str:
    """Observed loss against N, one colour per D, with the fitted L(N, D) for each D."""
    from matplotlib import colormaps

    fig, (ax,) = _figure(1)
    ds = sorted({t.d for t in trials})
    ns = np.log10([t.n for t in trials])
    grid = np.logspace(ns.min() - 0.2, ns.max() + 0.2, 200)
    for d, colour in zip(ds, colormaps["viridis"](np.linspace(0, 0.9, len(ds)))):
        at = [t for t in trials if t.d == d]
        ax.scatter([t.n for t in at], [t.loss for t in at], color=colour, zorder=3, label=f"D = {d:.3g} samples")
        ax.plot(grid, predict(fit, grid, d), color=colour, lw=1.2)
    losses = [t.loss for t in trials]
    low, high = min(losses), max(losses)
    if fit.E >= low / 3:  # drawn where it is near the data; a tiny E would squash the points into one line
        ax.axhline(fit.E, color="grey", ls=":", label=f"E = {fit.E:.3g} (irreducible loss)")
        low = min(low, fit.E)
    ax.set_ylim(low / 1.15, high * 1.15)
    ax.set(xlabel="parameters N", ylabel="final loss L")
    ci = {p: "[{:.3f}, {:.3f}]".format(*fit.intervals.get(p, (math.nan, math.nan))) for p in ("alpha", "beta")}
    return _save(fig, [ax], path, f"L = E + A/N^α + B/D^β (lines), {fit.level:.0%} bootstrap intervals\n"
                                  f"α = {fit.alpha:.3f} {ci['alpha']}, β = {fit.beta:.3f} {ci['beta']}")


def plot_compute_optimal(fit: LawFit, trials: list[Trial], path) -> str:
    """N_opt(C) above D_opt(C), with their bootstrap bands, from the ladder's smallest compute to 100x its largest
    (the extrapolation a ladder is run for); each trial is a point at its own C = k N D."""
    fig, axes = _figure(2)
    c_trials = np.array([fit.k * t.n * t.d for t in trials])
    cs = np.logspace(np.log10(c_trials.min()), np.log10(c_trials.max()) + 2, 120)
    opt, power = compute_optimal(fit, cs), fit.beta / (fit.alpha + fit.beta)
    for ax, axis, label, colour, exponent in zip(axes, "nd", ("parameters N", "training samples D"), ("C0", "C1"),
                                                 (power, 1 - power)):
        ax.plot(cs, opt[f"{axis}_opt"], color=colour, label=f"compute-optimal, ∝ C^{exponent:.3f}")
        ax.fill_between(cs, opt[f"{axis}_lo"], opt[f"{axis}_hi"], color=colour, alpha=0.25,
                        label=f"{fit.level:.0%} bootstrap band")
        ax.scatter(c_trials, [getattr(t, axis) for t in trials], color="grey", s=14, label="trials")
        ax.set(ylabel=label)
    axes[-1].set(xlabel="compute C (FLOPs)")
    return _save(fig, axes, path, f"compute-optimal allocation, C = {fit.k:.3g} N D")
