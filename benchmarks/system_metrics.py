"""Cost of the per-worker system-metrics monitor, side by side: the same DeepSpeed training step loop without
and with MLflow's system-metrics monitor (trainers/tracking.py start_system_metrics) logging to a real MLflow
server, runs alternating (off, on, on, off, ...) in one process, medians of per-step wall time and their
ratio, the same for the training thread's CPU time per step, and the CPU time of the monitor's own thread
as a share of the loop's wall time (what the monitor can take from a CPU-bound trainer; far less noisy than
wall-clock step times on a shared machine).

    python benchmarks/system_metrics.py --size debug --resolution 32 --steps 600 --repeats 6 --interval 30 --interval 1

Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _engine(args):
    import torch

    from models import load_family
    from orchestrator.specload import validate_spec
    from trainers import ds

    spec = validate_spec({
        "name": "bench", "model": {"family": "pde", "arch": args.arch, "size": args.size, "in_channels": 2,
                                   "resolution": args.resolution},
        "data": {"train": [{"url": "/unused"}], "canonical_streams": 1},
        "optim": {"lr": 1e-3, "schedule": {"kind": "constant"}},
        "train": {"global_batch_size": args.batch, "micro_batch_size": args.batch, "max_steps": 10 ** 6},
        "distributed": {"zero_stage": 2, "workers": 1}})
    family = load_family("pde")
    torch.manual_seed(0)
    engine, _, _ = ds.initialize(family.build_model(spec.model), spec.train, spec.optim, spec.distributed, 1)
    batch = family.example_batch(spec.model, args.batch)
    return lambda: _step(engine, family, spec, batch)


def _step(engine, family, spec, batch) -> None:
    loss = family.loss(engine(batch), batch, spec.model)
    engine.backward(loss)
    engine.step()
    loss.item()


def _loop(step, steps: int, run: dict | None, interval: float) -> tuple[list[float], list[float], float, float]:
    """(per-step wall seconds, per-step CPU seconds of the training thread, the loop's wall seconds, CPU
    seconds of the monitor's thread). The training thread's CPU time hardly moves with other processes on the
    machine; wall time does."""
    import psutil

    from trainers.tracking import start_system_metrics

    monitor = start_system_metrics(run, 0, interval) if run else None
    times, cpus, began = [], [], time.perf_counter()
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.thread_time()
        step()
        times.append(time.perf_counter() - start)
        cpus.append(time.thread_time() - cpu_start)
    wall = time.perf_counter() - began
    cpu = 0.0
    if monitor is not None:
        tid = monitor._process.native_id
        cpu = sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id == tid)
        monitor.finish()
    return times, cpus, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, action="append", help="seconds between samples (repeatable; "
                        "default: 30, the spec's default)")
    parser.add_argument("--arch", default="fno")
    parser.add_argument("--size", default="T")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped from each run")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker with 1 CPU gets 1)")
    args = parser.parse_args()
    intervals = args.interval or [30.0]

    import torch
    import torch.distributed as dist

    from orchestrator import services
    from orchestrator.runs import mlflow_client

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(services.free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sciscale-bench-sysmetrics-"))
    server = services.start_mlflow_server(work / "mlflow")
    try:
        client = mlflow_client(server.endpoint)
        experiment = client.create_experiment("bench-system-metrics")
        step = _engine(args)
        for _ in range(args.warmup * 3):
            step()
        for interval in intervals:
            run = {"mlflow_run_id": client.create_run(experiment).info.run_id, "tracking_uri": server.endpoint}
            _report(args, interval, [_pair(step, args, run, interval, i) for i in range(args.repeats)])
    finally:
        server.stop()
        dist.destroy_process_group()


def _pair(step, args, run: dict, interval: float, repeat: int):
    """One off run and one on run, the order flipped every repeat."""
    out = {}
    for which in (("off", "on") if repeat % 2 == 0 else ("on", "off")):
        times, cpus, wall, cpu = _loop(step, args.steps, run if which == "on" else None, interval)
        out[which] = (statistics.median(times[args.warmup:]), wall, cpu, statistics.median(cpus[args.warmup:]))
    return out


def _report(args, interval: float, pairs: list[dict]) -> None:
    print(f"\n{args.arch}/{args.size} at {args.resolution}^2, batch {args.batch}, 1 worker (ZeRO-2, gloo, "
          f"{args.threads} thread{'s' if args.threads > 1 else ''}), {args.steps} steps per run, monitor every "
          f"{interval:g} s, {args.repeats} alternating repeats")
    print(f"{'repeat':>6} {'off s/step':>11} {'on s/step':>10} {'wall on/off':>12} {'CPU on/off':>11} "
          f"{'monitor CPU / loop wall':>24}")
    walls, cpus, shares = [], [], []
    for i, p in enumerate(pairs):
        walls.append(p["on"][0] / p["off"][0])
        cpus.append(p["on"][3] / p["off"][3])
        shares.append(p["on"][2] / p["on"][1])
        print(f"{i:>6} {p['off'][0]:>11.4f} {p['on'][0]:>10.4f} {walls[-1] - 1:>+12.2%} {cpus[-1] - 1:>+11.2%} "
              f"{shares[-1]:>24.4%}")
    off = statistics.median(p["off"][0] for p in pairs)
    on = statistics.median(p["on"][0] for p in pairs)
    print(f"{'median':>6} {off:>11.4f} {on:>10.4f} {statistics.median(walls) - 1:>+12.2%} "
          f"{statistics.median(cpus) - 1:>+11.2%} {statistics.median(shares):>24.4%}")


if __name__ == "__main__":
    main()
