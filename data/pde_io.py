"""Writing PDE trajectory datasets (shared by the PDE generators and converters).

One sample per trajectory: field ``u`` float32 [T, C, H, W] and ``t`` float32 [T]; meta ``trajectory``.
Per-channel mean/std are computed once over the training split and stored in the attrs of every split,
so validation data is normalised with the training statistics.
"""

from __future__ import annotations

import argparse
from typing import Callable, Iterable, Iterator

import numpy as np
from data.format import FieldSpec
from data.writer import DatasetWriter


class RunningStats:
    """Per-channel mean and standard deviation over [.., C, H, W] arrays, accumulated in float64."""

    def __init__(self, channels: int):
        self.count = 0
        self.total = np.zeros(channels)
        self.total_sq = np.zeros(channels)

    def update(self, u: np.ndarray) -> None:
        per_channel = np.moveaxis(u.astype(np.float64), -3, 0).reshape(u.shape[-3], -1)
        self.count += per_channel.shape[1]
        self.total += per_channel.sum(1)
        self.total_sq += (per_channel**2).sum(1)

    def result(self) -> dict[str, list[float]]:
        if self.count == 0:
            raise ValueError("no training samples were written, so no normalisation statistics exist; "
                             "ask for at least one training trajectory")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        # A constant channel (e.g. a uniform coefficient) keeps std 1 so normalising never divides by 0.
        std = np.where(var > 1e-20, np.sqrt(var), 1.0)
        return {"channel_mean": mean.tolist(), "channel_std": std.tolist()}


def trajectory_fields(times: int, channels: int, height: int, width: int) -> dict[str, FieldSpec]:
    return {"u": FieldSpec(dtype="float32", shape=(times, channels, height, width)),
            "t": FieldSpec(dtype="float32", shape=(times,))}


def write_split(url: str, trajectories: Iterable[np.ndarray], times: np.ndarray, attrs: dict, *,
                stats: dict | None, storage_options: dict | None = None, progress: bool = True,
                total: int | None = None):
    """Write one split from an iterable of [T, C, H, W] arrays. With ``stats=None`` the statistics are
    computed from this split (the training split) and stored; returns (manifest, stats)."""
    it: Iterator[np.ndarray] = iter(trajectories)
    first = next(it, None)
    if first is None:
        raise ValueError(f"{url}: no trajectories to write")
    t_len, channels, height, width = first.shape
    if len(times) != t_len:
        raise ValueError(f"{url}: {t_len} snapshots per trajectory but {len(times)} times")
    running = RunningStats(channels) if stats is None else None
    writer = DatasetWriter(url, trajectory_fields(t_len, channels, height, width),
                           meta_fields={"trajectory": "int64"}, attrs=dict(attrs, **(stats or {})),
                           storage_options=storage_options, progress=progress, total=total)
    t32 = np.asarray(times, dtype=np.float32)
    with writer:
        for index, u in enumerate(_chain(first, it)):
            if u.shape != first.shape:
                raise ValueError(f"{url}: trajectory {index} has shape {u.shape}, expected {first.shape}")
            if running is not None:
                running.update(u)
            writer.append({"u": np.ascontiguousarray(u, dtype=np.float32), "t": t32}, {"trajectory": index})
        stats = stats or running.result()
        writer.attrs.update(stats)  # known only now for the training split; the manifest is written last
    return writer.manifest, stats


def _chain(first, rest):
    yield first
    yield from rest


