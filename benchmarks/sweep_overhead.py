"""A sweep's per-trial overhead (Tune, the trial's run creation, the MLflow parent and child runs, the summary)
against `sciscale launch` of the same trial spec, side by side on one Ray head and MLflow server.

Each repeat runs, alternately, ``--trials`` K launches of TRIAL one after another (`sciscale launch TRIAL`) and
`sciscale sweep SWEEP` where SWEEP is TRIAL with a one-value grid (the trial's own learning rate) repeated K times
(``num_samples``), one trial at a time, and times each side from start to exit. The per-trial overhead is
(sweep - launches) / K, against one launch, as medians over repeats. K = 1 puts all of the sweep's fixed costs
(Tune's start, the parent run, the summary) on one trial; a larger K shares them, as a real sweep does.

    python benchmarks/sweep_overhead.py --steps 400 --repeats 3
    python benchmarks/sweep_overhead.py --steps 60 --repeats 3 --trials 4

Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _spec(data: Path, work: Path, uri: str, steps: int, sweep: bool, trials: int = 1) -> Path:
    raw = yaml.safe_load((ROOT / "tests/integration/specs/backbone.yaml").read_text())
    raw["data"]["train"][0]["url"], raw["data"]["val"][0]["url"] = f"{data}/train", f"{data}/val"
    raw["train"].update({"max_steps": steps, "log_every": 20, "checkpoint_every": steps // 2, "eval_batches": 2})
    raw["distributed"]["workers"] = 1
    raw["storage"] = {"runs_root": str(work / "runs")}
    raw["tracking"].update({"uri": uri, "experiment": "bench-sweep", "system_metrics_every_s": 0})
    if sweep:
        raw["sweep"] = {"method": "grid", "num_samples": trials, "max_concurrent": 1,
                        "parameters": {"optim.lr": {"values": [raw["optim"]["lr"]]}}}
    path = work / ("sweep.yaml" if sweep else "trial.yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


def _timed(argv: list[str], env: dict, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.run(argv, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:5])} failed; see {log}:\n{log.read_text()[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps of the trial (about 2 minutes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=1, help="trials per sweep (and launches per repeat)")
    args = parser.parse_args()

    from data.generators.navier_stokes import generate
    from orchestrator import services

    with tempfile.TemporaryDirectory(prefix="sciscale-bench-sweep-") as tmp:
        work = Path(tmp)
        generate(str(work / "ns"), n_train=32, n_val=8, resolution=16, seed=0, progress=False)
        server = services.start_mlflow_server(work / "mlflow")
        head = services.start_ray_head(work / "ray", num_cpus=4)
        try:
            env = {**os.environ, "RAY_ADDRESS": head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
                   "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **services.ray_client_env(head.extra["token_path"])}
            trial = _spec(work / "ns", work, server.endpoint, args.steps, sweep=False)
            sweep = _spec(work / "ns", work, server.endpoint, args.steps, sweep=True, trials=args.trials)
            cli = [sys.executable, "-m", "orchestrator.cli"]
            times: dict[str, list[float]] = {"launch": [], "sweep": []}
            for i in range(args.repeats):
                for kind in (("launch", "sweep") if i % 2 == 0 else ("sweep", "launch")):
                    if kind == "launch":
                        times[kind].append(sum(_timed(cli + ["launch", str(trial), "--run-id", f"launch-{i}-{k}"], env,
                                                      work / f"launch-{i}-{k}.log") for k in range(args.trials)))
                    else:
                        times[kind].append(_timed(cli + ["sweep", str(sweep), "--sweep-id", f"sweep-{i}"], env,
                                                  work / f"sweep-{i}.log"))
                    print(f"repeat {i}: {kind} {times[kind][-1]:.1f} s", flush=True)
        finally:
            head.stop()
            server.stop()
    k = args.trials
    launch, sweep_s = statistics.median(times["launch"]), statistics.median(times["sweep"])
    pairs = [(s - l) / l for s, l in zip(times["sweep"], times["launch"])]  # (sweep - launches) / launches
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; FNO debug 16x16, 1 worker, {args.steps} steps, "
          f"{k} trial(s)")
    print(f"{k} launch(es): median {launch:.1f} s ({launch / k:.1f} s each); sweep of {k} trial(s): median "
          f"{sweep_s:.1f} s")
    print(f"per-trial overhead: {(sweep_s - launch) / k:+.1f} s = {(sweep_s - launch) / launch * 100:+.1f}% of a "
          f"launch; of a 2-minute trial: {(sweep_s - launch) / k / 120 * 100:+.1f}% "
          f"(per pair: {', '.join(f'{p * 100:+.1f}%' for p in pairs)})")


if __name__ == "__main__":
    main()
