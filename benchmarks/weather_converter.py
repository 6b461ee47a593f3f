"""Samples/s of the WeatherBench2 converter on a synthetic ERA5-layout Zarr store (written under /tmp).

    python benchmarks/weather_converter.py [--times 1024] [--grid 32x64] [--history 2] [--leads 6,12,24,48]

Prints one table row per run; reads and writes nothing outside a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
import xarray as xr

from data.converters.weatherbench2 import convert

LEVELS = [50, 250, 500, 600, 700, 850, 925]


def _store(path: str, times: int, nlat: int, nlon: int) -> list[str]:
    rng = np.random.default_rng(0)
    lat = 90 - (np.arange(nlat) + 0.5) * 180 / nlat  # ERA5 order, north first
    coords = {"time": pd.date_range("2020-01-01", periods=times, freq="6h"), "level": LEVELS,
              "latitude": lat, "longitude": np.arange(nlon) * 360 / nlon}
    shape4, shape3 = (times, len(LEVELS), nlat, nlon), (times, nlat, nlon)
    data = {name: (("time", "level", "latitude", "longitude"), rng.standard_normal(shape4, dtype=np.float32))
            for name in ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")}
    data["2m_temperature"] = (("time", "latitude", "longitude"), rng.standard_normal(shape3, dtype=np.float32))
    ds = xr.Dataset(data, coords=coords)
    chunks = {v: {"chunks": (16,) + ds[v].shape[1:]} for v in ds.data_vars}
    ds.to_zarr(path, zarr_format=2, consolidated=True, encoding=chunks)
    return [f"{v}_{lev}" for v in ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")
            for lev in (500, 850)] + ["2m_temperature"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--times", type=int, default=1024)
    p.add_argument("--grid", default="32x64", help="LATxLON")
    p.add_argument("--history", type=int, default=2)
    p.add_argument("--leads", default="6,12,24,48")
    args = p.parse_args()
    nlat, nlon = (int(x) for x in args.grid.split("x"))
    leads = [int(x) for x in args.leads.split(",")]
    with tempfile.TemporaryDirectory(prefix="wx-bench-") as tmp:
        variables = _store(f"{tmp}/src.zarr", args.times, nlat, nlon)
        end = str(pd.Timestamp("2020-01-01") + pd.Timedelta(hours=6 * (args.times - 1)))
        start = time.perf_counter()
        manifests = convert(f"{tmp}/src.zarr", f"{tmp}/out", variables=variables, splits={"train": ("2020-01-01", end)},
                            history=args.history, leads=leads)
        elapsed = time.perf_counter() - start
    m = manifests["train"]
    print(f"{'grid':>8} {'vars':>5} {'frames/sample':>14} {'samples':>8} {'seconds':>8} {'samples/s':>10} "
          f"{'MB/s out':>9}")
    print(f"{args.grid:>8} {len(variables):>5} {args.history + len(leads):>14} {m.num_samples:>8} {elapsed:>8.2f} "
          f"{m.num_samples / elapsed:>10.1f} {m.total_bytes() / elapsed / 1e6:>9.1f}")


if __name__ == "__main__":
    main()
