"""Convert one of Poseidon's NetCDF datasets (camlab-ethz/poseidon) to sciscale trajectory shards.

The files are NetCDF-4, i.e. HDF5, and read with h5py as Poseidon does (``scOT/problems/``). The trajectory
array is the first present of ``velocity`` [N, T, C, H, W] (incompressible NS-*.nc: u, v and, in the tracer
sets, the tracer as channel 2), ``data`` [N, T, C, H, W] (compressible CE-*.nc: rho, u, v, p and optionally
a tracer) and ``solution`` [N, T, C, H, W] or [N, T, H, W] (FNS-KF, CE-RM, GCE-RT, ACE, Wave-*). The wave
sets' propagation speed ``c`` [N, H, W] is added as a constant channel. ``--variables`` names the arrays to
stack instead (4-D arrays are one channel, 3-D ones constant in time). Poseidon stores 21 snapshots on
normalised time t = k / 20 in [0, 1]; the times written are linspace(0, time_span, T). Time-independent
sets (SE-AF, Poisson-Gauss, Helmholtz) do not fit a trajectory and are refused.
"""

from __future__ import annotations

import argparse

import numpy as np

from data.pde_io import add_convert_arguments, open_hdf5, report, write_converted
from data.storage import storage_options

TRAJECTORY_VARIABLES = ("velocity", "data", "solution")
COEFFICIENTS = ("c",)
"""Time-independent fields added as constant channels when present (the wave speed of Wave-*.nc)."""
CHANNEL_NAMES = {"velocity": ("u", "v", "tracer"), "data": ("rho", "u", "v", "p", "tracer")}
"""Channel meanings in Poseidon's loaders (scOT/problems/fluids); other arrays are named name[k]."""


def _pick_variables(f, variables: list[str] | None, url: str) -> list[str]:
    present = [k for k in f.keys() if hasattr(f[k], "shape")]
    if variables:
        missing = [v for v in variables if v not in f]
        if missing:
            raise ValueError(f"{url}: variables {missing} not in the file; it holds {present}")
        return variables
    main = next((name for name in TRAJECTORY_VARIABLES if name in f), None)
    if main is None:
        raise ValueError(f"{url}: none of {list(TRAJECTORY_VARIABLES)} found (file holds {present}); name the "
                         "arrays with --variables, e.g. --variables velocity")
    return [main] + [c for c in COEFFICIENTS if c in f]


def _labels(name: str, ds) -> list[str]:
    if ds.ndim in (3, 4):
        return [name]
    known = CHANNEL_NAMES.get(name, ())
    return [known[c] if c < len(known) else f"{name}[{c}]" for c in range(ds.shape[2])]


def _channels_of(f, names: list[str], url: str) -> tuple[int, int, list[str]]:
    """(trajectories, snapshots, channel labels); the first array fixes N and T."""
    first = f[names[0]]
    if first.ndim not in (4, 5):
        raise ValueError(f"{url}: {names[0]!r} has shape {first.shape}; expected [N, T, (C,) H, W]. A time-"
                         "independent set (SE-AF, Poisson, Helmholtz) does not convert to trajectories")
    count, t_len = first.shape[:2]
    labels = []
    for name in names:
        ds = f[name]
        timed = ds.ndim in (4, 5) and ds.shape[:2] == (count, t_len)
        constant = ds.ndim == 3 and ds.shape[0] == count
        if not (timed or constant):
            raise ValueError(f"{url}: variable {name!r} has shape {ds.shape}; expected [N, T, (C,) H, W] or a "
                             f"constant [N, H, W] with N, T = {count}, {t_len}")
        labels += _labels(name, ds)
    return count, t_len, labels


def _reader(f, names: list[str], t_len: int, keep: list[int], transpose: bool):
    def read(i: int) -> np.ndarray:
        parts = []
        for name in names:
            part = np.asarray(f[name][i], dtype=np.float32)
            if part.ndim == 2:  # a coefficient: the same at every snapshot
                part = np.broadcast_to(part, (t_len, *part.shape))
            parts.append(part[:, None] if part.ndim == 3 else part)
        u = np.concatenate(parts, axis=1)[:, keep]
        return np.swapaxes(u, -1, -2) if transpose else u

    return read


def convert(input_url: str, out_url: str, variables: list[str] | None = None, n_val: int = 0,
            limit: int | None = None, time_span: float = 1.0, channels: list[int] | None = None,
            storage_opts: dict | None = None, out_storage_opts: dict | None = None, progress: bool = True,
            transpose: bool = False) -> dict:
    """Convert one Poseidon file; ``channels`` keeps a subset of the stacked channels, ``transpose`` swaps
    the spatial axes (Poseidon transposes NS-SL.nc). Returns {split: Manifest}."""
    with open_hdf5(input_url, storage_opts) as f:
        names = _pick_variables(f, variables, input_url)
        count, t_len, labels = _channels_of(f, names, input_url)
        count = min(count, limit) if limit else count
        keep = list(range(len(labels))) if channels is None else channels
        if not keep or min(keep) < 0 or max(keep) >= len(labels):
            raise ValueError(f"--channels {channels}: the file has {len(labels)} channels {labels}")
        attrs = {"equation": f"poseidon:{input_url.rstrip('/').rsplit('/', 1)[-1]}",
                 "channel_names": [labels[c] for c in keep], "time_span": time_span, "source": input_url,
                 "variables": names, "transposed": transpose}
        return write_converted(out_url, count, _reader(f, names, t_len, keep, transpose),
                               np.linspace(0.0, time_span, t_len), attrs, n_val, out_storage_opts, progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sciscale data convert poseidon``."""
    add_convert_arguments(parser)
    parser.add_argument("--variables", default=None,
                        help="comma-separated arrays to stack as channels (default: velocity, data or solution, "
                             "plus the wave speed c when present)")
    parser.add_argument("--time-span", type=float, default=1.0, help="time of the last snapshot")
    parser.add_argument("--channels", default=None, help="comma-separated channel indices to keep, e.g. 0,1,2,3")
    parser.add_argument("--transpose", action="store_true",
                        help="swap the two spatial axes (Poseidon's loader does so for NS-SL.nc)")


def run(args: argparse.Namespace) -> int:
    """CLI entry point; returns the process exit code."""
    variables = [v.strip() for v in args.variables.split(",")] if args.variables else None
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    out = convert(args.input, args.out, variables, args.n_val, args.limit, args.time_span, channels,
                  storage_options(args.input), storage_options(args.out), transpose=args.transpose)
    report(args.out, out)
    return 0
