"""Poseidon's NetCDF datasets (camlab-ethz/poseidon) -> sciscale trajectory shards.

The files are NetCDF-4, i.e. HDF5, read with h5py: ``velocity`` [N, T, 2, H, W] for incompressible flows,
``data`` [N, T, C, H, W] for compressible Euler (rho, u, v, p[, tracer]); extra variables such as a tracer
[N, T, H, W] are appended as channels. Poseidon stores 21 snapshots per trajectory on normalised time
t = k / 20 in [0, 1]; the times written here are linspace(0, time_span, T).
"""

from __future__ import annotations

import argparse

import numpy as np

from data.pde_io import add_convert_arguments, open_hdf5, report, write_converted
from data.storage import storage_options

DEFAULT_VARIABLES = ("velocity", "data")


def _pick_variables(f, variables: list[str] | None, url: str) -> list[str]:
    present = [k for k in f.keys() if hasattr(f[k], "shape")]
    if variables:
        missing = [v for v in variables if v not in f]
        if missing:
            raise ValueError(f"{url}: variables {missing} not in the file; it holds {present}")
        return variables
    for name in DEFAULT_VARIABLES:
        if name in f:
            return [name]
    raise ValueError(f"{url}: neither 'velocity' nor 'data' found (file holds {present}); name the arrays "
                     "with --variables, e.g. --variables velocity,tracer")


def _channels_of(f, names: list[str], url: str) -> tuple[int, list[str]]:
    shape0 = f[names[0]].shape[:2]
    labels = []
    for name in names:
        ds = f[name]
        if ds.ndim not in (4, 5) or ds.shape[:2] != shape0:
            raise ValueError(f"{url}: variable {name!r} has shape {ds.shape}; expected [N, T, (C,) H, W] with "
                             f"N, T = {shape0}")
        labels += [name] if ds.ndim == 4 else [f"{name}[{c}]" for c in range(ds.shape[2])]
    return shape0[0], labels


def convert(input_url: str, out_url: str, variables: list[str] | None = None, n_val: int = 0,
            limit: int | None = None, time_span: float = 1.0, channels: list[int] | None = None,
            storage_opts: dict | None = None, out_storage_opts: dict | None = None, progress: bool = True) -> dict:
    """Convert one Poseidon file; ``channels`` keeps a subset of the stacked channels. Returns {split: Manifest}."""
    with open_hdf5(input_url, storage_opts) as f:
        names = _pick_variables(f, variables, input_url)
        count, labels = _channels_of(f, names, input_url)
        count = min(count, limit) if limit else count
        t_len = f[names[0]].shape[1]
        keep = list(range(len(labels))) if channels is None else channels
        if not keep or min(keep) < 0 or max(keep) >= len(labels):
            raise ValueError(f"--channels {channels}: the file has {len(labels)} channels {labels}")
        labels = [labels[c] for c in keep]

        def read(i: int) -> np.ndarray:
            parts = [np.asarray(f[n][i], dtype=np.float32) for n in names]
            return np.concatenate([p[:, None] if p.ndim == 3 else p for p in parts], axis=1)[:, keep]

        attrs = {"equation": f"poseidon:{input_url.rstrip('/').rsplit('/', 1)[-1]}", "channel_names": labels,
                 "time_span": time_span, "source": input_url, "variables": names}
        return write_converted(out_url, count, read, np.linspace(0.0, time_span, t_len), attrs, n_val,
                               out_storage_opts, progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_convert_arguments(parser)
    parser.add_argument("--variables", default=None,
                        help="comma-separated arrays to stack as channels (default: velocity, else data)")
    parser.add_argument("--time-span", type=float, default=1.0, help="time of the last snapshot")
    parser.add_argument("--channels", default=None, help="comma-separated channel indices to keep, e.g. 0,1,2,3")


def run(args: argparse.Namespace) -> int:
    variables = [v.strip() for v in args.variables.split(",")] if args.variables else None
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    out = convert(args.input, args.out, variables, args.n_val, args.limit, args.time_span, channels,
                  storage_options(args.input), storage_options(args.out))
    report(args.out, out)
    return 0
