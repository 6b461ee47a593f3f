"""A sweep's parent run: the table of trials, the best trial, plots, and for a scaling ladder the fit.

Everything is read back from the trials' MLflow child runs (tag sciscale.sweep_id), not from Tune's results,
so a resumed sweep reports the trials of every attempt, and `sciscale status SWEEP_ID` prints the same table.
"""

from __future__ import annotations

import math
import os
import tempfile

from orchestrator.runs import RunRecord, mlflow_client

SWEEP_TAG = "sciscale.sweep_id"


def trials(parent: RunRecord, params: list[str], metric: str, mode: str) -> list[dict]:
    """One row per trial: run id, status, its parameters, final and best metric, steps, wall time, N, D."""
    client = mlflow_client(parent.tracking_uri)
    experiment = client.get_run(parent.mlflow_run_id).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`{SWEEP_TAG}` = '{parent.run_id}' and "
                              "tags.`sciscale.kind` = 'trial'", max_results=5000)
    rows = []
    for run in sorted(runs, key=lambda r: r.info.run_name):
        history = [m.value for m in client.get_metric_history(run.info.run_id, metric)]
        best = (min if mode == "min" else max)(history) if history else None
        steps = client.get_metric_history(run.info.run_id, "train/loss")
        end = run.info.end_time or run.info.start_time
        rows.append({
            "trial": run.info.run_name, "status": run.info.status,
            **{p: run.data.params.get(p) for p in params},
            "final": run.data.metrics.get(metric), "best": best,
            "steps": max((m.step for m in steps), default=0), "wall_s": round((end - run.info.start_time) / 1000, 1),
            "params_n": run.data.metrics.get("model/params"), "samples_d": run.data.metrics.get("model/train_samples"),
            "flops_per_sample": run.data.metrics.get("model/flops_per_sample"),
            "mlflow_run_id": run.info.run_id,
            "reason": run.data.tags.get("sciscale.end_reason", ""),
        })
    return rows


