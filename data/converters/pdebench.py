"""Convert a PDEBench HDF5 file (any of its published layouts) to sciscale trajectory shards.

The layouts PDEBench publishes (``pdebench/data_gen``, ``Data_Merge.py``; read by ``FNODatasetSingle``):
- ``tensor`` [N, T, X] with ``x-coordinate`` and ``t-coordinate`` (1D advection, Burgers, reaction-diffusion;
  T + 1 time coordinates, the cell edges, of which the first T are the snapshot times);
- ``tensor`` [N, 1, X, Y] with the coefficient ``nu`` [N, X, Y] (2D Darcy flow, steady: one snapshot whose
  channels are nu then the solution, as PDEBench's loader stacks them);
- ``density``, ``pressure``, ``Vx`` (, ``Vy``) [N, T, X(, Y)] with ``t-coordinate`` (compressible Navier-Stokes);
- ``velocity`` [N, T, X, Y, 2], ``particles`` [N, T, X, Y, 1], ``force`` [N, X, Y, 2] and ``t`` [N, T]
  (2D incompressible Navier-Stokes; the force is a constant channel);
- one group per seed: ``0000/data`` [T, X(, Y), V] with ``0000/grid/t`` (diffusion-reaction, diffusion-sorption,
  shallow water).
1D data becomes [T, C, 1, X]; 2D data [T, C, X, Y] (spatial axes in file order); 3D files are refused.
The file's attributes (beta, Nu, rho, eta, zeta, M) go into the manifest attrs as ``params``.
"""

from __future__ import annotations

import argparse

import numpy as np

from data.pde_io import add_convert_arguments, open_hdf5, report, write_converted
from data.storage import storage_options

CFD_VARIABLES = ("density", "pressure", "Vx", "Vy")


def _to_tcxy(arr: np.ndarray, where: str) -> np.ndarray:
    """[T, C, X(, Y)] -> [T, C, H, W] with H = 1 for 1D data."""
    if arr.ndim == 3:
        return arr[:, :, None, :]
    if arr.ndim == 4:
        return arr
    raise ValueError(f"{where}: samples of shape {arr.shape[2:]} per channel; only 1D and 2D data convert "
                     "(PDEBench's 3D sets are not supported)")


def _times(raw, t_len: int, where: str) -> np.ndarray:
    # Some files store T + 1 coordinates (cell edges); the first T are the snapshot times.
    if raw is None:
        return np.arange(t_len, dtype=np.float64)
    t = np.asarray(raw, dtype=np.float64)
    t = (t[0] if t.ndim == 2 else t).reshape(-1)  # per-sample times [N, T]: the first stands for all
    if len(t) < t_len:
        raise ValueError(f"{where}: the time coordinate has {len(t)} entries for {t_len} snapshots")
    return t[:t_len]


def _stacked(f, names: list[str], url: str):
    missing = [n for n in names if n not in f]
    if missing:
        raise ValueError(f"{url}: variables {missing} not in the file (it holds {sorted(f.keys())})")
    shape = f[names[0]].shape
    if any(f[n].shape != shape for n in names):
        raise ValueError(f"{url}: variables {names} differ in shape: {[f[n].shape for n in names]}")

    def read(i: int) -> np.ndarray:
        return _to_tcxy(np.stack([np.asarray(f[n][i], dtype=np.float32) for n in names], axis=1), url)

    t = _times(f["t-coordinate"][()] if "t-coordinate" in f else None, shape[1], url)
    return shape[0], read, t, list(names)


def _darcy(f, url: str):
    """Steady Darcy flow: [1, 2, X, Y] per sample, channels (nu, solution)."""
    tensor, nu = f["tensor"], f["nu"]

    def read(i: int) -> np.ndarray:
        u = np.asarray(tensor[i], dtype=np.float32)  # [1, X, Y]
        return np.stack([np.asarray(nu[i], dtype=np.float32)[None], u], axis=1)

    return tensor.shape[0], read, np.zeros(1), ["nu", "tensor"]


