"""Per-rank local shard cache: refcounted shard files, background downloads, checksum verification.

A shard is downloaded to a temporary name in the cache directory, verified against the manifest's checksum
(one re-fetch on mismatch, then an error naming the shard) and renamed into place, so a reader never maps a
partial file. The loader holds one reference per planned *visit* of a shard (its span of uses in one stream
and epoch) and releases it after the visit's last step; at zero references the file is deleted.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from data.format import Manifest
from data.storage import build_client, join, with_retries

_MISSING_HINT = ("the manifest names this shard but the object is gone: the dataset version is incomplete; "
                 "restore the object or rewrite the dataset version")


class ShardCache:
    """Local copies of the shards one rank needs now or soon; bounded by the loader's visit plan."""

    def __init__(self, urls: list[str], manifests: list[Manifest], options: list[dict], directory: str | None,
                 threads: int = 4) -> None:
        self.urls, self.manifests, self.options = urls, manifests, options
        self.clients = [build_client(u, o) for u, o in zip(urls, options)]
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="sciscale-cache-")
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

    def wait(self, d: int, shard: int) -> str:
        """The local path of an acquired shard, once downloaded and verified (download errors re-raised)."""
        future = self._futures.get((d, shard))
        if future is None:
            raise RuntimeError(f"shard {shard} of dataset {d} read before it was acquired (a loader bug)")
        return future.result()

    def release(self, d: int, shard: int) -> None:
        """One reference less; the file is deleted when none is left."""
        key = (d, shard)
        with self._lock:
            self._refs[key] -= 1
            if self._refs[key] > 0:
                return
            del self._refs[key]
            future = self._futures.pop(key)
            self.held_bytes -= self.shard_bytes(d, shard)
        if future.cancel() or future.exception() is None:  # wait: a late download must not outlive the unlink
            _unlink(self.local_path(d, shard))

    def _download(self, d: int, shard: int) -> str:
        info = self.manifests[d].shards[shard]
        where = join(self.urls[d], info.key)
        client = self.clients[d]
        path = self.local_path(d, shard)
        tmp = f"{path}.tmp-{os.getpid()}-{random.getrandbits(32):08x}"
        start = time.perf_counter()
        try:
            for attempt in range(2):
                size, got = with_retries(lambda: client.download(info.key, tmp), where, self.options[d],
                                         missing_hint=_MISSING_HINT)
                self.fetches += 1
                self.fetched_bytes += size
                if got == info.checksum:
                    break
                if attempt == 1:
                    raise ValueError(f"{where}: checksum {got} does not match the manifest's {info.checksum}, also "
                                     "after a re-fetch: the stored shard is corrupt. Restore the object or rewrite "
                                     "the dataset version (`sciscale data verify URL` checks every shard)")
            os.replace(tmp, path)
        finally:
            _unlink(tmp)
            with self._lock:
                self.download_seconds += time.perf_counter() - start
        return path

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            keys = list(self._futures)
            self._futures.clear()
            self._refs.clear()
            self.held_bytes = 0
        for d, shard in keys:
            _unlink(self.local_path(d, shard))
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
