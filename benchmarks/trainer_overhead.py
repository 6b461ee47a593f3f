"""Trainer overhead: sciscale's Runner against a bare ``deepspeed.initialize`` loop, side by side.

Same model, same global/micro batch, same world size, same ZeRO stage. The bare loop trains on batches
already in memory; the Runner streams them from shards through the data loader and logs metrics to a real
MLflow server every ``log_every`` steps. Runs alternate (bare, runner, bare, runner, ...) to spread machine
noise, and the table reports medians of per-step wall time.

    python benchmarks/trainer_overhead.py --world 2 --steps 40 --repeats 3

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


def _spec(data_dir: str, args, runs_root: str):
    from orchestrator.specload import validate_spec

    return validate_spec({
        "name": "bench",
        "model": {"family": "pde", "arch": args.arch, "size": args.size, "in_channels": 2,
                  "resolution": args.resolution},
        "data": {"train": [{"url": f"{data_dir}/train"}], "canonical_streams": 8, "num_workers": args.loader_workers},
        "optim": {"lr": 1e-3, "schedule": {"kind": "constant"}},
        "train": {"global_batch_size": args.global_batch, "micro_batch_size": args.micro_batch,
                  "max_steps": args.steps, "log_every": args.log_every},
        "distributed": {"zero_stage": args.zero, "workers": args.world},
        "storage": {"runs_root": runs_root},
    })


def _bare(spec, rank: int, world: int, steps: int) -> list[float]:
    import torch

    from models import load_family
    from trainers import ds

    family = load_family(spec.model.family)
    torch.manual_seed(0)
    engine, _, _ = ds.initialize(family.build_model(spec.model), spec.train, spec.optim, spec.distributed, world)
    accum = ds.grad_accumulation(spec.train, world)
    batches = [family.example_batch(spec.model, spec.train.micro_batch_size) for _ in range(accum)]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        for batch in batches:
            loss = family.loss(engine(batch), batch, spec.model)
            engine.backward(loss)
            engine.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return times


def _runner(spec, rank: int, world: int, run: dict) -> tuple[list[float], float]:
    from trainers.runner import Runner

    runner = Runner(spec, run, rank, world)
    from data.loader import build_loader

    runner.train_loader = build_loader(spec.data, spec.data.train, split="train", start_step=0,
                                       transform=runner.transform, **runner._loader_args)
    try:
        batches = iter(runner.train_loader)
        times = []
        window = []
        while runner.step < spec.train.max_steps:  # the step loop of Runner._loop, without eval/checkpoint
            start = time.perf_counter()
            window.append(runner._train_step(batches))
            runner.step += 1
            if runner.step % spec.train.log_every == 0:
                runner._log_train(window)
                window = []
            times.append(time.perf_counter() - start)
    finally:
        runner.train_loader.close()
        runner.logger.close()
    return times, runner.logging_s


def _worker(rank: int, world: int, args, data_dir: str, run: dict, port: int, out: dict) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    with tempfile.TemporaryDirectory() as runs_root:
        spec = _spec(data_dir, args, runs_root)
        results = []
        for _ in range(args.repeats):
            bare = _bare(spec, rank, world, args.steps)
            ours, logging_s = _runner(spec, rank, world, run)
            results.append((bare, ours, logging_s))
    dist.barrier()
    if rank == 0:
        out["results"] = results
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--arch", default="fno")
    parser.add_argument("--size", default="T")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped from each run")
    parser.add_argument("--log-every", type=int, default=1)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch.multiprocessing as mp

    from data.generators.navier_stokes import generate
    from orchestrator import services
    from orchestrator.runs import mlflow_client

    work = Path(tempfile.mkdtemp(prefix="sciscale-bench-"))
    generate(str(work / "data"), n_train=64, n_val=0, resolution=args.resolution, seed=0, progress=False)
    server = services.start_mlflow_server(work / "mlflow")
    try:
        client = mlflow_client(server.endpoint)
        run_id = client.create_run(client.create_experiment("bench")).info.run_id
        run = {"tracking_uri": server.endpoint, "mlflow_run_id": run_id}
        out = mp.Manager().dict()
        mp.spawn(_worker, args=(args.world, args, str(work / "data"), run, services.free_port(), out),
                 nprocs=args.world, join=True)
        _report(args, out["results"])
    finally:
        server.stop()


def _report(args, results) -> None:
    w = args.warmup
    bare = [statistics.median(b[w:]) for b, _, _ in results]
    ours = [statistics.median(o[w:]) for _, o, _ in results]
    logging = [l / sum(o) for _, o, l in results]
    print(f"\nworld {args.world}, ZeRO-{args.zero}, {args.arch}/{args.size} at {args.resolution}^2, global batch "
          f"{args.global_batch}, micro {args.micro_batch}, {args.steps} steps x {args.repeats} repeats")
    print(f"{'repeat':>6} {'bare s/step':>12} {'sciscale s/step':>16} {'overhead':>9} {'mlflow log share':>17}")
    for i, (b, o, l) in enumerate(zip(bare, ours, logging)):
        print(f"{i:>6} {b:>12.4f} {o:>16.4f} {o / b - 1:>9.2%} {l:>17.4%}")
    med_b, med_o = statistics.median(bare), statistics.median(ours)
    print(f"{'median':>6} {med_b:>12.4f} {med_o:>16.4f} {med_o / med_b - 1:>9.2%} {statistics.median(logging):>17.4%}")


if __name__ == "__main__":
    main()
