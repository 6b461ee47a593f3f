"""Streaming throughput on one SeaweedFS bucket, in one run: raw whole-object GETs (the bound) vs the reader.

    OMP_NUM_THREADS=1 python benchmarks/data_stream.py [--dense-mib 512] [--mem-mib 128,1024]
        [--graphs 400000] [--repeats 5] [--prefetch 4] [--pin]

Starts SeaweedFS on loopback under /tmp, writes a dense dataset (4x128x128 float32 per sample, 16 MiB
shards; read with ``--workers`` DataLoader processes, default 0, so shards are held in memory; the disk
cache with 1 worker process is measured too), more dense datasets of other sizes (memory only) and a
small-graph dataset (columnar, ~20 atoms each), then prints one table. Bound and reader alternate ``--repeats`` times per client (s3fs and obstore),
each pair back to back on the same bytes, so that a shared machine's load hits both alike: medians and the
median of the per-pair ratios are reported, with the range. Also: small graphs decoded per second (median;
per process CPU second too, which load does not change), the 10M-sample / 10k-shard epoch plan (wall and
CPU seconds, median of 5), the reader's peak memory at each dataset size, and the load average. Everything
is written under /tmp and removed at the end.
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


PREFETCH = 4  # the spec's default; --prefetch 8 (the next window change + 4) measured no faster


def read_all(url: str, client: str, global_batch: int, workers: int, collate=None, epochs: int = 2,
             shard_cache: str = "auto") -> dict:
    """``epochs`` epochs through the reader (1 rank, C=2, window 2, prefetch PREFETCH, 4 downloads in flight):
    seconds, CPU (this process), samples, memory, mean downloads in flight."""
    manifest = read_manifest(url, storage_options(url))
    spec = DataSpec(train=[{"url": url}], canonical_streams=2, shuffle_window=2, prefetch=PREFETCH,
                    num_workers=workers, shard_cache=shard_cache)
    steps = epochs * manifest.num_samples // global_batch
    rss = PeakRSS()
    loader = build_loader(spec, spec.train, split="train", rank=0, world_size=1, global_batch=global_batch,
                          micro_batch=global_batch, seed=0, collate=collate, storage=StorageSpec(client=client))
    start, cpu, samples = time.perf_counter(), time.process_time(), 0
    for _, micro in zip(range(steps), loader):
        samples += sum(len(mb["sample_id"]) for mb in micro)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    out = {"seconds": seconds, "cpu": cpu, "samples": samples, "peak_cache": loader.cache.peak_bytes,
           "fetched": loader.cache.fetched_bytes,
           "in_flight": loader.cache.download_seconds / seconds}
    loader.close()
    out["rss"] = rss.stop()
    return out


def plan_time(world_size: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds to build rank 0's epoch plan: sample order and every shard visit of its streams."""
    counts = np.full(10_000, 1_000)
    start, cpu = time.perf_counter(), time.process_time()
    plan = Plan([PlanSource(counts)], seed=0, streams=8, global_batch=256, window=4)
    plan.rank_block(0, world_size, 0, 1)  # the epoch's full order of every stream
    for c in plan.rank_streams(0, world_size):
        plan.visits(0, c, 0)  # the shard schedule the cache prefetches by
    return time.perf_counter() - start, time.process_time() - cpu


def load() -> str:
    return "/".join(f"{x:.0f}" for x in os.getloadavg())


