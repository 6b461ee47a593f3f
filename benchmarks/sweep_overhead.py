"""A sweep's per-trial overhead (Tune, the trial's run creation, the MLflow parent and child runs, the summary)
against `sciscale launch` of the same trial spec, side by side on one Ray head and MLflow server.

Each repeat runs, alternately, `sciscale launch TRIAL` and `sciscale sweep SWEEP` where SWEEP is TRIAL with a
one-trial grid (the trial's own learning rate), and times each command from start to exit. The overhead is
(sweep - launch) / launch, as medians over repeats.

    python benchmarks/sweep_overhead.py --steps 400 --repeats 3

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


def _spec(data: Path, work: Path, uri: str, steps: int, sweep: bool) -> Path:
    raw = yaml.safe_load((ROOT / "tests/integration/specs/backbone.yaml").read_text())
    raw["data"]["train"][0]["url"], raw["data"]["val"][0]["url"] = f"{data}/train", f"{data}/val"
    raw["train"].update({"max_steps": steps, "log_every": 20, "checkpoint_every": steps // 2, "eval_batches": 2})
    raw["distributed"]["workers"] = 1
    raw["storage"] = {"runs_root": str(work / "runs")}
    raw["tracking"].update({"uri": uri, "experiment": "bench-sweep", "system_metrics_every_s": 0})
    if sweep:
        raw["sweep"] = {"method": "grid", "parameters": {"optim.lr": {"values": [raw["optim"]["lr"]]}}}
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
            sweep = _spec(work / "ns", work, server.endpoint, args.steps, sweep=True)
            cli = [sys.executable, "-m", "orchestrator.cli"]
            times: dict[str, list[float]] = {"launch": [], "sweep": []}
            for i in range(args.repeats):
                for kind in (("launch", "sweep") if i % 2 == 0 else ("sweep", "launch")):
                    argv = (cli + ["launch", str(trial), "--run-id", f"launch-{i}"] if kind == "launch" else
                            cli + ["sweep", str(sweep), "--sweep-id", f"sweep-{i}"])
                    times[kind].append(_timed(argv, env, work / f"{kind}-{i}.log"))
                    print(f"repeat {i}: {kind} {times[kind][-1]:.1f} s", flush=True)
        finally:
            head.stop()
            server.stop()
    launch, sweep_s = statistics.median(times["launch"]), statistics.median(times["sweep"])
    pairs = [(s - l) / l for s, l in zip(times["sweep"], times["launch"])]
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; FNO debug 16x16, 1 worker, {args.steps} steps")
    print(f"launch: median {launch:.1f} s; sweep of one trial: median {sweep_s:.1f} s")
    print(f"overhead: {sweep_s - launch:+.1f} s = {(sweep_s - launch) / launch * 100:+.1f}% of the launch "
          f"(per pair: {', '.join(f'{p * 100:+.1f}%' for p in pairs)})")


if __name__ == "__main__":
    main()