class TrajectorySource:
    """A simulator producing batches of trajectories [count, T, C, H, W] on ``times``."""

    equation: str = ""
    channel_names: tuple[str, ...] = ()
    times: np.ndarray
    params: dict
    batch: int = 16

    def simulate(self, rng: np.random.Generator, count: int) -> np.ndarray:
        raise NotImplementedError

    def stream(self, rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
        done = 0
        while done < count:
            block = self.simulate(rng, min(self.batch, count - done))
            done += len(block)
            yield from block


def write_trajectories(source: TrajectorySource, out_url: str, n_train: int, n_val: int, seed: int,
                       storage_options: dict | None = None, progress: bool = True) -> dict:
    """Simulate and write ``out_url``/train and (if n_val) ``out_url``/val with independent random streams."""
    if n_train < 1 or n_val < 0:
        raise ValueError(f"--n-train must be >= 1 and --n-val >= 0, got {n_train} and {n_val}")
    base = out_url.rstrip("/")
    attrs = {"equation": source.equation, "channel_names": list(source.channel_names),
             "time_span": float(source.times[-1] - source.times[0]), "params": source.params,
             "seed": seed}
    out = {}
    out["train"], stats = write_split(f"{base}/train", source.stream(np.random.default_rng([seed, 0]), n_train),
                                      source.times, dict(attrs, split="train"), stats=None,
                                      storage_options=storage_options, progress=progress, total=n_train)
    if n_val:
        out["val"], _ = write_split(f"{base}/val", source.stream(np.random.default_rng([seed, 1]), n_val),
                                    source.times, dict(attrs, split="val"), stats=stats,
                                    storage_options=storage_options, progress=progress, total=n_val)
    return out


def add_common_arguments(parser: argparse.ArgumentParser, resolution: int) -> None:
    parser.add_argument("--out", required=True, help="dataset root URL; writes <out>/train and <out>/val")
    parser.add_argument("--n-train", type=int, default=64, help="training trajectories")
    parser.add_argument("--n-val", type=int, default=16, help="held-out trajectories (0: none)")
    parser.add_argument("--resolution", type=int, default=resolution, help="grid points per side")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial conditions")
    parser.add_argument("--t-final", type=float, default=1.0, help="time of the last snapshot")
    parser.add_argument("--snapshots", type=int, default=21, help="snapshots per trajectory, t = 0..t_final")


def report(out_url: str, manifests: dict) -> None:
    """One line per written split, for the CLI."""
    for split, m in manifests.items():
        shape = "x".join(map(str, m.fields["u"].shape))
        print(f"{out_url.rstrip('/')}/{split}: {m.num_samples} trajectories of [{shape}] (T, C, H, W), "
              f"{len(m.shards)} shard(s), channels {m.attrs.get('channel_names')}")


def open_hdf5(url: str, storage_options: dict | None = None):
    """An h5py.File on a local path or an object-store URL (read through fsspec, range requests)."""
    import h5py

    from data.storage import filesystem

    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise ValueError(f"{url}: file not found; check the path (and for s3:// URLs the endpoint and bucket)")
    return h5py.File(fs.open(path, "rb"), "r")


def write_converted(out_url: str, count: int, read: Callable[[int], np.ndarray], times: np.ndarray,
                    attrs: dict, n_val: int, storage_options: dict | None = None, progress: bool = True) -> dict:
    """Write trajectories ``read(i) -> [T, C, H, W]`` for i < count: the last ``n_val`` to <out>/val and the
    rest to <out>/train, with statistics from the training part."""
    if not 0 <= n_val < count:
        raise ValueError(f"--n-val {n_val}: must be >= 0 and below the {count} trajectories in the file")
    base, n_train = out_url.rstrip("/"), count - n_val
    out = {}
    out["train"], stats = write_split(f"{base}/train", (read(i) for i in range(n_train)), times,
                                      dict(attrs, split="train"), stats=None, storage_options=storage_options,
                                      progress=progress, total=n_train)
    if n_val:
        out["val"], _ = write_split(f"{base}/val", (read(i) for i in range(n_train, count)), times,
                                    dict(attrs, split="val"), stats=stats, storage_options=storage_options,
                                    progress=progress, total=n_val)
    return out


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="source file: local path or s3://bucket/key")
    parser.add_argument("--out", required=True, help="dataset root URL; writes <out>/train and <out>/val")
    parser.add_argument("--n-val", type=int, default=0, help="last N trajectories go to <out>/val")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N trajectories")
