"""Convert a WeatherBench2 or ARCO-ERA5 Zarr store (local, s3:// or gs://) to sciscale forecast-window shards.

Every sample is one forecast window: ``inputs`` [history, V, H, W] (the input steps, oldest first) and
``targets`` [leads, V, H, W] (the fields at each lead after the last input step), float32 in physical units,
and ``time`` = the last input step in hours since 1970-01-01 (a field and a meta field). A window is kept
only if every time it needs is in the store and inside its split's time range, so windows never span a gap
(e.g. between generated trajectories), a split boundary, or two shards (each sample is self-contained).

Grids are brought to one orientation: latitude descending (north first, as ERA5) and longitude in
[0, 360) ascending, whatever the store uses, and dims to (time, latitude, longitude) (WeatherBench2's
regridded stores hold (time, [level,] longitude, latitude)). The manifest attrs hold variables, lat, lon, leads, the
per-variable mean and std of the train range, and the train-range climatology per hour of day (for ACC).
"""

from __future__ import annotations

import argparse
import base64

from typing import TYPE_CHECKING

import numpy as np

from data.format import FieldSpec
from data.writer import DatasetWriter

if TYPE_CHECKING:  # xarray and pandas load slowly; workers only need decode_climatology
    import xarray as xr

_EPOCH = np.datetime64("1970-01-01T00:00:00", "h")
# inline climatology travels in the manifest's JSON attrs, so it has to stay small
_MAX_CLIMATOLOGY_BYTES = 32 * 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sciscale data convert weatherbench2``."""
    parser.add_argument("src", help="Zarr store: a local path, s3://bucket/x.zarr or gs://bucket/x.zarr")
    parser.add_argument("--out", required=True, help="output root; one dataset per split is written to OUT/<split>")
    parser.add_argument("--variables", required=True,
                        help="comma list in WeatherBench2 names with levels as suffix, e.g. "
                             "geopotential_500,2m_temperature")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}", default=None,
                            help=f"time range of the {split} split as START:END, both included")
    parser.add_argument("--history", type=int, default=1, help="input time steps per sample")
    parser.add_argument("--history-step-hours", type=int, default=6, help="hours between the input time steps")
    parser.add_argument("--leads", default="6,12,24,48,72", help="lead times in hours, as a comma list")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint for s3:// sources and outputs")
    parser.add_argument("--shard-mb", type=float, default=64.0, help="target shard size in MiB")


def run(args: argparse.Namespace) -> int:
    """CLI entry point; returns the process exit code."""
    splits = {s: _parse_range(getattr(args, s), s) for s in ("train", "val", "test") if getattr(args, s)}
    if "train" not in splits:
        raise ValueError("weatherbench2: --train START:END is required (statistics come from the train range)")
    options = _s3_options(args.endpoint_url)
    manifests = convert(
        args.src, args.out, variables=args.variables.split(","), splits=splits, history=args.history,
        history_step_hours=args.history_step_hours, leads=[int(x) for x in args.leads.split(",")],
        src_options=options if args.src.startswith("s3://") else None,
        out_options=options if args.out.startswith("s3://") else None, shard_bytes=int(args.shard_mb * 2**20),
    )
    for split, m in manifests.items():
        print(f"{split}: {m.num_samples} samples in {len(m.shards)} shards")
    return 0


def _s3_options(endpoint: str | None) -> dict:
    from data.storage import storage_options

    return storage_options("s3://x", {"endpoint_url": endpoint} if endpoint else None)


def _parse_range(text: str, split: str) -> tuple[str, str]:
    start, sep, end = text.partition(":")
    if not sep or not start or not end:
        raise ValueError(f"weatherbench2 --{split}: expected START:END (e.g. 2020-01-01:2020-03-31), got {text!r}")
    return start, end


def convert(
    src: str,
    out: str,
    *,
    variables: list[str],
    splits: dict[str, tuple[str, str]],
    history: int = 1,
    history_step_hours: int = 6,
    leads: list[int] = (6, 12, 24, 48, 72),
    src_options: dict | None = None,
    out_options: dict | None = None,
    shard_bytes: int = 64 * 2**20,
    progress: bool = False,
) -> dict:
    """Write one dataset per split under ``out/<split>``; returns {split: Manifest}."""
    store = open_store(src, src_options)
    fields = select_fields(store, variables, src)
    hours = time_hours(store)
    train = splits.get("train")
    if train is None:
        raise ValueError(f"weatherbench2 {src}: splits need a 'train' range; got {sorted(splits)}")
    offsets = _window_offsets(history, history_step_hours, leads)
    attrs = _grid_attrs(store, variables, history, history_step_hours, leads, src)
    attrs.update(statistics(fields, hours, _range_hours(train), attrs["step_hours"]))
    manifests = {}
    for split, rng in splits.items():
        starts = window_starts(hours, offsets, _range_hours(rng))
        if len(starts) == 0:
            raise ValueError(f"weatherbench2 {src}: split {split} {rng} holds no complete window of "
                             f"offsets {offsets.tolist()} h; widen the range or shorten --leads/--history")
        split_attrs = {**attrs, "split": split, "time_range": list(rng)}
        manifests[split] = _write_split(fields, hours, starts, offsets, history, f"{out.rstrip('/')}/{split}",
                                        split_attrs, out_options, shard_bytes, progress)
    return manifests


def open_store(src: str, options: dict | None) -> xr.Dataset:
    """The store with latitude descending and longitude in [0, 360) ascending."""
    import xarray as xr

    try:
        ds = xr.open_zarr(src, storage_options=options or None, consolidated=None, chunks=None)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ValueError(f"weatherbench2: cannot open Zarr store {src!r} ({exc}); check the path, the "
                         "endpoint (--endpoint-url) and that it is a Zarr group") from exc
    for dim in ("time", "latitude", "longitude"):
        if dim not in ds.dims:
            raise ValueError(f"weatherbench2 {src}: dimension {dim!r} missing (dims {dict(ds.sizes)}); "
                             "expected the WeatherBench2 schema time, [level,] latitude, longitude")
    ds = ds.assign_coords(longitude=np.mod(ds.longitude.values.astype(np.float64), 360.0))
    ds = ds.sortby("longitude")
    if ds.latitude.values[0] < ds.latitude.values[-1]:
        ds = ds.isel(latitude=slice(None, None, -1))
    return ds


def select_fields(ds: xr.Dataset, variables: list[str], src: str = "store") -> list[xr.DataArray]:
    """One [time, lat, lon] array per requested name; ``name_LEVEL`` selects a pressure level."""
    return [_canonical(_select(ds, name, src), name, src) for name in variables]


def _select(ds: xr.Dataset, name: str, src: str) -> xr.DataArray:
    if name in ds.data_vars and "level" not in ds[name].dims:
        return ds[name]
    base, _, level = name.rpartition("_")
    if base in ds.data_vars and "level" in ds[base].dims and level.isdigit():
        levels = ds.level.values.tolist()
        if int(level) not in levels:
            raise ValueError(f"weatherbench2 {src}: variable {name!r}: level {level} hPa not stored; "
                             f"available levels {levels}")
        return ds[base].sel(level=int(level)).drop_vars("level")
    hint = (f"; {name} has levels, add one as suffix, e.g. {name}_500" if name in ds.data_vars else "")
    raise ValueError(f"weatherbench2 {src}: unknown variable {name!r}; stored variables are "
                     f"{sorted(ds.data_vars)} (pressure levels as suffix: geopotential_500){hint}")


def _canonical(field: xr.DataArray, name: str, src: str) -> xr.DataArray:
    """Dims in the order time, latitude, longitude (WeatherBench2's regridded stores keep longitude first)."""
    want = ("time", "latitude", "longitude")
    if set(field.dims) != set(want):
        raise ValueError(f"weatherbench2 {src}: variable {name!r} has dims {field.dims}; expected {want} (plus "
                         "level for level variables). Constant fields without time and forecast stores with "
                         "prediction_timedelta are not supported; select a single time-varying field")
    return field.transpose(*want)


def time_hours(ds: xr.Dataset) -> np.ndarray:
    """Time stamps as int64 hours since 1970-01-01 (strictly increasing)."""
    hours = ((ds.time.values.astype("datetime64[h]") - _EPOCH) // np.timedelta64(1, "h")).astype(np.int64)
    if np.any(np.diff(hours) <= 0):
        raise ValueError("weatherbench2: time stamps are not strictly increasing; sort the store by time")
    return hours


def _range_hours(rng: tuple[str, str]) -> tuple[int, int]:
    import pandas as pd

    lo, hi = (int((np.datetime64(pd.Timestamp(x).to_datetime64(), "h") - _EPOCH) // np.timedelta64(1, "h"))
              for x in rng)
    if hi < lo:
        raise ValueError(f"weatherbench2: time range {rng} ends before it starts")
    return lo, hi


def _window_offsets(history: int, step: int, leads) -> np.ndarray:
    if history < 1 or step <= 0 or not leads or min(leads) <= 0:
        raise ValueError(f"weatherbench2: need history >= 1, history step > 0 and positive leads; got "
                         f"history={history}, step={step}, leads={list(leads)}")
    past = [-(history - 1 - i) * step for i in range(history)]
    return np.array(past + sorted(int(x) for x in leads), dtype=np.int64)


def window_starts(hours: np.ndarray, offsets: np.ndarray, rng: tuple[int, int]) -> np.ndarray:
    """Indices of the last input step of every window whose times all exist and lie inside ``rng``."""
    t = hours[:, None] + offsets[None, :]
    pos = np.searchsorted(hours, t).clip(0, len(hours) - 1)
    present = (hours[pos] == t).all(axis=1)
    inside = (t.min(axis=1) >= rng[0]) & (t.max(axis=1) <= rng[1])
    return np.nonzero(present & inside)[0]


def _grid_attrs(ds, variables, history, step, leads, src) -> dict:
    hours = time_hours(ds)
    step_hours = int(np.min(np.diff(hours))) if len(hours) > 1 else step
    return {
        "source": src, "variables": list(variables), "lat": ds.latitude.values.astype(float).tolist(),
        "lon": ds.longitude.values.astype(float).tolist(), "history": history,
        "history_step_hours": step, "lead_hours": sorted(int(x) for x in leads), "step_hours": step_hours,
        "time_units": "hours since 1970-01-01",
    }


def _load(fields: list[xr.DataArray], idx: np.ndarray) -> np.ndarray:
    """[len(idx), V, H, W] float32 for the given time indices."""
    return np.stack([f.isel(time=idx).values.astype(np.float32) for f in fields], axis=1)


def statistics(fields, hours: np.ndarray, rng: tuple[int, int], step_hours: int, block: int = 256) -> dict:
    """Per-variable mean and std and the climatology per hour of day, all over the train range."""
    idx = np.nonzero((hours >= rng[0]) & (hours <= rng[1]))[0]
    if len(idx) == 0:
        raise ValueError(f"weatherbench2: the train range holds no time stamps (store spans hours "
                         f"{hours[0]}..{hours[-1]} since 1970); pick a range inside the store")
    bins = np.unique(hours[idx] % 24)
    total = s1 = s2 = clim = counts = None
    for lo in range(0, len(idx), block):
        part = idx[lo:lo + block]
        x = _load(fields, part).astype(np.float64)
        if total is None:
            s1, s2 = np.zeros(x.shape[1]), np.zeros(x.shape[1])
            clim, counts, total = np.zeros((len(bins), *x.shape[1:])), np.zeros(len(bins)), 0
        s1 += x.sum(axis=(0, 2, 3))
        s2 += np.square(x).sum(axis=(0, 2, 3))
        total += x.shape[0] * x.shape[2] * x.shape[3]
        slot = np.searchsorted(bins, hours[part] % 24)
        np.add.at(clim, slot, x)
        np.add.at(counts, slot, 1)
    mean = s1 / total
    std = np.sqrt(np.maximum(s2 / total - mean**2, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant field would divide by zero; leave it unscaled
    return {"mean": mean.tolist(), "std": std.tolist(),
            "climatology": encode_climatology(clim / counts[:, None, None, None], bins)}


def encode_climatology(clim: np.ndarray, hours_of_day: np.ndarray) -> dict:
    """[K, V, H, W] -> a JSON dict (base64 float32) for the manifest attrs."""
    arr = np.ascontiguousarray(clim, dtype="<f4")
    if arr.nbytes > _MAX_CLIMATOLOGY_BYTES:
        raise ValueError(f"weatherbench2: the climatology is {arr.nbytes / 2**20:.0f} MiB, over the "
                         f"{_MAX_CLIMATOLOGY_BYTES // 2**20} MiB that fit in manifest attrs; convert fewer "
                         "variables or a coarser grid (e.g. WeatherBench2's 240x121 or 64x32)")
    return {"hours_of_day": [int(h) for h in hours_of_day], "shape": list(arr.shape), "dtype": "float32",
            "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_climatology(attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(hours_of_day [K], climatology [K, V, H, W] float32) from the manifest attrs."""
    c = attrs.get("climatology")
    if not c:
        raise ValueError("dataset attrs have no 'climatology'; convert it with sciscale data convert weatherbench2")
    data = np.frombuffer(base64.b64decode(c["data"]), dtype="<f4").reshape(c["shape"])
    return np.asarray(c["hours_of_day"], dtype=np.int64), data


def _write_split(fields, hours, starts, offsets, history, url, attrs, options, shard_bytes, progress, block=64):
    shape = (len(fields), len(attrs["lat"]), len(attrs["lon"]))
    leads = len(offsets) - history
    spec = {"inputs": FieldSpec(dtype="float32", shape=(history, *shape)),
            "targets": FieldSpec(dtype="float32", shape=(leads, *shape)),
            # also a field (not only meta) so the transform sees it: ACC needs the valid time's climatology
            "time": FieldSpec(dtype="int64", shape=())}
    writer = DatasetWriter(url, spec, meta_fields={"time": "int64"}, attrs=attrs, shard_bytes=shard_bytes,
                           storage_options=options, progress=progress, total=len(starts))
    with writer:
        for lo in range(0, len(starts), block):
            chunk = starts[lo:lo + block]
            # read every time the block's windows touch once, then cut the windows out of it
            need = np.unique(np.searchsorted(hours, hours[chunk][:, None] + offsets[None, :]))
            frames = _load(fields, need)
            for i in chunk:
                rows = np.searchsorted(need, np.searchsorted(hours, hours[i] + offsets))
                window = frames[rows]
                writer.append({"inputs": window[:history], "targets": window[history:],
                               "time": np.asarray(hours[i], dtype=np.int64)},
                              {"time": int(hours[i])})
    return writer.manifest