def spread(values: list[float], fmt: str) -> str:
    return f"{format(float(np.median(values)), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense-mib", type=int, default=512)
    ap.add_argument("--mem-mib", default="128,1024", help="more dense dataset sizes, for the memory rows only")
    ap.add_argument("--graphs", type=int, default=400_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--prefetch", type=int, default=4, help="reader prefetch (shard visits ahead; 4 downloads run)")
    ap.add_argument("--pin", action="store_true", help="S3 server on CPU 0, this process on CPU 1 (an object "
                    "store that does not share the reader's cores, as in a cluster)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sciscale-bench-", dir="/tmp")
    if args.pin:  # the server inherits CPU 0; this thread (and the threads it starts later) move to CPU 1
        os.sched_setaffinity(0, {0})
    service = start_seaweedfs(os.path.join(work, "weed"))
    if args.pin:
        os.sched_setaffinity(0, {1})
    os.environ.update(s3_env(service.endpoint))
    os.environ["TMPDIR"] = work  # reader caches under the bench folder
    try:
        create_bucket(service.endpoint, "bench")
        sizes = sorted({args.dense_mib, *(int(x) for x in args.mem_mib.split(",") if x)})
        for mib in sizes:
            write_dense(f"s3://bench/dense-{mib}", mib)
        write_graphs("s3://bench/graphs", args.graphs)
        print(f"written; load average {load()}", flush=True)
        global PREFETCH
        PREFETCH = args.prefetch
        rows = dense_rows(f"s3://bench/dense-{args.dense_mib}", args.repeats, args.workers)
        rows += memory_rows([f"s3://bench/dense-{mib}" for mib in sizes if mib != args.dense_mib], args.workers)
        rows += graph_rows("s3://bench/graphs", args.repeats, args.workers)
        rows += plan_rows()
        rows.append(("load average (1/5/15 min) at the end", load(), "2 cores"))
        print_table(rows)
    finally:
        service.stop()
        shutil.rmtree(work, ignore_errors=True)


def dense_rows(url: str, repeats: int, workers: int) -> list[tuple[str, str, str]]:
    m = read_manifest(url, storage_options(url))
    keys, size, sample_bytes = [s.key for s in m.shards], m.total_bytes(), 4 * 128 * 128 * 4
    rows = []
    for client in ("fsspec", "obstore"):
        opts = storage_options(url, StorageSpec(client=client))
        bounds, reads, ratios, mem, cpu, bound_cpu = [], [], [], [], [], []
        for i in range(repeats):
            def bound() -> float:
                start = time.process_time()
                raw_s, raw_b = raw_get_throughput(url, opts, keys * 2, 4)  # the same bytes as 2 reader epochs
                bound_cpu.append((time.process_time() - start) * 1e9 / raw_b)
                return raw_b / raw_s / 1e6

            def reader() -> float:
                r = read_all(url, client, 32, workers)
                mem.append(r)
                cpu.append(r["cpu"] * 1e9 / (r["samples"] * sample_bytes))
                return r["samples"] * sample_bytes / r["seconds"] / 1e6
            # alternate which goes first, so that a drift in load favours neither
            pair = (bound(), reader()) if i % 2 == 0 else tuple(reversed((reader(), bound())))
            bounds.append(pair[0])
            reads.append(pair[1])
            ratios.append(pair[1] / pair[0])
            print(f"  {client} repeat {i}: bound {pair[0]:,.0f} MB/s, reader {pair[1]:,.0f} MB/s, load {load()}",
                  flush=True)
        name = {"fsspec": "s3fs", "obstore": "obstore"}[client]
        rows.append((f"dense, raw GETs 4-deep ({name})", spread(bounds, ",.0f") + " MB/s",
                     f"bound; process CPU {np.median(bound_cpu):.2f} s per GB"))
        rows.append((f"dense, sciscale reader ({name})", spread(reads, ",.0f") + " MB/s",
                     f"{spread([r * 100 for r in ratios], '.0f')} % of bound (per-pair ratios)"))
        rows.append((f"  reader: mean downloads in flight / process CPU ({name})",
                     f"{np.median([r['in_flight'] for r in mem]):.1f} / {np.median(cpu):.2f} s per GB", "bound: 4"))
        rows.append(memory_row(mem[-1], size, name))
    # the disk cache, which DataLoader worker processes need: shards written to files and mapped by 1 worker
    disk, ratios = [], []
    opts = storage_options(url, StorageSpec(client="obstore"))
    for _ in range(max(1, repeats // 2)):
        raw_s, raw_b = raw_get_throughput(url, opts, keys * 2, 4)
        r = read_all(url, "obstore", 32, 1, shard_cache="disk")
        disk.append(r["samples"] * sample_bytes / r["seconds"] / 1e6)
        ratios.append(disk[-1] / (raw_b / raw_s / 1e6))
    rows.append(("dense, reader with disk cache + 1 worker process (obstore)", spread(disk, ",.0f") + " MB/s",
                 f"{spread([r * 100 for r in ratios], '.0f')} % of bound (per-pair ratios)"))
    return rows


def memory_row(r: dict, size: int, name: str) -> tuple[str, str, str]:
    return (f"  peak cache / RSS growth / dataset ({name})",
            f"{r['peak_cache'] / MiB:.0f} / {r['rss'] / MiB:.0f} / {size / MiB:.0f} MiB", "")


def memory_rows(urls: list[str], workers: int) -> list[tuple[str, str, str]]:
    rows = []
    for url in urls:
        size = read_manifest(url, storage_options(url)).total_bytes()
        rows.append(memory_row(read_all(url, "obstore", 32, workers), size, "obstore"))
    return rows


def graph_rows(url: str, repeats: int, workers: int) -> list[tuple[str, str, str]]:
    rows = []
    for client in ("fsspec", "obstore"):
        runs = [read_all(url, client, 1024, workers, epochs=1) for _ in range(repeats)]
        rate = [g["samples"] / g["seconds"] for g in runs]
        cpu = [g["samples"] / g["cpu"] for g in runs]
        name = {"fsspec": "s3fs", "obstore": "obstore"}[client]
        rows.append((f"small graphs, columnar batch decode ({name})", spread(rate, ",.0f") + " /s",
                     f"{np.median(cpu):,.0f} per CPU second"))
    g = read_all(url, "obstore", 1024, workers, collate=graph_collate, epochs=1)
    rows.append(("small graphs, per-sample collate (obstore)", f"{g['samples'] / g['seconds']:,.0f} /s", "one run"))
    return rows


def plan_rows() -> list[tuple[str, str, str]]:
    rows = []
    for world in (1, 8):
        times = [plan_time(world) for _ in range(5)]
        rows.append((f"epoch plan, 10M samples in 10k shards, rank 0 of {world}",
                     spread([t[0] for t in times], ".2f") + " s", f"CPU {np.median([t[1] for t in times]):.2f} s"))
    return rows


def print_table(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{width}}  {'value':>28}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>28}  {note}")


if __name__ == "__main__":
    main()
