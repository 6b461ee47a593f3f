"""The Well (PolymathicAI) HDF5 files -> sciscale trajectory shards.

A file holds ``dimensions/`` (``time``, spatial coordinates), ``boundary_conditions/`` and field groups
``t0_fields/`` (scalars [B, T, X, Y]), ``t1_fields/`` (vectors [B, T, X, Y, D]) and ``t2_fields/`` (tensors
[B, T, X, Y, D, D]). A field whose ``sample_varying`` / ``time_varying`` attribute is false lacks that axis and
is broadcast. Every component becomes one channel, in the order t0, t1, t2 and, within a group, the
group's ``field_names`` attribute (else sorted). Spatial axes keep the file's order. 2D data only.
"""

from __future__ import annotations

import argparse

import numpy as np

from data.pde_io import add_convert_arguments, open_hdf5, report, write_converted
from data.storage import storage_options

GROUPS = ("t0_fields", "t1_fields", "t2_fields")


def _field_names(group) -> list[str]:
    names = group.attrs.get("field_names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names is not None else []
    return [n for n in names if n in group] or sorted(group.keys())


def _flags(ds) -> tuple[bool, bool]:
    return bool(ds.attrs.get("sample_varying", True)), bool(ds.attrs.get("time_varying", True))


def list_fields(f, url: str) -> list[tuple[str, int, list[str]]]:
    """[(dataset path, tensor order, channel labels)] in channel order."""
    dims = int(f.attrs.get("n_spatial_dims", 2))
    if dims != 2:
        raise ValueError(f"{url}: n_spatial_dims = {dims}; only 2D datasets convert to [T, C, H, W] shards")
    out = []
    for order, gname in enumerate(GROUPS):
        if gname not in f:
            continue
        for name in _field_names(f[gname]):
            comps = [""] if order == 0 else [f"[{i}]" for i in range(2**order)]
            out.append((f"{gname}/{name}", order, [name + c for c in comps]))
    if not out:
        raise ValueError(f"{url}: no t0_fields/t1_fields/t2_fields datasets; is this a file of The Well?")
    return out


def _read_field(f, path: str, order: int, i: int, t_idx: np.ndarray) -> np.ndarray:
    ds = f[path]
    sample_varying, time_varying = _flags(ds)
    arr = ds[i] if sample_varying else ds[()]
    arr = np.asarray(arr, dtype=np.float32)
    arr = arr[t_idx] if time_varying else np.broadcast_to(arr, (len(t_idx),) + arr.shape)
    # [T, X, Y, (D, (D))] -> [T, C, X, Y]
    arr = arr.reshape(arr.shape[:3] + (-1,))
    return np.moveaxis(arr, -1, 1)


def _times(f, url: str) -> np.ndarray:
    if "dimensions" not in f or "time" not in f["dimensions"]:
        raise ValueError(f"{url}: dimensions/time is missing")
    t = np.asarray(f["dimensions/time"][()], dtype=np.float64)
    return t[0] if t.ndim == 2 else t  # per-sample times: the first trajectory's grid stands for all


def convert(input_url: str, out_url: str, n_val: int = 0, limit: int | None = None, time_stride: int = 1,
            max_snapshots: int | None = None, storage_opts: dict | None = None,
            out_storage_opts: dict | None = None, progress: bool = True) -> dict:
    """Convert one file of The Well; returns {split: Manifest}."""
    with open_hdf5(input_url, storage_opts) as f:
        fields = list_fields(f, input_url)
        times = _times(f, input_url)
        t_idx = np.arange(0, len(times), time_stride)[:max_snapshots]
        count = int(f.attrs.get("n_trajectories", 0)) or next(
            f[p].shape[0] for p, _, _ in fields if _flags(f[p])[0])
        count = min(count, limit) if limit else count

        def read(i: int) -> np.ndarray:
            return np.concatenate([_read_field(f, p, o, i, t_idx) for p, o, _ in fields], axis=1)

        name = f.attrs.get("dataset_name", input_url.rstrip("/").rsplit("/", 1)[-1])
        attrs = {"equation": f"the_well:{name.decode() if isinstance(name, bytes) else name}",
                 "channel_names": [c for _, _, labels in fields for c in labels],
                 "time_span": float(times[t_idx[-1]] - times[t_idx[0]]), "source": input_url}
        return write_converted(out_url, count, read, times[t_idx] - times[t_idx[0]], attrs, n_val,
                               out_storage_opts, progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_convert_arguments(parser)
    parser.add_argument("--time-stride", type=int, default=1, help="keep every k-th stored time step")
    parser.add_argument("--max-snapshots", type=int, default=None, help="keep at most N snapshots")


def run(args: argparse.Namespace) -> int:
    out = convert(args.input, args.out, args.n_val, args.limit, args.time_stride, args.max_snapshots,
                  storage_options(args.input), storage_options(args.out))
    report(args.out, out)
    return 0
