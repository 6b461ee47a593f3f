"""Samples/s of ClimaX (and the SFNO baseline) training steps on CPU: forward, backward, AdamW.

    OMP_NUM_THREADS=2 python benchmarks/weather_climax_train.py [--sizes debug] [--batch 16] [--steps 10]

Synthetic batches of the family's shapes (6 variables, 32x64, 24 h lead); the first two steps are warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from models.weather import FAMILY
from models.weather.config import WeatherModelSpec

VARS = ["geopotential_500", "u_component_of_wind_500", "v_component_of_wind_500", "vorticity_500",
        "2m_temperature", "10m_wind_speed"]


def _rate(arch: str, size: str, batch: int, steps: int, checkpointing: bool) -> tuple[int, float]:
    spec = WeatherModelSpec(variables=VARS, arch=arch, size=size)
    model = FAMILY.build_model(spec)
    if hasattr(model, "activation_checkpointing"):
        model.activation_checkpointing = checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = FAMILY.example_batch(spec, batch)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = FAMILY.loss(model(data), data, spec)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sum(p.numel() for p in model.parameters()), steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="debug", help="comma list of ClimaX sizes (B needs ~4 GB and patience)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-sfno", action="store_true")
    args = p.parse_args()
    runs = [("climax", s, ckpt) for s in args.sizes.split(",") for ckpt in (False, True)]
    if not args.no_sfno:
        runs.append(("sfno", "debug", False))
    print(f"threads={torch.get_num_threads()} batch={args.batch}")
    print(f"{'arch':>7} {'size':>6} {'act.ckpt':>8} {'params':>10} {'samples/s':>10}")
    for arch, size, ckpt in runs:
        params, rate = _rate(arch, size, args.batch, args.steps, ckpt)
        print(f"{arch:>7} {size:>6} {str(ckpt):>8} {params:>10,} {rate:>10.1f}")


if __name__ == "__main__":
    main()
