"""`sciscale data inspect|verify|bench URL` (torch-free at import; bench imports torch when it runs)."""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

from data.spec import StorageSpec


def register(subparsers) -> argparse._SubParsersAction:
    """Add the ``data`` command group and its inspect/verify/bench commands; return the group's subparsers."""
    data = subparsers.add_parser("data", help="datasets: inspect, verify, bench, generate, convert")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = sub.add_parser("inspect", help="schema, sample count, shard sizes and metadata of a dataset version")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", help="download every shard and meta array and check its checksum")
    _common(p)
    p.add_argument("--threads", type=int, default=4, help="parallel downloads (default 4)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("bench", help="read throughput of the sciscale reader (and raw GETs) on a dataset")
    _common(p)
    p.add_argument("--steps", type=int, default=50, help="global steps to read (default 50)")
    p.add_argument("--global-batch", type=int, default=64, help="samples per global step (default 64)")
    p.add_argument("--streams", type=int, default=8, help="canonical streams C (default 8)")
    p.add_argument("--prefetch", type=int, default=4, help="shards prefetched ahead (default 4)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--shard-cache", choices=["auto", "memory", "disk"], default="auto",
                   help="hold shards in memory or in files (default auto: memory when --workers is 0)")
    p.add_argument("--raw", action="store_true", help="also time raw whole-object GETs (the bound)")
    p.set_defaults(func=cmd_bench)
    return sub


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="dataset version root: local path, file://, s3://bucket/prefix, ...")
    p.add_argument("--endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL / S3_ENDPOINT_URL)")
    p.add_argument("--client", choices=["auto", "fsspec", "obstore"], default="auto", help="S3 download client")


def _open(args):
    from data.format import read_manifest
    from data.storage import storage_options

    storage = StorageSpec(endpoint_url=args.endpoint, client=args.client)
    options = storage_options(args.url, storage)
    return read_manifest(args.url, options), options, storage


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def summary(manifest) -> dict:
    sizes = [s.bytes for s in manifest.shards]
    return {"version": manifest.version, "num_samples": manifest.num_samples, "num_shards": len(sizes),
            "total_bytes": sum(sizes), "shard_bytes": {"min": min(sizes), "max": max(sizes)},
            "fields": {k: v.model_dump() for k, v in manifest.fields.items()},
            "meta_fields": {k: v.dtype for k, v in manifest.meta_fields.items()},
            "attrs": sorted(manifest.attrs)}


def cmd_inspect(args) -> int:
    manifest, _, _ = _open(args)
    info = summary(manifest)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{args.url}\n  version   {info['version']}\n  samples   {info['num_samples']:,}\n  shards    "
          f"{info['num_shards']:,} ({_size(info['total_bytes'])}; {_size(info['shard_bytes']['min'])} .. "
          f"{_size(info['shard_bytes']['max'])} each)")
    print("  fields")
    for name, f in manifest.fields.items():
        shape = ("[n, " + ", ".join(map(str, f.shape)) + "]") if f.ragged else str(list(f.shape))
        print(f"    {name:<20} {f.dtype:<8} {shape}{'  ragged' if f.ragged else ''}")
    if manifest.meta_fields:
        print("  meta      " + ", ".join(f"{k} ({v.dtype})" for k, v in manifest.meta_fields.items()))
    if manifest.attrs:
        print("  attrs     " + ", ".join(sorted(manifest.attrs)))
    return 0


def cmd_verify(args) -> int:
    from data.format import ShardView, checksum
    from data.storage import build_client, join, with_retries

    manifest, options, _ = _open(args)
    client = build_client(args.url, options)
    objects = [(s.key, s.checksum, s) for s in manifest.shards]
    objects += [(m.key, m.checksum, None) for m in manifest.meta_fields.values()]

    def check(item) -> str | None:
        key, expected, shard = item
        where = join(args.url, key)
        try:
            data = with_retries(lambda: client.get(key), where, options)
        except ValueError as exc:
            return str(exc)
        got = checksum(data)
        if got != expected:
            return f"{where}: checksum {got}, manifest says {expected}"
        if shard is not None:
            try:
                view = ShardView(memoryview(data), manifest.fields, where)
            except ValueError as exc:
                return str(exc)
            if view.num_samples != shard.num_samples:
                return f"{where}: {view.num_samples} samples, manifest says {shard.num_samples}"
        return None

    with ThreadPoolExecutor(max(1, args.threads)) as pool:
        problems = [p for p in pool.map(check, objects) if p]
    for p in problems:
        print(f"BAD  {p}")
    print(f"{len(objects) - len(problems)}/{len(objects)} objects verified"
          + ("" if not problems else "; rewrite the dataset version or restore the objects listed above"))
    return 1 if problems else 0


def raw_get_throughput(url: str, options: dict, keys: list[str], prefetch: int) -> tuple[float, int]:
    """Seconds and bytes for whole-object GETs of ``keys`` with ``prefetch`` requests in flight."""
    from data.storage import build_client

    client = build_client(url, options)
    start, total = time.perf_counter(), 0
    with ThreadPoolExecutor(max(1, prefetch)) as pool:
        for data in pool.map(client.get, keys):
            total += len(memoryview(data))
    return time.perf_counter() - start, total


def cmd_bench(args) -> int:
    from data.loader import build_loader
    from data.spec import DataSpec

    manifest, options, storage = _open(args)
    spec = DataSpec(train=[{"url": args.url}], canonical_streams=args.streams, prefetch=args.prefetch,
                    num_workers=args.workers, shard_cache=args.shard_cache)
    loader = build_loader(spec, spec.train, split="train", rank=0, world_size=1, global_batch=args.global_batch,
                          micro_batch=args.global_batch, seed=0, storage=storage)
    start, samples = time.perf_counter(), 0
    try:
        for _, micro in zip(range(args.steps), loader):
            samples += sum(len(mb["sample_id"]) for mb in micro)
        seconds = time.perf_counter() - start
        fetched, peak = loader.cache.fetched_bytes, loader.cache.peak_bytes
    finally:
        loader.close()
    print(f"reader ({loader.cache.clients[0].name}): {samples:,} samples in {seconds:.2f} s = "
          f"{samples / seconds:,.0f} samples/s; {_size(fetched)} fetched = {fetched / seconds / 1e6:,.0f} MB/s; "
          f"peak cache {_size(peak)}")
    if args.raw:
        keys = [s.key for s in manifest.shards][: max(1, fetched // max(1, manifest.shards[0].bytes))]
        secs, nbytes = raw_get_throughput(args.url, options, keys, args.prefetch)
        print(f"raw GETs: {_size(nbytes)} in {secs:.2f} s = {nbytes / secs / 1e6:,.0f} MB/s")
    return 0
