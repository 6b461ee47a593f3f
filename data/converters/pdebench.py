"""PDEBench HDF5 files -> sciscale trajectory shards.

Two layouts exist:
- arrays over all samples: ``tensor`` [N, T, X(, Y)] (or several named variables such as ``density``,
  ``Vx``, ``Vy``, ``pressure``, one channel each) with ``t-coordinate`` / ``x-coordinate`` (/ ``y-coordinate``);
- one group per seed: ``0000/data`` [T, X(, Y), V] with ``0000/grid/t``.
1D data becomes [T, C, 1, X]; 2D data [T, C, X, Y] (spatial axes in file order).
"""

from __future__ import annotations

import argparse

import numpy as np

from data.pde_io import add_convert_arguments, open_hdf5, report, write_converted
from data.storage import storage_options


def _to_tcxy(arr: np.ndarray) -> np.ndarray:
    """[T, C, X(, Y)] -> [T, C, H, W] with H = 1 for 1D data."""
    if arr.ndim == 3:
        return arr[:, :, None, :]
    if arr.ndim == 4:
        return arr
    raise ValueError(f"PDEBench sample of shape {arr.shape[2:]} per channel: only 1D and 2D data are supported")


def _times(raw, t_len: int) -> np.ndarray:
    # Some files store T + 1 coordinates (cell edges); the first T are the snapshot times.
    if raw is None:
        return np.arange(t_len, dtype=np.float64)
    t = np.asarray(raw, dtype=np.float64).reshape(-1)
    if len(t) < t_len:
        raise ValueError(f"t-coordinate has {len(t)} entries for {t_len} snapshots")
    return t[:t_len]


def _array_layout(f, variables: list[str] | None, url: str):
    names = variables or (["tensor"] if "tensor" in f else None)
    if not names:
        raise ValueError(f"{url}: no 'tensor' array and no seed groups; name the arrays with --variables, "
                         f"e.g. --variables density,Vx,Vy,pressure (file holds {sorted(f.keys())})")
    missing = [n for n in names if n not in f]
    if missing:
        raise ValueError(f"{url}: variables {missing} not in the file (it holds {sorted(f.keys())})")
    shape = f[names[0]].shape
    if any(f[n].shape != shape for n in names):
        raise ValueError(f"{url}: variables {names} differ in shape: {[f[n].shape for n in names]}")

    def read(i: int) -> np.ndarray:
        return _to_tcxy(np.stack([np.asarray(f[n][i], dtype=np.float32) for n in names], axis=1))

    t = _times(f["t-coordinate"][()] if "t-coordinate" in f else None, shape[1])
    return shape[0], read, t, names


def _group_layout(f, url: str):
    seeds = sorted(k for k in f.keys() if k.isdigit())
    first = f[seeds[0]]
    if "data" not in first:
        raise ValueError(f"{url}: seed group {seeds[0]!r} has no 'data' array")
    channels = first["data"].shape[-1]

    def read(i: int) -> np.ndarray:
        data = np.asarray(f[seeds[i]]["data"][()], dtype=np.float32)  # [T, X(, Y), V]
        return _to_tcxy(np.moveaxis(data, -1, 1))

    grid_t = first["grid/t"][()] if "grid" in first and "t" in first["grid"] else None
    return len(seeds), read, _times(grid_t, first["data"].shape[0]), [f"data[{c}]" for c in range(channels)]


def convert(input_url: str, out_url: str, variables: list[str] | None = None, n_val: int = 0,
            limit: int | None = None, storage_opts: dict | None = None, out_storage_opts: dict | None = None,
            progress: bool = True) -> dict:
    """Convert one PDEBench file (either layout); returns {split: Manifest}."""
    with open_hdf5(input_url, storage_opts) as f:
        grouped = not variables and "tensor" not in f and any(k.isdigit() for k in f.keys())
        count, read, times, labels = _group_layout(f, input_url) if grouped else _array_layout(
            f, variables, input_url)
        count = min(count, limit) if limit else count
        attrs = {"equation": f"pdebench:{input_url.rstrip('/').rsplit('/', 1)[-1]}", "channel_names": labels,
                 "time_span": float(times[-1] - times[0]), "source": input_url,
                 "layout": "seed-groups" if grouped else "arrays"}
        return write_converted(out_url, count, read, times, attrs, n_val, out_storage_opts, progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_convert_arguments(parser)
    parser.add_argument("--variables", default=None,
                        help="comma-separated arrays to stack as channels (default: tensor, or seed groups)")


def run(args: argparse.Namespace) -> int:
    variables = [v.strip() for v in args.variables.split(",")] if args.variables else None
    out = convert(args.input, args.out, variables, args.n_val, args.limit, storage_options(args.input),
                  storage_options(args.out))
    report(args.out, out)
    return 0
