"""Convert a file of The Well (PolymathicAI, HDF5) to sciscale trajectory shards.

A file holds ``dimensions/`` (``time`` and the spatial coordinates named by its ``spatial_dims`` attribute),
``boundary_conditions/``, ``scalars/`` and the field groups ``t0_fields/`` (scalars [B, T, X, Y]),
``t1_fields/`` (vectors [B, T, X, Y, D]) and ``t2_fields/`` (tensors [B, T, X, Y, D, D]). A field whose
``sample_varying`` / ``time_varying`` attribute is false lacks that axis, and one whose ``dim_varying`` is false
along a spatial axis lacks that axis: each is broadcast, as The Well's own ``WellDataset`` does. Every
component becomes one channel, named as The Well names them (``density``, ``velocity_x``, ``D_xy``), in the
order t0, t1, t2 and, within a group, its ``field_names`` attribute. Spatial axes keep the file's order.
2D data only. The root attributes (``dataset_name``, the simulation parameters), constant scalars and the
boundary-condition types go into the manifest attrs.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from data.pde_io import add_convert_arguments, open_hdf5, report, write_converted
from data.storage import storage_options

GROUPS = ("t0_fields", "t1_fields", "t2_fields")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _names(obj, key: str = "field_names") -> list[str]:
    names = obj.attrs.get(key)
    return [_text(n) for n in np.atleast_1d(names)] if names is not None else []


def _field_names(group) -> list[str]:
    return [n for n in _names(group) if n in group] or sorted(group.keys())


def _plain(value):
    """An HDF5 attribute as JSON-ready Python values."""
    if isinstance(value, (bytes, str)):
        return _text(value)
    return np.asarray(value).tolist()


def _flag(ds, key: str) -> bool:
    return bool(ds.attrs.get(key, True))


def spatial_dims(f, url: str) -> list[str]:
    """Names of the spatial axes (``dimensions.attrs['spatial_dims']``), checked to be 2D."""
    dims = int(f.attrs.get("n_spatial_dims", 2))
    if dims != 2:
        raise ValueError(f"{url}: n_spatial_dims = {dims}; only 2D datasets convert to [T, C, H, W] shards "
                         "(The Well's 3D sets are not supported)")
    names = _names(f["dimensions"], "spatial_dims") if "dimensions" in f else []
    return names or ["x", "y"]


def list_fields(f, url: str) -> list[tuple[str, int, list[str]]]:
    """[(dataset path, tensor order, channel labels)] in channel order."""
    dims = spatial_dims(f, url)
    out = []
    for order, gname in enumerate(GROUPS):
        if gname not in f:
            continue
        suffixes = ["".join(p) for p in itertools.product(dims, repeat=order)]
        for name in _field_names(f[gname]):
            out.append((f"{gname}/{name}", order, [f"{name}_{s}" if s else name for s in suffixes]))
    if not out:
        raise ValueError(f"{url}: no t0_fields/t1_fields/t2_fields datasets; is this a file of The Well?")
    return out


def _grid_shape(f, url: str) -> tuple[int, int]:
    shape = tuple(f[f"dimensions/{d}"].shape[-1] for d in spatial_dims(f, url) if f"dimensions/{d}" in f)
    if len(shape) != 2:
        raise ValueError(f"{url}: dimensions/ lacks the spatial coordinates {spatial_dims(f, url)}")
    return shape


def _read_field(f, path: str, order: int, i: int, t_idx: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[T, C, X, Y] for trajectory ``i``: missing sample, time and spatial axes broadcast."""
    ds = f[path]
    arr = np.asarray(ds[i] if _flag(ds, "sample_varying") else ds[()], dtype=np.float32)
    if _flag(ds, "time_varying"):
        arr = arr[t_idx]
    else:
        arr = arr[None]
    varying = np.atleast_1d(ds.attrs.get("dim_varying", [True, True])).astype(bool)
    for axis, present in enumerate(varying):
        if not present:
            arr = np.expand_dims(arr, 1 + axis)
    arr = np.broadcast_to(arr, (len(t_idx), *grid) + arr.shape[3:])
    # [T, X, Y, (D, (D))] -> [T, C, X, Y]
    return np.moveaxis(arr.reshape(arr.shape[:3] + (-1,)), -1, 1)


