"""The sciscale dataset format: an immutable version = shard files + per-sample metadata + a manifest.

Layout under a dataset URL (the manifest is written last; without it there is no readable version)::

    manifest.json          schema, sample count, shard list (key, bytes, samples, first id, checksum)
    shards/000000.shard    raw arrays at 64-byte-aligned offsets, described by a small header
    meta/<name>.bin        one per-sample scalar array per meta field (read without opening shards)

A shard file starts with ``MAGIC`` (8 bytes), the header length (uint64, little endian) and a JSON header
listing every array (name, dtype, shape, offset). Fixed fields are one array ``[n, *shape]``; ragged fields
(atomistic graphs) are columnar: ``<name>`` holds the concatenated rows ``[sum(n_i), *shape]`` and
``<name>.offsets`` the ``n + 1`` row offsets. A reader maps the file and takes zero-copy views.
"""

from __future__ import annotations

import json
import mmap
import struct
from typing import Any

import numpy as np
import xxhash
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
META_DIR = "meta"
ALIGN = 64
MAGIC = b"SSSHARD1"
_PREFIX = struct.Struct("<8sQ")
CHECKSUM_ALGO = "xxh3_64"


class FieldSpec(BaseModel):
    """One stored field: dtype and per-sample shape (ragged fields: shape of one row)."""

    model_config = _CONFIG

    dtype: str
    """numpy dtype name, e.g. float32, int64, uint8 (no object or string dtypes)."""
    shape: tuple[int, ...] = ()
    """Per-sample shape for fixed fields; for ragged fields the shape of one row (after the variable dim)."""
    ragged: bool = False
    """True when the first dimension varies per sample (atoms, edges); stored as rows + offsets."""

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, value: str) -> str:
        try:
            dt = np.dtype(value)
        except TypeError as exc:
            raise ValueError(f"unknown numpy dtype {value!r}; use e.g. float32, int64, uint8") from exc
        if dt.kind not in "biuf" or dt.hasobject:
            raise ValueError(f"dtype {value!r} cannot be stored raw; use a bool, integer or float dtype")
        return dt.newbyteorder("<").str if dt.byteorder == ">" else dt.name

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 1 for d in value):
            raise ValueError(f"shape {value} has a dimension < 1; every stored dimension must be positive")
        return value

    def row_bytes(self) -> int:
        """Bytes of one sample (fixed) or one row (ragged)."""
        return int(np.dtype(self.dtype).itemsize * np.prod(self.shape, dtype=np.int64))


class ShardInfo(BaseModel):
    """One shard file of a dataset version."""

    model_config = _CONFIG

    key: str
    """Path of the shard relative to the dataset root, e.g. shards/000000.shard."""
    bytes: int = Field(ge=0)
    """Size of the shard file in bytes."""
    num_samples: int = Field(ge=1)
    """Samples stored in this shard."""
    first_sample_id: int = Field(ge=0)
    """Id of the shard's first sample; ids are contiguous over the shard list."""
    checksum: str
    """``xxh3_64:<16 hex digits>`` of the whole file."""


class MetaFieldInfo(BaseModel):
    """One per-sample scalar array stored beside the manifest."""

    model_config = _CONFIG

    dtype: str
    """numpy dtype of the array (one value per sample)."""
    key: str
    """Path relative to the dataset root, e.g. meta/n_atoms.bin."""
    checksum: str
    """``xxh3_64:<16 hex digits>`` of the raw array bytes."""


class Manifest(BaseModel):
    """An immutable dataset version: schema, sample count, shards, per-sample metadata, free attributes."""

    model_config = _CONFIG

    format_version: int = FORMAT_VERSION
    """Version of this file format."""
    version: str
    """Content id of the dataset version (hash of the schema and every shard checksum)."""
    fields: dict[str, FieldSpec]
    """Stored fields by name."""
    num_samples: int = Field(ge=1)
    """Total number of samples; ids run from 0 to num_samples - 1."""
    shards: list[ShardInfo] = Field(min_length=1)
    """Shards in sample-id order."""
    meta_fields: dict[str, MetaFieldInfo] = Field(default_factory=dict)
    """Per-sample scalar arrays (e.g. n_atoms, trajectory id, time), readable without opening shards."""
    attrs: dict[str, Any] = Field(default_factory=dict)
    """Free JSON dict: normalisation statistics, grid, generator parameters."""

    @model_validator(mode="after")
    def _check_shards(self) -> "Manifest":
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is not supported (expected "
                             f"{FORMAT_VERSION}); upgrade sciscale or rewrite the dataset")
        expected = 0
        for shard in self.shards:
            if shard.first_sample_id != expected:
                raise ValueError(f"shard {shard.key}: first_sample_id {shard.first_sample_id}, expected "
                                 f"{expected} (ids must be contiguous); the manifest is corrupt")
            expected += shard.num_samples
        if expected != self.num_samples:
            raise ValueError(f"num_samples {self.num_samples} but the shards hold {expected}; the manifest "
                             "is corrupt, rewrite the dataset")
        return self

    def shard_counts(self) -> np.ndarray:
        """Samples per shard, int64."""
        return np.array([s.num_samples for s in self.shards], dtype=np.int64)

    def shard_starts(self) -> np.ndarray:
        """First sample id of every shard, int64 (for ``np.searchsorted``)."""
        return np.array([s.first_sample_id for s in self.shards], dtype=np.int64)

    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)


def checksum(data) -> str:
    """The format's checksum of a bytes-like object."""
    return f"{CHECKSUM_ALGO}:{xxhash.xxh3_64_hexdigest(data)}"


