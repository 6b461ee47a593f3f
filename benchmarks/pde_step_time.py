"""Training step time and throughput of scOT and FNO on CPU, side by side.

    python benchmarks/pde_step_time.py                       # scOT-T vs FNO-T at 128x128, batch 8
    python benchmarks/pde_step_time.py --sizes debug --resolution 32 --steps 20

One step = forward + relative-L1 loss + backward + AdamW update, in plain PyTorch on one process (no Ray,
no DeepSpeed), with the family's synthetic batch. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models import load_family
from models.pde.config import PdeModelSpec


def measure(arch: str, size: str, resolution: int, batch_size: int, steps: int, warmup: int) -> dict:
    family = load_family("pde")
    spec = PdeModelSpec(family="pde", arch=arch, size=size, in_channels=2, resolution=resolution)
    torch.manual_seed(0)
    model = family.build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = family.example_batch(spec, batch_size)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = family.loss(model(batch), batch, spec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"model": f"{arch}-{size}", "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_s": step, "p90_s": sorted(times)[int(0.9 * (len(times) - 1))], "samples_s": batch_size / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="T", help="named size for both architectures")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU, {torch.get_num_threads()} threads, {args.resolution}x{args.resolution}, batch {args.batch_size}, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'model':<12}{'params (M)':>12}{'step (s)':>10}{'p90 (s)':>10}{'samples/s':>11}")
    for arch in ("scot", "fno"):
        for size in args.sizes.split(","):
            r = measure(arch, size, args.resolution, args.batch_size, args.steps, args.warmup)
            print(f"{r['model']:<12}{r['params_M']:>12.2f}{r['step_s']:>10.3f}{r['p90_s']:>10.3f}{r['samples_s']:>11.1f}")


if __name__ == "__main__":
    main()
