"""Resilience costs, measured through `sciscale launch` on a local Ray head, MLflow server and SeaweedFS.

1. Recovery: SIGKILL one of 2 workers (held at a chosen step by trainers/faults.py, so the kill lands
   exactly there) and time from the kill to the next completed training step of the restarted group
   (the "first step after start" line rank 0 prints with a wall-clock time). Several kills in one run.
2. Checkpoint blocking: the time a step is blocked by a checkpoint (`sys/checkpoint_block_s`, from the
   start of the save to the return of the report) with train.checkpoint_upload background against sync,
   runs root on SeaweedFS (s3://), alternating runs, plus the median step time of each run.

    python benchmarks/resilience.py --kills 3 --repeats 2

Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _launch(args, data: Path, runs: str, uri: str, run_id: str, extra: list[str], env: dict, log: Path):
    argv = [sys.executable, "-m", "orchestrator.cli", "launch", str(ROOT / "tests/integration/specs/backbone.yaml"),
            "--run-id", run_id]
    for item in [f"data.train.0.url={data}/train", f"data.val.0.url={data}/val", f"storage.runs_root={runs}",
                 f"tracking.uri={uri}", "tracking.experiment=bench-resilience", "train.log_every=1",
                 f"model.resolution={args.resolution}", f"model.size={args.size}", "train.eval_batches=1", *extra]:
        argv += ["--set", item]
    sink = open(log, "w")
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True)


def _wait_file(path: Path, proc, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} never appeared")
        time.sleep(0.02)
    return path.read_text()


def recovery(args, data: Path, work: Path, uri: str, env: dict) -> list[float]:
    steps = [args.first_kill + i * args.kill_every for i in range(args.kills)]
    faults = work / "faults"
    faults.mkdir()
    env = {**env, "SCISCALE_FAULT_HOLD": ",".join(f"step@{s}" for s in steps), "SCISCALE_FAULT_DIR": str(faults)}
    log = work / "recovery.log"
    proc = _launch(args, data, str(work / "runs"), uri, "recovery",
                   [f"train.max_steps={steps[-1] + 20}", f"train.checkpoint_every={args.checkpoint_every}",
                    f"distributed.max_failures={args.kills}"], env, log)
    kills = []
    for step in steps:
        pid = int(_wait_file(faults / f"step-{step}-rank1.pid", proc))
        time.sleep(2.5)  # let Ray register the checkpoints still in flight (one per 2 s controller poll)
        kills.append(time.time())
        os.kill(pid, signal.SIGKILL)
        (faults / f"release-step-{step}").write_text("")
        print(f"killed rank 1 (pid {pid}) at step {step}", flush=True)
    if proc.wait(timeout=1800) != 0:
        raise RuntimeError(f"recovery run failed:\n{log.read_text()[-4000:]}")
    rank0 = (work / "runs" / "recovery" / "sciscale" / "logs" / "worker-rank0.log").read_text()  # rank 0's own lines
    done = [float(t) for t in re.findall(r"first step after start: step \d+ done at ([0-9.]+)", rank0)]
    resumed = re.findall(r"\[rank 0\] resumed from step (\d+)", rank0)
    out = []
    for kill in kills:
        after = [t for t in done if t > kill]
        out.append(min(after) - kill)
    print(f"resumed from steps {resumed}; kill to next step: {[round(x, 2) for x in out]} s", flush=True)
    return out


def blocking(args, data: Path, work: Path, uri: str, env: dict, endpoint: str) -> dict[str, list[dict]]:
    from mlflow import MlflowClient

    results: dict[str, list[dict]] = {"sync": [], "background": []}
    client = MlflowClient(tracking_uri=uri)
    order = ["background", "sync"]
    for repeat in range(args.repeats):
        for mode in (order if repeat % 2 == 0 else order[::-1]):
            run_id = f"block-{mode}-{repeat}"
            log = work / f"{run_id}.log"
            proc = _launch(args, data, "s3://bench-runs/runs", uri, run_id,
                           [f"train.max_steps={args.block_steps}", f"train.checkpoint_every={args.block_every}",
                            f"train.checkpoint_upload={mode}", "storage.endpoint_url=" + endpoint], env, log)
            if proc.wait(timeout=1800) != 0:
                raise RuntimeError(f"{run_id} failed:\n{log.read_text()[-4000:]}")
            exp = client.get_experiment_by_name("bench-resilience")
            run = client.search_runs(exp.experiment_id, filter_string=f"tags.`sciscale.run_id` = '{run_id}'")[0]
            block = [m.value for m in client.get_metric_history(run.info.run_id, "sys/checkpoint_block_s")]
            step = [m.value for m in client.get_metric_history(run.info.run_id, "train/step_time_s")]
            results[mode].append({"block": statistics.median(block[:-1]), "step": statistics.median(step)})
            print(f"{run_id}: blocked {statistics.median(block[:-1]):.3f} s per checkpoint (median of "
                  f"{len(block) - 1}), step {statistics.median(step):.3f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--first-kill", type=int, default=30)
    parser.add_argument("--kill-every", type=int, default=30)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--block-steps", type=int, default=60)
    parser.add_argument("--block-every", type=int, default=10)
    parser.add_argument("--size", default="T", help="FNO size (T: 4 layers, 64 channels, 16 modes)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--skip", choices=["recovery", "blocking"], default=None)
    args = parser.parse_args()

    from data.generators.navier_stokes import generate
    from orchestrator import services

    with tempfile.TemporaryDirectory(prefix="sciscale-bench-res-") as tmp:
        work = Path(tmp)
        data = work / "ns"
        generate(str(data), n_train=32, n_val=8, resolution=args.resolution, seed=0, progress=False)
        mlflow_server = services.start_mlflow_server(work / "mlflow")
        seaweed = services.start_seaweedfs(work / "seaweed")
        head = services.start_ray_head(work / "ray", num_cpus=4)
        try:
            services.create_bucket(seaweed.endpoint, "bench-runs")
            env = {**os.environ, "RAY_ADDRESS": head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
                   **services.ray_client_env(head.extra["token_path"]), **services.s3_env(seaweed.endpoint)}
            rec = [] if args.skip == "recovery" else recovery(args, data, work, mlflow_server.endpoint, env)
            blk = ({} if args.skip == "blocking" else
                   blocking(args, data, work, mlflow_server.endpoint, env, seaweed.endpoint))
        finally:
            head.stop()
            seaweed.stop()
            mlflow_server.stop()
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; model FNO-{args.size} at {args.resolution}^2, "
          "2 workers, ZeRO-2")
    if rec:
        print(f"kill -> next completed step: median {statistics.median(rec):.2f} s "
              f"(min {min(rec):.2f}, max {max(rec):.2f}, {len(rec)} kills)")
    if blk:
        for mode, rows in blk.items():
            print(f"checkpoint {mode:10s}: step blocked median {statistics.median(r['block'] for r in rows):.3f} s, "
                  f"step time median {statistics.median(r['step'] for r in rows):.3f} s ({len(rows)} runs)")
        ratio = statistics.median(r["block"] for r in blk["background"]) / statistics.median(
            r["block"] for r in blk["sync"])
        print(f"background / sync blocked time: {ratio:.2f}")


if __name__ == "__main__":
    main()
