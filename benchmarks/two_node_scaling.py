"""Weak scaling over two Ray nodes: one model trained through `sciscale launch --cluster` with 1 worker on one
node, then with 2 workers, one per node, at the same per-worker batch, alternated; efficiency is the 1-worker
step time over the 2-worker step time.

    python benchmarks/two_node_scaling.py --repeats 3     # as root: each node in its own network namespace

The nodes are those of tests/integration/infra/test_infra_two_node.py (`ray start` processes in two network
namespaces joined by a veth pair, gloo over it; both on loopback where namespaces cannot be made), so on one
machine the figure measures what a second node adds (gloo over a network link, Ray's placement, DeepSpeed's
all-reduce), not a second machine's cores: on a 2-core machine each worker gets one core at both sizes."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration" / "infra"), str(ROOT / "benchmarks")]
import peers  # noqa: E402
SPEC = ROOT / "examples" / "quickstart.yaml"


def run(nodes, work: Path, name: str, workers: int, per_worker_batch: int, steps: int) -> float:
    import test_infra_two_node as t

    sets = [f"data.train.0.url={work}/data/train", f"data.val.0.url={work}/data/val",
            f"storage.runs_root={work}/runs", f"storage.shared_paths=[{work}]",
            f"tracking.uri=sqlite:///{work}/mlflow.db", f"train.max_steps={steps}", "train.log_every=5",
            "train.eval_every=0", "train.checkpoint_every=0", "data.num_workers=0",
            f"train.global_batch_size={per_worker_batch * workers}", f"train.micro_batch_size={per_worker_batch}",
            f"distributed.workers={workers}", "distributed.resources_per_worker={CPU: 1, slot: 1}"]
    argv = [sys.executable, "-m", "orchestrator.cli", "launch", str(SPEC), "--cluster", nodes.dashboard,
            "--run-id", name] + [x for s in sets for x in ("--set", s)]
    submitted = nodes.run_a(argv, timeout=300)
    if submitted.returncode != 0:
        raise SystemExit(f"submit failed:\n{submitted.stdout[-2000:]}\n{submitted.stderr[-2000:]}")
    job_id = submitted.stdout.strip().splitlines()[-1]
    while (job := t._job(nodes, job_id))["status"] in ("PENDING", "RUNNING"):
        time.sleep(2)
    if job["status"] != "SUCCEEDED":
        raise SystemExit(f"{name}: {job}")
    return peers.step_time((work / "runs" / name / "sciscale" / "logs" / "worker-rank0.log").read_text().splitlines(),
                           skip=10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--per-worker-batch", type=int, default=8)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    import test_infra_two_node as t

    from data.generators.navier_stokes import generate

    work = Path(tempfile.mkdtemp(prefix="sciscale-2n-"))
    generate(str(work / "data"), n_train=96, n_val=16, resolution=32, seed=0, progress=False)
    rows: dict[int, list[float]] = {1: [], 2: []}
    load = os.getloadavg()[0]
    with t.two_node_topology() as topology:
        mode, nodes = topology[-1], t.TwoNodes(topology, work)
        try:
            nodes.start()
            for i in range(args.repeats):
                for workers in ((1, 2) if i % 2 == 0 else (2, 1)):
                    seconds = run(nodes, work, f"scale-{workers}w-{i}", workers, args.per_worker_batch, args.steps)
                    rows[workers].append(seconds)
                    print(f"repeat {i + 1}, {workers} worker(s) on {workers} node(s): step {seconds * 1000:.0f} ms",
                          flush=True)
        finally:
            nodes.stop()
    one, two = statistics.median(rows[1]), statistics.median(rows[2])
    pairs = [a / b for a, b in zip(rows[1], rows[2])]
    print(f"\n{mode}, load average {load:.1f} at the start, per-worker batch {args.per_worker_batch}, "
          f"{args.repeats} alternated repeats (medians, min-max)")
    print("| nodes x workers | step time ms | samples/s |\n|---|---|---|")
    for w, med in ((1, one), (2, two)):
        print(f"| {w} x 1 | {med * 1000:.0f} ({min(rows[w]) * 1000:.0f}-{max(rows[w]) * 1000:.0f}) | "
              f"{args.per_worker_batch * w / med:.0f} |")
    print(f"weak scaling efficiency (1-worker step time / 2-worker step time): {one / two:.2f} "
          f"(per pair {min(pairs):.2f}-{max(pairs):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": mode, "step_s": rows, "efficiency": one / two}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
