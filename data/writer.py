"""Streaming dataset writer: bounded memory (one shard buffered), shards first, manifest last.

A version is readable only once ``manifest.json`` exists, and the manifest is the last object written
(through a temporary name and a rename on local disks; an S3 PUT is atomic). A writer that dies halfway
leaves shards but no manifest: no readable version. Rerunning it at the same URL overwrites those shards
and removes any left over from the earlier attempt.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np
import xxhash
from tqdm import tqdm

from data.format import (ALIGN, MANIFEST_NAME, META_DIR, SHARD_DIR, FieldSpec, Manifest, MetaFieldInfo,
                         ShardInfo, checksum, content_version, shard_layout)
from data.storage import filesystem, join, with_retries, write_object

DEFAULT_SHARD_BYTES = 64 * 1024 * 1024


def _as_fields(fields: dict[str, FieldSpec | dict]) -> dict[str, FieldSpec]:
    if not fields:
        raise ValueError("DatasetWriter: fields is empty; give at least one {name: FieldSpec(dtype, shape)}")
    return {name: f if isinstance(f, FieldSpec) else FieldSpec.model_validate(f) for name, f in fields.items()}


def _as_meta(meta_fields: dict[str, str] | Iterable[str] | None) -> dict[str, str]:
    if meta_fields is None:
        return {}
    if isinstance(meta_fields, dict):
        return {k: np.dtype(v).name for k, v in meta_fields.items()}
    return {k: "float64" for k in meta_fields}


class DatasetWriter:
    """Append samples (dicts of arrays) and per-sample metadata; ``close()`` publishes the version."""

    def __init__(self, url: str, fields: dict[str, FieldSpec | dict], *, meta_fields=None,
                 attrs: dict | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES,
                 storage_options: dict | None = None, progress: bool = True, total: int | None = None) -> None:
        if shard_bytes < ALIGN:
            raise ValueError(f"DatasetWriter: shard_bytes={shard_bytes} is too small; use e.g. 64 MiB "
                             f"({DEFAULT_SHARD_BYTES})")
        self.url, self.fields, self.meta_dtypes = url, _as_fields(fields), _as_meta(meta_fields)
        self.attrs, self.shard_bytes, self.options = dict(attrs or {}), shard_bytes, storage_options
        self.fs, self.root = filesystem(url, storage_options)
        self._check_not_published()
        self._buffers: dict[str, list[np.ndarray]] = {f: [] for f in self.fields}
        self._meta: dict[str, list[np.ndarray]] = {m: [] for m in self.meta_dtypes}
        self._meta_pending: dict[str, list] = {m: [] for m in self.meta_dtypes}
        self._buffered_bytes = 0
        self._buffered_samples = 0
        self._shards: list[ShardInfo] = []
        self._num_samples = 0
        self._closed = False
        self.manifest: Manifest | None = None
        """The published manifest, once ``close()`` has run."""
        self._bar = tqdm(total=total, disable=not progress, unit="sample", desc=f"write {url}")

    def _check_not_published(self) -> None:
        path = join(self.root, MANIFEST_NAME)
        if with_retries(lambda: self.fs.exists(path), join(self.url, MANIFEST_NAME), self.options):
            raise ValueError(f"{join(self.url, MANIFEST_NAME)} exists: dataset versions are immutable. Write the "
                             "new data to a new URL (e.g. a new version suffix) or delete the old version first")

    def append(self, sample: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        """Add one sample: every field of the schema, shaped as declared; ``meta`` holds every meta field."""
        if self._closed:
            raise ValueError(f"DatasetWriter({self.url}): append after close()")
        sid = self._num_samples + self._buffered_samples
        if set(sample) != set(self.fields):
            raise ValueError(f"sample {sid}: fields {sorted(sample)} do not match the schema "
                             f"{sorted(self.fields)}; pass exactly the declared fields")
        for name, spec in self.fields.items():
            arr = self._check_array(sid, name, spec, sample[name])
            self._buffers[name].append(arr)
            self._buffered_bytes += arr.nbytes
        self._append_meta(sid, meta or {})
        self._buffered_samples += 1
        self._bar.update(1)
        if self._buffered_bytes >= self.shard_bytes:
            self._flush()

    def _check_array(self, sid: int, name: str, spec: FieldSpec, value) -> np.ndarray:
        arr = np.asarray(value)
        if not np.can_cast(arr.dtype, spec.dtype, "same_kind"):
            raise ValueError(f"sample {sid}, field {name!r}: dtype {arr.dtype} cannot be stored as {spec.dtype}; "
                             "convert it or change the FieldSpec")
        tail = arr.shape[1:] if spec.ragged else arr.shape
        if tail != spec.shape or (spec.ragged and arr.ndim != len(spec.shape) + 1):
            want = f"[n, {', '.join(map(str, spec.shape))}]" if spec.ragged else str(spec.shape)
            raise ValueError(f"sample {sid}, field {name!r}: shape {arr.shape}, expected {want}")
        # not np.ascontiguousarray: it turns a 0-d scalar field into shape (1,)
        return arr.astype(spec.dtype, order="C", copy=False)

    def _append_meta(self, sid: int, meta: dict[str, Any]) -> None:
        if set(meta) != set(self.meta_dtypes):
            raise ValueError(f"sample {sid}: meta keys {sorted(meta)} do not match meta_fields "
                             f"{sorted(self.meta_dtypes)}")
        for name, value in meta.items():
            if np.ndim(value) != 0:
                raise ValueError(f"sample {sid}, meta {name!r}: expected a scalar, got shape {np.shape(value)}")
            self._meta_pending[name].append(value)

    def _columns(self) -> dict[str, np.ndarray]:
        cols = {}
        for name, spec in self.fields.items():
            parts = self._buffers[name]
            if spec.ragged:
                lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
                cols[name] = np.concatenate(parts) if parts else np.empty((0, *spec.shape), spec.dtype)
                cols[name + ".offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            else:
                cols[name] = np.stack(parts)
        return cols

    def _flush(self) -> None:
        if not self._buffered_samples:
            return
        cols = self._columns()
        key = f"{SHARD_DIR}/{len(self._shards):06d}.shard"
        nbytes, digest = self._write_shard(key, cols)
        self._shards.append(ShardInfo(key=key, bytes=nbytes, num_samples=self._buffered_samples,
                                      first_sample_id=self._num_samples, checksum=digest))
        for name, values in self._meta_pending.items():
            self._meta[name].append(np.asarray(values, dtype=self.meta_dtypes[name]))
            self._meta_pending[name] = []
        self._num_samples += self._buffered_samples
        self._buffers = {f: [] for f in self.fields}
        self._buffered_bytes = self._buffered_samples = 0

    def _write_shard(self, key: str, cols: dict[str, np.ndarray]) -> tuple[int, str]:
        head, placed = shard_layout(cols)
        hasher, pos = xxhash.xxh3_64(), 0
        path = join(self.root, key)
        self.fs.makedirs(join(self.root, SHARD_DIR), exist_ok=True)

        def write() -> tuple[int, str]:
            nonlocal hasher, pos
            hasher, pos = xxhash.xxh3_64(), 0
            with self.fs.open(path, "wb") as f:
                for offset, arr in [(0, head)] + placed:
                    pad = b"\0" * (offset - pos)
                    data = memoryview(arr if isinstance(arr, bytes) else arr.reshape(-1).view(np.uint8))
                    for chunk in (pad, data):
                        f.write(chunk)
                        hasher.update(chunk)
                    pos = offset + len(data)
            return pos, f"xxh3_64:{hasher.hexdigest()}"

        return with_retries(write, join(self.url, key), self.options)

    def close(self) -> Manifest:
        """Write the last shard, the meta arrays, remove stale shards, then publish the manifest."""
        if self._closed:
            raise ValueError(f"DatasetWriter({self.url}): close() called twice")
        self._flush()
        self._closed = True
        self._bar.close()
        if not self._shards:
            raise ValueError(f"DatasetWriter({self.url}): no samples were appended; nothing to publish")
        meta_infos = self._write_meta()
        self._remove_stale_shards()
        manifest = Manifest(version=content_version(self.fields, [s.checksum for s in self._shards]),
                            fields=self.fields, num_samples=self._num_samples, shards=self._shards,
                            meta_fields=meta_infos, attrs=self.attrs)
        write_object(self.fs, join(self.root, MANIFEST_NAME), manifest.model_dump_json(indent=1).encode(),
                     join(self.url, MANIFEST_NAME), self.options)
        self.manifest = manifest
        return manifest

    def _write_meta(self) -> dict[str, MetaFieldInfo]:
        infos = {}
        for name, chunks in self._meta.items():
            raw = np.concatenate(chunks).tobytes()
            key = f"{META_DIR}/{name}.bin"
            write_object(self.fs, join(self.root, key), raw, join(self.url, key), self.options)
            infos[name] = MetaFieldInfo(dtype=self.meta_dtypes[name], key=key, checksum=checksum(raw))
        return infos

    def _remove_stale_shards(self) -> None:
        # a rerun after an interrupted attempt may leave higher-numbered shards that no manifest names
        keep = {s.key.rsplit("/", 1)[-1] for s in self._shards}
        try:
            listed = self.fs.ls(join(self.root, SHARD_DIR), detail=False, refresh=True)
        except TypeError:
            listed = self.fs.ls(join(self.root, SHARD_DIR), detail=False)
        for path in listed:
            if os.path.basename(path.rstrip("/")) not in keep:
                self.fs.rm(path)

    def abort(self) -> None:
        """Stop without publishing: the partial shards stay unreadable (no manifest)."""
        self._closed = True
        self._bar.close()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
