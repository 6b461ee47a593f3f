"""What a run read: its train and val datasets as MLflow dataset inputs (torch-free).

A dataset version is logged from its manifest alone, never loaded: the name comes from the URL, the digest is
the manifest's content version (a hash of the schema and every shard checksum, so equal data gives an equal
digest), the source is the URL, the schema is the manifest's fields and the profile its sizes. The driver logs
them when it creates or reopens a run; rank 0 links the run's LoggedModels to the same (name, digest) pairs
through the metrics it links to them (the MLflow UI lists a model's datasets from those metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

CONTEXTS = {"train": "training", "val": "validation", "eval": "evaluation"}
_PROFILE_FIELDS_MAX = 400  # characters of the field summary in a dataset's profile (the UI shows one line)


@dataclass(frozen=True)
class DatasetRef:
    """One dataset a run read, as MLflow knows it: (name, digest) identify it within an experiment."""

    split: str
    url: str
    name: str
    digest: str

    @property
    def context(self) -> str:
        return CONTEXTS[self.split]


def dataset_name(url: str) -> str:
    """The last two path components of the URL (``navier-stokes-32/train``): short, and tells the splits of
    one generated or converted set apart."""
    parts = [p for p in url.split("://", 1)[-1].rstrip("/").split("/") if p]
    return "/".join(parts[-2:]) or url


def dataset_ref(split: str, url: str, manifest) -> DatasetRef:
    return DatasetRef(split=split, url=url, name=dataset_name(url), digest=manifest.version)


def dataset_refs(spec, manifests: dict) -> list[DatasetRef]:
    """Refs of the spec's train and val datasets whose manifests were read, in spec order."""
    return [dataset_ref(split, s.url, manifests[s.url]) for split in ("train", "val")
            for s in getattr(spec.data, split) if s.url in manifests]


def field_summary(manifest) -> str:
    """``x float32[2,32,32], pos float32[*,3] (ragged)``: every field's dtype and per-sample shape."""
    parts = []
    for name, f in manifest.fields.items():
        shape = ",".join(str(d) for d in (("*",) if f.ragged else ()) + tuple(f.shape))
        parts.append(f"{name} {f.dtype}[{shape}]")
    text = ", ".join(parts)
    return text if len(text) <= _PROFILE_FIELDS_MAX else text[:_PROFILE_FIELDS_MAX - 3] + "..."


def schema(manifest) -> dict:
    """The manifest's fields as an MLflow tensor schema (one tensor per field; -1 for the sample axis and
    for a ragged field's row axis)."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types.schema import Schema, TensorSpec

    specs = [TensorSpec(np.dtype(f.dtype), (-1, *((-1,) if f.ragged else ()), *f.shape), name)
             for name, f in manifest.fields.items()]
    return TensorDatasetSchema(features=Schema(specs)).to_dict()


def profile(manifest) -> dict:
    return {"num_rows": manifest.num_samples, "num_shards": len(manifest.shards),
            "bytes": sum(s.bytes for s in manifest.shards), "fields": field_summary(manifest)}


def dataset_input(ref: DatasetRef, manifest):
    """The MLflow ``DatasetInput`` of one dataset version, built from its manifest (no data is read)."""
    import json
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # a local path matches two equal local sources: MLflow warns and picks one
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(ref.url)
    dataset = Dataset(name=ref.name, digest=ref.digest, source_type=source._get_source_type(),
                      source=source.to_json(), schema=json.dumps(schema(manifest)),
                      profile=json.dumps(profile(manifest)))
    return DatasetInput(dataset=dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, ref.context)])


def log_datasets(client, mlflow_run_id: str, spec) -> list[DatasetRef]:
    """Log the spec's datasets as the run's inputs (again on a reopened run: MLflow keeps one input per
    dataset version and run). Datasets this machine cannot read (a cluster launch whose data only the
    cluster reaches) are left to the in-cluster launch, which reopens the run and logs them."""
    from orchestrator.preflight import datasets, read_manifests

    manifests, _ = read_manifests(spec, datasets(spec))
    refs = dataset_refs(spec, manifests)
    if refs:
        client.log_inputs(mlflow_run_id, datasets=[dataset_input(r, manifests[r.url]) for r in refs])
    return refs


def link(refs: list[DatasetRef], key: str) -> DatasetRef | None:
    """The dataset a metric is linked to, by its prefix: ``train/`` to the first train dataset, ``val/`` to the
    first val dataset, anything else to none. MLflow stores one dataset per model metric point; a mixture's
    metric is computed over all of the split's datasets, which are all in the run's inputs."""
    split = key.split("/", 1)[0]
    return next((r for r in refs if r.split == split), None)