def content_version(fields: dict[str, FieldSpec], shard_checksums: list[str]) -> str:
    """Content id of a version: equal schema and shard bytes give an equal id."""
    h = xxhash.xxh3_128()
    h.update(json.dumps({k: v.model_dump(mode="json") for k, v in sorted(fields.items())}).encode())
    for c in shard_checksums:
        h.update(c.encode())
    return h.hexdigest()


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def shard_layout(columns: dict[str, np.ndarray]) -> tuple[bytes, list[tuple[int, np.ndarray]]]:
    """The padded prefix+header and (offset, array) for every column; arrays follow at aligned offsets."""
    entries, placed = [], []
    # offsets depend on the header length, which depends on the offsets: fix the header size first
    probe = [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape), "offset": 10**15} for n, a in
             columns.items()]
    start = aligned(_PREFIX.size + len(json.dumps({"arrays": probe}).encode()))
    offset = start
    for name, arr in columns.items():
        entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset})
        placed.append((offset, arr))
        offset = aligned(offset + arr.nbytes)
    header = json.dumps({"arrays": entries}).encode()
    head = _PREFIX.pack(MAGIC, len(header)) + header
    return head + b"\0" * (start - len(head)), placed


class ShardView:
    """Zero-copy views of one shard's arrays over a buffer (an mmap or bytes)."""

    def __init__(self, buffer, fields: dict[str, FieldSpec], name: str = "shard") -> None:
        self.buffer, self.fields, self.name = buffer, fields, name
        self.arrays = _parse_arrays(buffer, name)
        missing = [f for f in fields if f not in self.arrays or (fields[f].ragged and f + ".offsets"
                                                                not in self.arrays)]
        if missing:
            raise ValueError(f"{name}: fields {missing} are in the manifest but not in the shard; the shard "
                             "belongs to another dataset or is corrupt; rewrite the dataset")
        first = next(iter(fields))
        self.num_samples = (len(self.arrays[first + ".offsets"]) - 1 if fields[first].ragged
                            else len(self.arrays[first]))

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` (local index) as views into the buffer."""
        out = {}
        for f, spec in self.fields.items():
            if spec.ragged:
                off = self.arrays[f + ".offsets"]
                out[f] = self.arrays[f][off[i]:off[i + 1]]
            else:
                out[f] = self.arrays[f][i]
        return out


def _parse_arrays(buffer, name: str) -> dict[str, np.ndarray]:
    size = len(buffer)
    if size < _PREFIX.size:
        raise ValueError(f"{name}: {size} bytes is too short for a shard; the file is truncated, re-download "
                         "it or rewrite the dataset")
    magic, hlen = _PREFIX.unpack_from(buffer, 0)
    if magic != MAGIC or _PREFIX.size + hlen > size:
        raise ValueError(f"{name}: not a sciscale shard (bad magic or header length); the file is corrupt")
    try:
        header = json.loads(bytes(buffer[_PREFIX.size:_PREFIX.size + hlen]))
    except ValueError as exc:
        raise ValueError(f"{name}: shard header is not valid JSON ({exc}); the file is corrupt") from exc
    arrays = {}
    for e in header["arrays"]:
        dt, shape = np.dtype(e["dtype"]), tuple(e["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if e["offset"] + count * dt.itemsize > size:
            raise ValueError(f"{name}: array {e['name']} runs past the end of the file; the file is truncated")
        arrays[e["name"]] = np.frombuffer(buffer, dt, count, e["offset"]).reshape(shape)
    return arrays


def open_shard(path: str, fields: dict[str, FieldSpec]) -> ShardView:
    """Map a local shard file read-only and return its views (the map lives as long as the view)."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return ShardView(mm, fields, path)


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """A Manifest from JSON bytes, with an error that names ``where`` when it is not one."""
    try:
        return Manifest.model_validate_json(raw)
    except ValueError as exc:
        raise ValueError(f"{where}: the manifest is corrupt or not a sciscale manifest:\n{exc}\n"
                         "hint: rewrite the dataset version (manifests are written last and never edited)"
                         ) from exc


def read_manifest(url: str, storage_options: dict | None = None) -> Manifest:
    """Read and validate ``<url>/manifest.json``; a clear error when it is missing or corrupt."""
    from data.storage import filesystem, join, read_object

    fs, root = filesystem(url, storage_options)
    where = join(url, MANIFEST_NAME)
    raw = read_object(fs, join(root, MANIFEST_NAME), where, storage_options, missing_hint=(
        "this URL holds no finished dataset version: check the URL, or (re)run its writer; the manifest is "
        "written last, so an interrupted writer leaves none"))
    return parse_manifest(raw, where)


def read_meta(url: str, manifest: Manifest, name: str, storage_options: dict | None = None) -> np.ndarray:
    """One per-sample metadata array, checksum-verified, without opening any shard."""
    from data.storage import filesystem, join, read_object

    if name not in manifest.meta_fields:
        raise ValueError(f"{url}: no meta field {name!r}; the dataset has {sorted(manifest.meta_fields)}")
    info = manifest.meta_fields[name]
    fs, root = filesystem(url, storage_options)
    raw = read_object(fs, join(root, info.key), join(url, info.key), storage_options)
    if checksum(raw) != info.checksum:
        raise ValueError(f"{join(url, info.key)}: checksum {checksum(raw)} does not match the manifest's "
                         f"{info.checksum}; the object is corrupt, rewrite the dataset")
    return np.frombuffer(raw, np.dtype(info.dtype))
