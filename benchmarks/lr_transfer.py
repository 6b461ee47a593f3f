"""Learning-rate transfer (issue 15): does the best learning rate stay put when ClimaX debug widens 4x?

Two `sciscale sweep` runs, one per optimizer, each a grid of learning rate x width (16, the debug model's, and
64) x parameterisation (standard, muP with base width 16), every trial the same data, steps and seed, one worker
each. AdamW sweeps its rate; Muon sweeps the rate of its matrices (the AdamW half keeps the example's 2e-3). The
score is the final val/loss. Prints, per optimizer and parameterisation, the loss at each rate and width and
whether the best rate moved by more than one grid step, and draws the curves.

    python benchmarks/lr_transfer.py --steps 60 --plot docs/img/lr-transfer-climax.png
    python benchmarks/lr_transfer.py --steps 60 --optimizers muon --rates 1,3   # past the grid's top

Figures go to docs/optimizers.md.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from optimizers import CLI, _data  # noqa: E402 - the same generated data as the Muon-vs-AdamW benchmark

WIDTHS = (16, 64)
BASE = 16
RATES = {  # optimizer -> the grid of the rate swept (half a decade apart)
    "adamw": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "muon": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
}


def _sweep_spec(name: str, work: Path, uri: str, steps: int, train: str, val: str) -> Path:
    raw = yaml.safe_load((ROOT / "examples/weather/climax_debug.yaml").read_text())
    raw["name"] = f"lr-{name}"
    raw["model"]["rollout_steps"] = 1  # the converted leads end at 24 h
    raw["data"].update({"train": [{"url": train}], "val": [{"url": val}], "num_workers": 0})
    raw["train"].update({"max_steps": steps, "log_every": 10, "eval_every": 0, "checkpoint_every": steps,
                         "eval_batches": 4})
    raw["distributed"].update({"workers": 1, "resources_per_worker": {"CPU": 1}})
    raw["storage"] = {"runs_root": str(work / "runs")}
    raw["tracking"] = {"uri": uri, "experiment": "bench-lr-transfer", "system_metrics_every_s": 0}
    schedule = {"kind": "cosine", "warmup_steps": 10}
    raw["optim"] = ({"name": "adamw", "lr": 2e-3, "schedule": schedule} if name == "adamw" else
                    {"name": "muon", "lr": 0.02, "adam_lr": 2e-3, "schedule": schedule})
    raw["sweep"] = {"method": "grid", "metric": "val/loss", "mode": "min", "max_concurrent": 2, "parameters": {
        "optim.lr": {"values": RATES[name]}, "model.width": {"values": list(WIDTHS)},
        "model.mup": {"values": [None, {"base_width": BASE}]}}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _results(uri: str, sweep_id: str) -> dict[tuple[bool, int, float], float]:
    """(muP?, width, rate) -> final val/loss of each finished trial (nan for a diverged or failed one)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bench-lr-transfer")
    out = {}
    for run in client.search_runs(exp.experiment_id, filter_string=f"tags.`sciscale.sweep_id` = '{sweep_id}' and "
                                  "tags.`sciscale.kind` = 'trial'"):
        p = run.data.params
        key = (p.get("model.mup.base_width") not in (None, "None"), int(p["model.width"]), float(p["optim.lr"]))
        loss = run.data.metrics.get("val/loss", math.nan)
        out[key] = loss if run.info.status == "FINISHED" and math.isfinite(loss) else math.nan
    return out


def _best(results: dict, mup: bool, width: int, rates: list[float]) -> int | None:
    losses = [results.get((mup, width, r), math.nan) for r in rates]
    finite = [(v, i) for i, v in enumerate(losses) if math.isfinite(v)]
    return min(finite)[1] if finite else None


def _plot(all_results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), sharey=True)
    panels = [(opt, mup) for opt in RATES for mup in (False, True)]
    for ax, (opt, mup) in zip(axes, panels):
        rates = RATES[opt]
        for width, colour in zip(WIDTHS, ("tab:blue", "tab:red")):
            losses = [all_results[opt].get((mup, width, r), math.nan) for r in rates]
            ax.plot(rates, losses, "o-", color=colour, label=f"width {width}")
            best = _best(all_results[opt], mup, width, rates)
            if best is not None:
                ax.plot(rates[best], losses[best], "*", color=colour, markersize=16)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{'Muon (matrix lr)' if opt == 'muon' else 'AdamW'}, {'muP' if mup else 'standard'}")
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final val/loss")
    axes[0].legend()
    fig.suptitle("ClimaX debug: best learning rate (star) at width 16 and 64")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optimizers", default="adamw,muon")
    parser.add_argument("--plot", default=None, help="write the figure here (PNG)")
    parser.add_argument("--rates", default=None, metavar="R1,R2,...",
                        help="sweep these rates instead of each optimizer's grid (to extend a grid past its edge)")
    args = parser.parse_args()
    if args.rates:
        for name in RATES:
            RATES[name] = [float(r) for r in args.rates.split(",")]

    from orchestrator import services

    all_results = {}
    with tempfile.TemporaryDirectory(prefix="sciscale-bench-lr-") as tmp:
        work = Path(tmp)
        server = services.start_mlflow_server(work / "mlflow")
        head = services.start_ray_head(work / "ray", num_cpus=4)
        env = {**os.environ, "RAY_ADDRESS": head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **services.ray_client_env(head.extra["token_path"])}
        try:
            train, val = _data("weather", work, env)
            for name in args.optimizers.split(","):
                spec = _sweep_spec(name, work, server.endpoint, args.steps, train, val)
                log = work / f"{name}.log"
                with open(log, "w") as sink:
                    proc = subprocess.run(CLI + ["sweep", str(spec), "--sweep-id", f"lr-{name}"], env=env, cwd=ROOT,
                                          stdout=sink, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    raise RuntimeError(f"sweep {name} failed:\n{log.read_text()[-4000:]}")
                all_results[name] = _results(server.endpoint, f"lr-{name}")
                print(f"{name}: {sorted(all_results[name].items())}", flush=True)
        finally:
            head.stop()
            server.stop()
    load = os.getloadavg()
    print(f"\nClimaX debug, {args.steps} steps, 1 worker per trial, final val/loss; load average {load[0]:.1f}")
    print("| optimizer | parameterisation | width | " + " | ".join("rate" for _ in next(iter(RATES.values()))) +
          " | best rate |")
    for name, results in all_results.items():
        rates = RATES[name]
        print(f"\n{name} rates: {rates}")
        for mup in (False, True):
            bests = []
            for width in WIDTHS:
                losses = " | ".join(f"{results.get((mup, width, r), math.nan):.4f}" for r in rates)
                best = _best(results, mup, width, rates)
                bests.append(best)
                print(f"| {name} | {'muP' if mup else 'standard'} | {width} | {losses} | "
                      f"{rates[best] if best is not None else 'none'} |")
            moved = None if None in bests else abs(bests[0] - bests[1])
            print(f"  best rate moved {moved} grid step(s) from width {WIDTHS[0]} to {WIDTHS[1]}")
    if args.plot:
        _plot(all_results, args.plot)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