def table_lines(rows: list[dict], params: list[str], metric: str) -> list[str]:
    """The trial table as fixed-width text (console and `sciscale status`)."""
    head = ["trial", "status", *params, f"final {metric}", "best", "steps", "wall s"]
    body = [[r["trial"], r["status"], *[str(r[p]) for p in params], _num(r["final"]), _num(r["best"]),
             str(r["steps"]), f"{r['wall_s']:.0f}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def summarise(spec, parent: RunRecord, results, echo) -> bool:  # noqa: ARG001 - results: Tune's, not needed
    """Log the table, best trial, plots (and the scaling fit) to the parent run; True if a trial finished."""
    s = spec.sweep
    params = list(s.parameters)
    rows = trials(parent, params, s.metric, s.mode)
    client = mlflow_client(parent.tracking_uri)
    for line in table_lines(rows, params, s.metric):
        echo(line)
    scored = [r for r in rows if r["status"] == "FINISHED" and r["final"] is not None]
    if rows:
        client.log_table(parent.mlflow_run_id, {k: [r[k] for r in rows] for k in rows[0]}, "trials.json")
    if not scored:
        echo(f"sweep {parent.run_id}: no trial finished with {s.metric}")
        return False
    best = (min if s.mode == "min" else max)(scored, key=lambda r: r["final"])
    client.set_tag(parent.mlflow_run_id, "sciscale.best_run_id", best["trial"])
    client.set_tag(parent.mlflow_run_id, "sciscale.best_mlflow_run_id", best["mlflow_run_id"])
    client.set_tag(parent.mlflow_run_id, "sciscale.best_params", ", ".join(f"{p}={best[p]}" for p in params))
    client.log_metric(parent.mlflow_run_id, f"best/{s.metric}", best["final"])
    client.log_metric(parent.mlflow_run_id, "sweep/trials", len(rows))
    client.log_metric(parent.mlflow_run_id, "sweep/finished", len(scored))
    echo(f"best trial {best['trial']}: {s.metric} {best['final']:.4g} with "
         + ", ".join(f"{p}={best[p]}" for p in params))
    with tempfile.TemporaryDirectory() as tmp:
        paths = [plot_metric_vs_params(rows, params, s.metric, os.path.join(tmp, "metric_vs_params.png")),
                 plot_learning_curves(client, rows, params, s.metric, os.path.join(tmp, "learning_curves.png"))]
        if s.method == "scaling":
            paths += _scaling_fit(client, parent, scored, s.metric, tmp, echo)
        for path in paths:
            client.log_artifact(parent.mlflow_run_id, path, "plots")
    return True


def _scaling_fit(client, parent: RunRecord, rows: list[dict], metric: str, tmp: str, echo) -> list[str]:
    from orchestrator import scaling

    points = [scaling.Trial(r["trial"], r["params_n"], r["samples_d"], r["final"], r["flops_per_sample"])
              for r in rows if r["params_n"] and r["samples_d"]]
    try:
        fit = scaling.fit_ladder(points)
    except ValueError as exc:
        echo(f"scaling fit not possible: {exc}")
        client.set_tag(parent.mlflow_run_id, "sciscale.fit_error", str(exc)[:5000])
        return []
    from mlflow.entities import Metric
    import time

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in scaling.fit_metrics(fit).items() if math.isfinite(v)]
    client.log_batch(parent.mlflow_run_id, metrics=metrics)
    residuals = scaling.residual_table(fit, points)
    client.log_table(parent.mlflow_run_id, {k: [r[k] for r in residuals] for k in residuals[0]}, "fit_residuals.json")
    lo, hi = fit.intervals["alpha"], fit.intervals["beta"]
    echo(f"fit L(N, D) = {fit.E:.3g} + {fit.A:.3g}/N^{fit.alpha:.3f} + {fit.B:.3g}/D^{fit.beta:.3f}  "
         f"(alpha {lo[0]:.3f}..{lo[1]:.3f}, beta {hi[0]:.3f}..{hi[1]:.3f}, {len(points)} trials)")
    return [scaling.plot_loss_vs_n(fit, points, os.path.join(tmp, "scaling_loss_vs_n.png")),
            scaling.plot_compute_optimal(fit, points, os.path.join(tmp, "scaling_compute_optimal.png"))]


def plot_metric_vs_params(rows: list[dict], params: list[str], metric: str, path: str) -> str:
    """The final metric against each swept parameter (one panel each); stopped trials hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.6), squeeze=False)
    for ax, p in zip(axes[0], params):
        values = [_value(r[p]) for r in rows]
        numeric = all(isinstance(v, float) for v in values)
        labels = sorted({str(v) for v in values}, key=lambda x: _value(x) if numeric else x)
        for r, v in zip(rows, values):
            if r["final"] is None:
                continue
            x = v if numeric else labels.index(str(v))
            done = r["status"] == "FINISHED"
            ax.scatter([x], [r["final"]], s=40, facecolors="C0" if done else "none", edgecolors="C0")
        if numeric and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(p)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} by parameter (hollow: stopped early or failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(client, rows: list[dict], params: list[str], metric: str, path: str) -> str:
    """Every trial's metric against the step on one figure; stopped trials dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {r["trial"]: sorted((m.step, m.value) for m in client.get_metric_history(r["mlflow_run_id"], metric))
                 for r in rows}
    if max((len(h) for h in histories.values()), default=0) < 2:  # evaluated at the end only: training curves
        metric = "train/loss"
        histories = {r["trial"]: sorted((m.step, m.value) for m in client.get_metric_history(r["mlflow_run_id"],
                                                                                              metric)) for r in rows}
    colours = plt.get_cmap("tab20" if len(rows) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, r in enumerate(rows):
        history = histories[r["trial"]]
        if not history:
            continue
        label = f"{r['trial'].rsplit('-', 1)[-1]}: " + ", ".join(f"{p.split('.')[-1]}={r[p]}" for p in params)
        ax.plot(*zip(*history), marker="o", ms=3, color=colours(i % colours.N), label=label,
                linestyle="-" if r["status"] == "FINISHED" else "--")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2 if len(rows) > 8 else 1)
    ax.set_title(f"{metric} of every trial (dashed: stopped early or failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _value(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text
