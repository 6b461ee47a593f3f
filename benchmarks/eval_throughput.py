"""Evaluation throughput against the training forward pass of the same model, side by side in one run.

For each family's debug model on generated data: ``sciscale eval``'s scoring (trainers/evaluate.py score:
the reader in val mode, the suite's transform, the family's evaluate, no plots or physical checks) in held-out
samples/s, and the training forward pass (model in train mode, the family's training batches already in
memory, no backward) in samples/s. A suite runs several forwards per sample (rollouts, every lead), so the
table also counts the model's forwards per held-out sample and gives the eval forward rate (forwards/s), which
is what compares with the training forward rate. Repeats alternate (train, eval, train, eval); medians.

    OMP_NUM_THREADS=1 python benchmarks/eval_throughput.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _datasets(base: Path) -> dict:
    from data.generators.emt import generate as emt
    from data.generators.navier_stokes import generate as navier_stokes

    navier_stokes(str(base / "ns"), n_train=8, n_val=32, resolution=32, snapshots=11, seed=0, progress=False)
    emt(str(base / "emt"), 64, max_atoms=16, md_steps=2, progress=False)
    _weather(base)
    variables = ["geopotential_500", "temperature_850", "2m_temperature"]
    return {"weather": ({"family": "weather", "variables": variables, "grid": [32, 64], "lead_hours": 6},
                        f"{base}/wx/val", f"{base}/wx/train"),"pde": ({"family": "pde", "arch": "fno", "in_channels": 2, "resolution": 32, "time_stride": 1},
                    f"{base}/ns/val", f"{base}/ns/train"),
            "atoms": ({"family": "atoms", "arch": "escaip"}, f"{base}/emt", f"{base}/emt")}


def _weather(base: Path) -> None:
    """A WeatherBench2-layout store of random fields (32 x 64, 6-hourly), converted with leads 6-24 h."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    from data.converters.weatherbench2 import convert

    times, rng = pd.date_range("2021-01-01", periods=80, freq="6h"), np.random.default_rng(0)
    lat, lon = np.linspace(87.19, -87.19, 32), np.arange(64) * 5.625
    store = xr.Dataset({"geopotential": (("time", "level", "latitude", "longitude"),
                                         rng.normal(size=(80, 2, 32, 64)).astype(np.float32)),
                        "temperature": (("time", "level", "latitude", "longitude"),
                                        rng.normal(size=(80, 2, 32, 64)).astype(np.float32)),
                        "2m_temperature": (("time", "latitude", "longitude"),
                                           rng.normal(size=(80, 32, 64)).astype(np.float32))},
                       coords={"time": times, "level": [500, 850], "latitude": lat, "longitude": lon})
    store.to_zarr(base / "era5.zarr", zarr_format=2, consolidated=True)
    convert(str(base / "era5.zarr"), str(base / "wx"), variables=["geopotential_500", "temperature_850",
                                                                 "2m_temperature"],
            splits={"train": ("2021-01-01", "2021-01-12"), "val": ("2021-01-13", "2021-01-20")}, leads=[6, 12, 24])


def _counting(model):
    calls = [0]
    model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def _eval(model_spec, url: str, batch: int) -> tuple[float, int, int]:
    import torch

    from models import load_family
    from models.family import EvalOptions
    from trainers.evaluate import score

    torch.manual_seed(0)
    model = load_family(model_spec.family).build_model(model_spec).eval()
    calls = _counting(model)
    start = time.perf_counter()
    report = score(model, model_spec, url, micro_batch=batch, options=EvalOptions(plots=False, physical_checks=False))
    return time.perf_counter() - start, report.samples, calls[0]


def _train_forward(model_spec, url: str, batch: int, samples: int) -> float:
    """Seconds for ``samples`` training examples through the forward pass (train mode, batches in memory)."""
    import torch

    from data.format import read_manifest
    from data.loader import build_loader
    from data.spec import DataSpec
    from models import load_family

    family = load_family(model_spec.family)
    manifest = read_manifest(url)
    data = DataSpec(train=[{"url": url}], canonical_streams=1, num_workers=0)
    loader = build_loader(data, data.train, split="train", rank=0, world_size=1, global_batch=batch,
                          micro_batch=batch, seed=0, transform=family.make_transform(model_spec, manifest),
                          collate=family.collate)
    batches = [mb for _, step in zip(range(-(-samples // batch)), loader) for mb in step]
    loader.close()
    torch.manual_seed(0)
    model = family.build_model(model_spec).train()
    start = time.perf_counter()
    for b in batches:
        model(b)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from pydantic import TypeAdapter

    from orchestrator.spec import ModelSpec

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for family, (raw, val_url, train_url) in _datasets(Path(tmp)).items():
            spec = TypeAdapter(ModelSpec).validate_python(raw)
            evals, trains, per_sample = [], [], 0
            for _ in range(args.repeats):
                seconds, samples, forwards = _eval(spec, val_url, args.batch)
                evals.append((samples / seconds, forwards / seconds))
                per_sample = forwards * args.batch / samples  # forwards of whole micro-batches, per sample
                trains.append(samples / _train_forward(spec, train_url, args.batch, samples))
            ev, fw, tr = (statistics.median(x[0] for x in evals), statistics.median(x[1] for x in evals),
                          statistics.median(trains))
            rows.append((family, ev, per_sample, fw * args.batch, tr))
    print(f"{'family':<8} {'eval samples/s':>15} {'forwards/sample':>16} {'eval fwd samples/s':>19} "
          f"{'train fwd samples/s':>20} {'ratio':>6}")
    for family, ev, per, fw, tr in rows:
        print(f"{family:<8} {ev:>15.1f} {per:>16.1f} {fw:>19.1f} {tr:>20.1f} {fw / tr:>6.2f}")


if __name__ == "__main__":
    main()
