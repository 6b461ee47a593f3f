"""Streaming throughput on one SeaweedFS bucket, in one run: raw whole-object GETs (the bound) vs the reader.

    OMP_NUM_THREADS=1 python benchmarks/data_stream.py [--dense-mib 384] [--graphs 400000]

Starts SeaweedFS on loopback under /tmp, writes a dense dataset (4x128x128 float32 per sample, 16 MiB
shards) and a small-graph dataset (columnar, ~20 atoms each), then prints one table: raw GETs with 4-deep
prefetch (s3fs and obstore), the sciscale reader on the same shards (fraction of the bound), small graphs
decoded per second, the time to build a 10M-sample / 10k-shard epoch plan, and the reader's peak memory
against its cache and the dataset size. Everything is written under /tmp and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import psutil

from data.cli import raw_get_throughput
from data.format import FieldSpec, read_manifest
from data.loader import build_loader
from data.plan import Plan, PlanSource
from data.spec import DataSpec, StorageSpec
from data.storage import storage_options
from data.writer import DatasetWriter
from orchestrator.services import create_bucket, s3_env, start_seaweedfs

MiB = 1 << 20


def write_dense(url: str, mib: int) -> None:
    fields = {"u": FieldSpec(dtype="float32", shape=(4, 128, 128))}
    rng = np.random.default_rng(0)
    block = rng.normal(size=(8, 4, 128, 128)).astype(np.float32)
    with DatasetWriter(url, fields, shard_bytes=16 * MiB, progress=False, storage_options=storage_options(url)) as w:
        for i in range(mib * MiB // block[0].nbytes):
            w.append({"u": block[i % 8]})


def write_graphs(url: str, n: int) -> None:
    fields = {"pos": FieldSpec(dtype="float32", shape=(3,), ragged=True),
              "z": FieldSpec(dtype="int32", shape=(), ragged=True), "energy": FieldSpec(dtype="float32")}
    rng = np.random.default_rng(0)
    pos, z = rng.normal(size=(64, 3)).astype(np.float32), rng.integers(1, 90, 64).astype(np.int32)
    with DatasetWriter(url, fields, meta_fields={"n_atoms": "int32"}, shard_bytes=16 * MiB, progress=False,
                       storage_options=storage_options(url)) as w:
        for i in range(n):
            k = 8 + i % 25
            w.append({"pos": pos[:k], "z": z[:k], "energy": np.float32(i)}, {"n_atoms": k})


def graph_collate(examples: list[dict]) -> dict:
    """What an interatomic family does: concatenate atoms, keep a per-atom graph index."""
    import torch

    counts = np.fromiter((len(e["z"]) for e in examples), np.int64, len(examples))
    return {"pos": torch.from_numpy(np.concatenate([e["pos"] for e in examples])),
            "z": torch.from_numpy(np.concatenate([e["z"] for e in examples])),
            "energy": torch.from_numpy(np.array([e["energy"] for e in examples])),
            "batch": torch.from_numpy(np.repeat(np.arange(len(examples)), counts))}


class PeakRSS:
    """Samples this process's resident memory in a thread."""

    def __init__(self) -> None:
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.base = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.base


def read_all(url: str, client: str, global_batch: int, workers: int, collate=None, epochs: int = 2) -> dict:
    """``epochs`` epochs through the reader (1 rank, C=2, window 2, prefetch 4): seconds, samples, memory."""
    manifest = read_manifest(url, storage_options(url))
    spec = DataSpec(train=[{"url": url}], canonical_streams=2, shuffle_window=2, prefetch=4, num_workers=workers,
                    storage=StorageSpec(client=client))
    steps = epochs * manifest.num_samples // global_batch
    rss = PeakRSS()
    loader = build_loader(spec, spec.train, split="train", rank=0, world_size=1, global_batch=global_batch,
                          micro_batch=global_batch, seed=0, collate=collate)
    start, samples = time.perf_counter(), 0
    for _, micro in zip(range(steps), loader):
        samples += sum(len(mb["sample_id"]) for mb in micro)
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "samples": samples, "peak_cache": loader.cache.peak_bytes,
           "fetched": loader.cache.fetched_bytes}
    loader.close()
    out["rss"] = rss.stop()
    return out


def plan_time() -> float:
    counts = np.full(10_000, 1_000)
    start = time.perf_counter()
    plan = Plan([PlanSource(counts)], seed=0, streams=8, global_batch=256, window=4)
    plan.rank_block(0, 1, 0, 1)  # builds the epoch's full order
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense-mib", type=int, default=384)
    ap.add_argument("--graphs", type=int, default=400_000)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sciscale-bench-", dir="/tmp")
    service = start_seaweedfs(os.path.join(work, "weed"))
    os.environ.update(s3_env(service.endpoint))
    os.environ["TMPDIR"] = work  # reader caches under the bench folder
    try:
        create_bucket(service.endpoint, "bench")
        dense, graphs = "s3://bench/dense", "s3://bench/graphs"
        write_dense(dense, args.dense_mib)
        write_graphs(graphs, args.graphs)
        run(dense, graphs, args.workers)
    finally:
        service.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(dense: str, graphs: str, workers: int) -> None:
    m = read_manifest(dense, storage_options(dense))
    keys, size = [s.key for s in m.shards], m.total_bytes()
    sample_bytes = 4 * 128 * 128 * 4
    rows = []
    for client in ("fsspec", "obstore"):
        opts = storage_options(dense, StorageSpec(client=client))
        raw_s, raw_b = raw_get_throughput(dense, opts, keys * 2, 4)  # the same bytes as 2 reader epochs
        r = read_all(dense, client, 32, workers)
        bound = raw_b / raw_s / 1e6
        got = r["samples"] * sample_bytes / r["seconds"] / 1e6
        rows.append((f"dense, raw GETs 4-deep ({client})", f"{bound:,.0f} MB/s", "bound"))
        rows.append((f"dense, sciscale reader ({client})", f"{got:,.0f} MB/s", f"{got / bound:.0%} of bound"))
        rows.append((f"  peak cache / RSS growth / dataset ({client})",
                     f"{r['peak_cache'] / MiB:.0f} / {r['rss'] / MiB:.0f} / {size / MiB:.0f} MiB", ""))
    gm = read_manifest(graphs, storage_options(graphs))
    for client in ("fsspec", "obstore"):
        for name, collate in (("columnar batch decode", None), ("per-sample collate", graph_collate)):
            g = read_all(graphs, client, 1024, workers, collate=collate, epochs=1)
            rows.append((f"small graphs, {name} ({client})", f"{g['samples'] / g['seconds']:,.0f}/s", ""))
    rows.append(("epoch plan, 10M samples in 10k shards", f"{plan_time():.2f} s", ""))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{width}}  {'value':>22}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")


if __name__ == "__main__":
    main()
