"""The ``data`` section of a job spec (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

_URL_SCHEMES = ("file://", "s3://", "gs://", "gcs://", "az://", "abfs://", "memory://", "http://", "https://")


def check_url(url: str) -> str:
    """A dataset or runs-root URL: a local path or ``scheme://...`` with a known fsspec scheme."""
    if not url or url.strip() != url:
        raise ValueError("must be a non-empty path or URL without surrounding spaces")
    if "://" in url:
        if not url.startswith(_URL_SCHEMES):
            scheme = url.split("://", 1)[0]
            raise ValueError(
                f"unsupported URL scheme {scheme!r}; use a local path or one of "
                + ", ".join(s.rstrip(":/") for s in _URL_SCHEMES)
            )
        rest = url.split("://", 1)[1]
        if url.startswith(("s3://", "gs://", "gcs://")) and not rest.strip("/"):
            raise ValueError("an object-store URL needs a bucket, e.g. s3://bucket/datasets/ns2d")
    return url


class SourceSpec(BaseModel):
    """One dataset version in a (possibly weighted) mixture."""

    model_config = _CONFIG

    url: str
    """Dataset version root (holds manifest.json): local path, file://, s3://bucket/prefix, or any fsspec URL."""
    weight: float = Field(default=1.0, gt=0)
    """Relative sampling weight of this dataset in the training mixture."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_url(value)


class StorageSpec(BaseModel):
    """Where runs live and how object storage is reached: the one set of storage settings, used for datasets,
    checkpoints, Ray Train's state and run records alike (data/storage.py resolves them). Credentials are never
    written in a spec: they come from the environment."""

    model_config = _CONFIG

    runs_root: str = "runs"
    """Local path or URL (s3://bucket/prefix, any fsspec URL). Run RUN_ID lives under RUNS_ROOT/RUN_ID."""
    endpoint_url: str | None = None
    """S3 endpoint (e.g. http://127.0.0.1:8333 for SeaweedFS). Default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL,
    then S3_ENDPOINT_URL from the environment, else AWS."""
    region: str | None = None
    """S3 region. Default: AWS_REGION, then AWS_DEFAULT_REGION, else us-east-1."""
    anon: bool = False
    """Read public buckets without credentials."""
    client: Literal["auto", "fsspec", "obstore"] = "auto"
    """Shard download client: auto = obstore for s3:// when installed (measured faster), else fsspec."""
    shared_paths: list[str] = Field(default_factory=list)
    """Local directories every node of a cluster mounts at the same path (NFS, a Kubernetes volume). Data and
    runs roots under them may be local paths with `launch --cluster` and `render kuberay`; any other local path
    is refused there, because no pod or remote node has it."""

    @field_validator("runs_root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        return check_url(value)


class DataSpec(BaseModel):
    """Where the training and validation data live and how they are streamed."""

    model_config = _CONFIG

    train: list[SourceSpec] = Field(min_length=1)
    """Training datasets; several form a weighted mixture interleaved deterministically."""
    val: list[SourceSpec] = Field(default_factory=list)
    """Validation datasets (evaluated every ``train.eval_every`` steps and at the end)."""
    canonical_streams: int = Field(default=8, ge=1)
    """C: number of canonical streams; the sample order is identical for every world size dividing C."""
    shuffle_window: int = Field(default=4, ge=1)
    """Shards shuffled together within one window (more mixes better, costs cache space)."""
    prefetch: int = Field(default=4, ge=0)
    """Shards downloaded ahead of the plan per rank."""
    num_workers: int = Field(default=1, ge=0)
    """DataLoader worker processes per rank that decode the mapped shards (0 = in the training process)."""
    shard_cache: Literal["auto", "memory", "disk"] = "auto"
    """Where downloaded shards are held until their last planned use: ``memory`` (buffers in the training
    process, no file write: 79-101 % of the raw-GET bound against 57-80 % for files, docs/benchmarks-data.md)
    needs num_workers 0; ``disk`` (files that DataLoader worker processes map); ``auto`` = memory when
    num_workers is 0, else disk."""
    cache_dir: str | None = None
    """Local shard cache directory for the disk cache (default: a temporary directory per rank)."""
    cache_limit_bytes: int | None = Field(default=None, gt=0)
    """Upper bound on the shard cache size per rank (default: prefetch + shuffle_window shards)."""
    transform_cache_mib: int = Field(default=256, ge=0)
    """Transformed training examples kept in memory for later epochs, per rank and per DataLoader worker, for a family
    transform that depends on the sample alone (the atoms family's neighbour lists): from the second epoch on,
    the transform is not run again. Filled up to this size, then nothing more is added (a shuffled order would
    make an evicting cache miss as often as it hits). 0 = off."""
    fields: list[str] | None = None
    """Fields to read (default: all); each must exist in every dataset's schema, checked at start-up."""

    @model_validator(mode="after")
    def _check_sources(self) -> "DataSpec":
        urls = [s.url for s in self.train]
        if len(set(urls)) != len(urls):
            raise ValueError("data.train lists the same dataset URL twice; merge them and set one weight")
        if self.shard_cache == "memory" and self.num_workers > 0:
            raise ValueError(f"shard_cache 'memory' holds shards in the training process, but num_workers is "
                             f"{self.num_workers}: worker processes read shard files. Set shard_cache to 'disk' or "
                             "'auto', or num_workers to 0")
        return self

    @property
    def in_memory(self) -> bool:
        """Whether shards are held in memory (see ``shard_cache``)."""
        return self.shard_cache == "memory" or (self.shard_cache == "auto" and self.num_workers == 0)
