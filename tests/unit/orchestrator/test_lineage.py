"""A run's datasets as MLflow dataset inputs, built from their manifests alone (torch-free)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from orchestrator import lineage


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """A fixed-field train set and a ragged-field val set, written by the project's writer."""
    from data.format import FieldSpec
    from data.writer import DatasetWriter

    base = tmp_path_factory.mktemp("lineage")
    with DatasetWriter(str(base / "set" / "train"), {"u": FieldSpec(dtype="float32", shape=(2, 4, 4))},
                       progress=False) as w:
        for i in range(5):
            w.append({"u": np.full((2, 4, 4), i, np.float32)})
    with DatasetWriter(str(base / "set" / "val"), {"pos": FieldSpec(dtype="float32", shape=(3,), ragged=True),
                                                   "z": FieldSpec(dtype="int64", ragged=True)}, progress=False) as w:
        for n in (2, 3):
            w.append({"pos": np.zeros((n, 3), np.float32), "z": np.ones(n, np.int64)})
    from data.format import read_manifest

    return base, read_manifest(str(base / "set" / "train")), read_manifest(str(base / "set" / "val"))


def test_dataset_names_are_the_last_two_path_components():
    assert lineage.dataset_name("/data/navier-stokes-32/train") == "navier-stokes-32/train"
    assert lineage.dataset_name("s3://bucket/ns/val/") == "ns/val"
    assert lineage.dataset_name("file:///only") == "only"


def test_dataset_input_from_the_manifest_alone(manifests):
    base, train, val = manifests
    ref = lineage.dataset_ref("train", str(base / "set" / "train"), train)
    entity = lineage.dataset_input(ref, train)
    assert entity.dataset.name == "set/train" and entity.dataset.digest == train.version
    assert entity.dataset.source_type == "local"
    assert json.loads(entity.dataset.source) == {"uri": str(base / "set" / "train")}
    assert [(t.key, t.value) for t in entity.tags] == [("mlflow.data.context", "training")]
    profile = json.loads(entity.dataset.profile)
    assert profile["num_rows"] == 5 and profile["num_shards"] == 1 and profile["fields"] == "u float32[2,4,4]"
    schema = json.loads(json.loads(entity.dataset.schema)["mlflow_tensorspec"]["features"])
    assert schema == [{"name": "u", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 4, 4]}}]
    ragged = lineage.dataset_input(lineage.dataset_ref("val", "/x/set/val", val), val)
    shapes = {c["name"]: c["tensor-spec"]["shape"] for c in
              json.loads(json.loads(ragged.dataset.schema)["mlflow_tensorspec"]["features"])}
    assert shapes == {"pos": [-1, -1, 3], "z": [-1, -1]}  # sample axis, then the ragged row axis
    assert json.loads(ragged.dataset.profile)["fields"] == "pos float32[*,3], z int64[*]"
    assert [t.value for t in ragged.tags] == ["validation"]


def test_metrics_link_to_the_first_dataset_of_their_split():
    refs = [lineage.DatasetRef("train", "a", "a", "1"), lineage.DatasetRef("train", "b", "b", "2"),
            lineage.DatasetRef("val", "c", "c", "3")]
    assert lineage.link(refs, "train/loss").name == "a"
    assert lineage.link(refs, "val/rel_l1_median").name == "c"
    assert lineage.link(refs, "sys/checkpoint_block_s") is None
    assert lineage.link(refs[:2], "val/loss") is None


def test_ensure_run_logs_both_datasets_once_on_create_and_reopen(manifests, tmp_path):
    from orchestrator.runs import ensure_run
    from orchestrator.specload import validate_spec

    base, train, val = manifests
    spec = validate_spec({
        "name": "lineage", "model": {"family": "pde", "arch": "fno", "size": "debug", "in_channels": 2,
                                     "resolution": 8},
        "data": {"train": [{"url": str(base / "set" / "train")}], "val": [{"url": str(base / "set" / "val")}],
                 "canonical_streams": 1},
        "train": {"global_batch_size": 1, "micro_batch_size": 1, "max_steps": 1},
        "storage": {"runs_root": str(tmp_path / "runs")}})
    record, _ = ensure_run(spec, "r1")
    ensure_run(spec, "r1")  # the second attempt reopens the run and logs them again
    inputs = mlflow.MlflowClient(record.tracking_uri).get_run(record.mlflow_run_id).inputs.dataset_inputs
    got = sorted((i.dataset.name, i.dataset.digest, [t.value for t in i.tags][0]) for i in inputs)
    assert got == [("set/train", train.version, "training"), ("set/val", val.version, "validation")]