def _times(f, url: str) -> np.ndarray:
    if "dimensions" not in f or "time" not in f["dimensions"]:
        raise ValueError(f"{url}: dimensions/time is missing; is this a file of The Well?")
    t = np.asarray(f["dimensions/time"][()], dtype=np.float64)
    if t.ndim == 2:  # per-trajectory times: one relative grid must serve all, as the shards store one
        rel = t - t[:, :1]
        if not np.allclose(rel, rel[0], rtol=1e-6, atol=1e-9):
            raise ValueError(f"{url}: dimensions/time differs between trajectories beyond a shift; the "
                             "shards store one time grid per dataset, so convert such files per trajectory")
        t = t[0]
    return t


def file_attrs(f, url: str) -> dict:
    """Dataset name, simulation parameters, constant scalars and boundary-condition types."""
    name = _text(f.attrs.get("dataset_name", url.rstrip("/").rsplit("/", 1)[-1]))
    params = {p: _plain(f.attrs[p]) for p in _names(f, "simulation_parameters") if p in f.attrs}
    scalars = {}
    if "scalars" in f:
        for s in _field_names(f["scalars"]):
            ds = f["scalars"][s]
            if not _flag(ds, "sample_varying") and not _flag(ds, "time_varying"):
                scalars[s] = np.asarray(ds[()]).reshape(-1).tolist()
    bcs = {k: _text(g.attrs.get("bc_type", "")) for k, g in f.get("boundary_conditions", {}).items()}
    return {"equation": f"the_well:{name}", "grid_type": _text(f.attrs.get("grid_type", "cartesian")),
            "params": params, "scalars": scalars, "boundary_conditions": bcs}


def convert(input_url: str, out_url: str, n_val: int = 0, limit: int | None = None, time_stride: int = 1,
            max_snapshots: int | None = None, storage_opts: dict | None = None,
            out_storage_opts: dict | None = None, progress: bool = True) -> dict:
    """Convert one file of The Well; returns {split: Manifest}."""
    with open_hdf5(input_url, storage_opts) as f:
        fields, grid = list_fields(f, input_url), _grid_shape(f, input_url)
        times = _times(f, input_url)
        t_idx = np.arange(0, len(times), time_stride)[:max_snapshots]
        count = int(f.attrs.get("n_trajectories", 0)) or next(
            f[p].shape[0] for p, _, _ in fields if _flag(f[p], "sample_varying"))
        count = min(count, limit) if limit else count

        def read(i: int) -> np.ndarray:
            return np.concatenate([_read_field(f, p, o, i, t_idx, grid) for p, o, _ in fields], axis=1)

        attrs = {**file_attrs(f, input_url), "channel_names": [c for _, _, labels in fields for c in labels],
                 "time_span": float(times[t_idx[-1]] - times[t_idx[0]]), "source": input_url}
        return write_converted(out_url, count, read, times[t_idx] - times[t_idx[0]], attrs, n_val,
                               out_storage_opts, progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sciscale data convert the-well``."""
    add_convert_arguments(parser)
    parser.add_argument("--time-stride", type=int, default=1, help="keep every k-th stored time step")
    parser.add_argument("--max-snapshots", type=int, default=None, help="keep at most this many snapshots")


def run(args: argparse.Namespace) -> int:
    """CLI entry point; returns the process exit code."""
    out = convert(args.input, args.out, args.n_val, args.limit, args.time_stride, args.max_snapshots,
                  storage_options(args.input), storage_options(args.out))
    report(args.out, out)
    return 0
