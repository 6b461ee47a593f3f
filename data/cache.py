"""Per-rank local shard cache: refcounted shards, background downloads, checksum verification.

On disk, a shard is downloaded to a temporary name in the cache directory, verified against the manifest's
checksum (one re-fetch on mismatch, then an error naming the shard) and renamed into place, so a reader never
maps a partial file. In memory (no DataLoader worker processes), the verified download buffer itself is the
cached shard: no file write and no page faults on a fresh mapping (docs/benchmarks-data.md). The loader holds
one reference per planned *visit* of a shard (its span of uses in one stream and epoch) and releases it after
the visit's last step; at zero references the file is deleted (the buffer dropped).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from data.format import Manifest, checksum
from data.storage import build_client, join, with_retries

_MISSING_HINT = ("the manifest names this shard but the object is gone: the dataset version is incomplete; "
                 "restore the object or rewrite the dataset version")


class MemoryShard:
    """A verified shard held in memory: its name (as a file would have) and the downloaded buffer."""

    __slots__ = ("name", "buffer")

    def __init__(self, name: str, buffer) -> None:
        self.name, self.buffer = name, buffer


class ShardCache:
    """Local copies of the shards one rank needs now or soon; bounded by the loader's visit plan."""

    def __init__(self, urls: list[str], manifests: list[Manifest], options: list[dict], directory: str | None,
                 threads: int = 4, in_memory: bool = False) -> None:
        self.urls, self.manifests, self.options = urls, manifests, options
        self.clients = [build_client(u, o) for u, o in zip(urls, options)]
        self.in_memory = in_memory
        self._own_dir = directory is None and not in_memory
        self.directory = directory or ("" if in_memory else tempfile.mkdtemp(prefix="sciscale-cache-"))
        if not in_memory:
            self._clear_stale()
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="sciscale-fetch")
        self._lock = threading.Lock()
        self._refs: dict[tuple[int, int], int] = {}
        self._futures: dict[tuple[int, int], Future] = {}
        self.held_bytes = 0
        self.peak_bytes = 0
        self.fetches = 0
        self.fetched_bytes = 0
        self.download_seconds = 0.0  # summed over downloads: / wall time = mean downloads in flight

    def _clear_stale(self) -> None:
        # files left by an earlier, killed process of this rank: never trusted, never mixed with new ones
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.endswith(".shard") or ".tmp-" in name:
                os.unlink(os.path.join(self.directory, name))

    def local_path(self, d: int, shard: int) -> str:
        version = self.manifests[d].version[:16]
        return os.path.join(self.directory, f"{version}-{shard:06d}.shard")

    def shard_bytes(self, d: int, shard: int) -> int:
        return self.manifests[d].shards[shard].bytes

    def acquire(self, d: int, shard: int) -> None:
        """One more reference; starts the download when the shard is not cached yet."""
        key = (d, shard)
        with self._lock:
            self._refs[key] = self._refs.get(key, 0) + 1
            if key in self._futures:
                return
            self.held_bytes += self.shard_bytes(d, shard)
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            self._futures[key] = self._pool.submit(self._download, d, shard)

    def wait(self, d: int, shard: int) -> "str | MemoryShard":
        """An acquired shard once downloaded and verified: its local path, or in memory a MemoryShard
        (download errors re-raised)."""
        future = self._futures.get((d, shard))
        if future is None:
            raise RuntimeError(f"shard {shard} of dataset {d} read before it was acquired (a loader bug)")
        return future.result()

    def release(self, d: int, shard: int) -> bool:
        """One reference less; the file is deleted (the buffer dropped) when none is left: then True."""
        key = (d, shard)
        with self._lock:
            self._refs[key] -= 1
            if self._refs[key] > 0:
                return False
            del self._refs[key]
            future = self._futures.pop(key)
            self.held_bytes -= self.shard_bytes(d, shard)
        if self.in_memory:
            future.cancel()  # a running download's buffer is dropped with the future
        elif future.cancel() or future.exception() is None:  # wait: a late download must not outlive the unlink
            _unlink(self.local_path(d, shard))
        return True

    def _download(self, d: int, shard: int) -> "str | MemoryShard":
        if self.in_memory:
            return self._fetch_to_memory(d, shard)
        info = self.manifests[d].shards[shard]
        where = join(self.urls[d], info.key)
        client = self.clients[d]
        path = self.local_path(d, shard)
        tmp = f"{path}.tmp-{os.getpid()}-{random.getrandbits(32):08x}"
        start = time.perf_counter()
        try:
            for _ in range(2):  # one re-fetch on a checksum mismatch
                size, got = with_retries(lambda: client.download(info.key, tmp), where, self.options[d],
                                         missing_hint=_MISSING_HINT)
                self.fetches += 1
                self.fetched_bytes += size
                if got == info.checksum:
                    break
            else:
                raise _corrupt(where, got, info.checksum)
            os.replace(tmp, path)
        finally:
            _unlink(tmp)
            with self._lock:
                self.download_seconds += time.perf_counter() - start
        return path

    def _fetch_to_memory(self, d: int, shard: int) -> MemoryShard:
        info = self.manifests[d].shards[shard]
        where = join(self.urls[d], info.key)
        client = self.clients[d]
        start = time.perf_counter()
        try:
            for _ in range(2):  # one re-fetch on a checksum mismatch
                data = with_retries(lambda: client.get(info.key), where, self.options[d], missing_hint=_MISSING_HINT)
                self.fetches += 1
                self.fetched_bytes += len(memoryview(data))
                got = checksum(data)
                if got == info.checksum:
                    return MemoryShard(self.local_path(d, shard), data)  # a name: no directory in memory
            raise _corrupt(where, got, info.checksum)
        finally:
            with self._lock:
                self.download_seconds += time.perf_counter() - start

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            keys = list(self._futures)
            self._futures.clear()
            self._refs.clear()
            self.held_bytes = 0
        if not self.in_memory:
            for d, shard in keys:
                _unlink(self.local_path(d, shard))
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


def _corrupt(where: str, got: str, expected: str) -> ValueError:
    return ValueError(f"{where}: checksum {got} does not match the manifest's {expected}, also after a re-fetch: "
                      "the stored shard is corrupt. Restore the object or rewrite the dataset version "
                      "(`sciscale data verify URL` checks every shard)")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