def _ns_incomp(f, url: str):
    """Channel-last arrays [N, T, X, Y, V] plus the constant force [N, X, Y, 2]."""
    velocity, particles, force = f["velocity"], f["particles"], f.get("force")

    def read(i: int) -> np.ndarray:
        parts = [np.asarray(velocity[i], dtype=np.float32), np.asarray(particles[i], dtype=np.float32)]
        if force is not None:  # constant in time: repeated at every snapshot
            parts.append(np.broadcast_to(np.asarray(force[i], dtype=np.float32)[None], parts[0].shape[:-1] + (2,)))
        return np.moveaxis(np.concatenate(parts, axis=-1), -1, 1)

    labels = ["Vx", "Vy", "particles"] + (["force_x", "force_y"] if force is not None else [])
    return velocity.shape[0], read, _times(f["t"][()] if "t" in f else None, velocity.shape[1], url), labels


def _seed_groups(f, url: str):
    seeds = sorted(k for k in f.keys() if k.isdigit())
    first = f[seeds[0]]
    if "data" not in first:
        raise ValueError(f"{url}: seed group {seeds[0]!r} has no 'data' array (expected {seeds[0]}/data "
                         f"[T, X(, Y), V] and {seeds[0]}/grid/t)")
    channels = first["data"].shape[-1]

    def read(i: int) -> np.ndarray:
        data = np.asarray(f[seeds[i]]["data"][()], dtype=np.float32)  # [T, X(, Y), V]
        return _to_tcxy(np.moveaxis(data, -1, 1), f"{url} seed {seeds[i]}")

    grid_t = first["grid/t"][()] if "grid" in first and "t" in first["grid"] else None
    return len(seeds), read, _times(grid_t, first["data"].shape[0], url), [f"data[{c}]" for c in range(channels)]


def layout(f, variables: list[str] | None) -> str:
    """Which published layout the file follows."""
    if variables:
        return "arrays"
    if "tensor" in f:
        return "darcy" if "nu" in f else "arrays"
    if "velocity" in f and "particles" in f:
        return "ns-incomp"
    if "density" in f:
        return "cfd"
    return "seed-groups" if any(k.isdigit() for k in f.keys()) else "unknown"


def _read_plan(f, variables: list[str] | None, url: str):
    kind = layout(f, variables)
    if kind == "unknown":
        raise ValueError(f"{url}: no 'tensor', CFD ('density', ...), incompressible-NS ('velocity', 'particles') "
                         f"or seed-group ('0000/data') arrays; the file holds {sorted(f.keys())}. Hint: name the "
                         "arrays to stack with --variables, e.g. --variables density,Vx,Vy,pressure")
    if kind == "cfd" and "Vz" in f:
        raise ValueError(f"{url}: a 3D compressible-NS file (it has Vz); only 1D and 2D data convert")
    if kind == "arrays":
        return kind, _stacked(f, variables or ["tensor"], url)
    if kind == "cfd":
        return kind, _stacked(f, [v for v in CFD_VARIABLES if v in f], url)
    return kind, {"darcy": _darcy, "ns-incomp": _ns_incomp, "seed-groups": _seed_groups}[kind](f, url)


def convert(input_url: str, out_url: str, variables: list[str] | None = None, n_val: int = 0,
            limit: int | None = None, storage_opts: dict | None = None, out_storage_opts: dict | None = None,
            progress: bool = True) -> dict:
    """Convert one PDEBench file (any layout); returns {split: Manifest}."""
    with open_hdf5(input_url, storage_opts) as f:
        kind, (count, read, times, labels) = _read_plan(f, variables, input_url)
        count = min(count, limit) if limit else count
        params = {k: np.asarray(v).tolist() for k, v in f.attrs.items() if np.asarray(v).dtype.kind in "biuf"}
        attrs = {"equation": f"pdebench:{input_url.rstrip('/').rsplit('/', 1)[-1]}", "channel_names": labels,
                 "time_span": float(times[-1] - times[0]), "source": input_url, "layout": kind,
                 "params": params}
        return write_converted(out_url, count, read, times, attrs, n_val, out_storage_opts, progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sciscale data convert pdebench``."""
    add_convert_arguments(parser)
    parser.add_argument("--variables", default=None,
                        help="comma-separated [N, T, X(, Y)] arrays to stack as channels (default: found from "
                             "the file's layout)")


def run(args: argparse.Namespace) -> int:
    """CLI entry point; returns the process exit code."""
    variables = [v.strip() for v in args.variables.split(",")] if args.variables else None
    out = convert(args.input, args.out, variables, args.n_val, args.limit, storage_options(args.input),
                  storage_options(args.out))
    report(args.out, out)
    return 0
