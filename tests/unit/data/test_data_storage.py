"""Storage options, URL handling, retries and error explanations (no network)."""

from __future__ import annotations

import botocore.exceptions
import numpy as np
import pytest

from data.format import FieldSpec, read_manifest
from data.spec import StorageSpec
from data.storage import (ENDPOINT_VARS, REGION_VARS, SCHEMES, arrow_filesystem, build_client, explain, filesystem,
                          is_transient, open_url, resolve_s3, scheme_of, storage_options, with_retries)
from data.writer import DatasetWriter


def test_s3_settings_resolve_spec_then_environment_in_one_order(monkeypatch):
    for name in ENDPOINT_VARS + REGION_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert resolve_s3(None).endpoint_url is None and resolve_s3(None).region == "us-east-1"
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://s3-endpoint:3")
    assert resolve_s3(None).endpoint_url == "http://s3-endpoint:3"  # alone, it is used everywhere
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-endpoint:1")
    assert resolve_s3(None).endpoint_url == "http://aws-endpoint:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://aws-s3-endpoint:4")
    assert resolve_s3({}).endpoint_url == "http://aws-s3-endpoint:4"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-1")
    assert resolve_s3(None).region == "eu-1"
    monkeypatch.setenv("AWS_REGION", "eu-2")
    spec = StorageSpec(endpoint_url="http://spec:2", region="r")
    assert (resolve_s3(spec).endpoint_url, resolve_s3(spec).region, resolve_s3(None).region) == (
        "http://spec:2", "r", "eu-2")
    opts = storage_options("s3://b/p", spec)
    assert opts["client_kwargs"] == {"endpoint_url": "http://spec:2", "region_name": "r"}
    assert (opts["key"], opts["secret"]) == ("k", "s")
    assert storage_options("/local/path", spec) == {}


def test_every_caller_gets_the_same_s3_endpoint(monkeypatch):
    """fsspec options, Ray Train's pyarrow filesystem and the obstore client from one resolution."""
    for name in ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:8333")
    fs, path = arrow_filesystem("s3://bucket/runs/", None)
    settings = fs.__reduce__()[1][0]  # pyarrow's S3FileSystem exposes its settings only through pickling
    assert path == "bucket/runs" and (settings["scheme"], settings["endpoint_override"]) == ("http", "127.0.0.1:8333")
    opts = storage_options("s3://bucket/data", None)
    assert opts["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:8333"
    client = build_client("s3://bucket/data", opts)
    assert client.name == "obstore"


@pytest.mark.parametrize("url", ["memory://sciscale-scheme-test/runs", "file://{tmp}/runs", "{tmp}/plain"])
def test_a_second_scheme_goes_through_the_same_path_as_s3(url, tmp_path):
    """The same calls serve memory://, file:// and local paths as s3://: fsspec filesystem, pyarrow filesystem
    for Ray Train, GET client, and run records in a runs root."""
    from orchestrator.runs import RunRecord, list_runs, read_record, write_record

    url = url.format(tmp=tmp_path)
    fs, root = open_url(url)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/k", b"payload")
    arrow, path = arrow_filesystem(url)
    if arrow is not None:  # local roots: Ray Train's own local handling
        with arrow.open_input_stream(f"{path}/k") as f:
            assert f.read() == b"payload"
    assert bytes(build_client(url, storage_options(url)).get("k")) == b"payload"
    record = RunRecord(run_id="r1", runs_root=url, tracking_uri="sqlite:///x", experiment="e", mlflow_run_id="m")
    write_record(record, StorageSpec(runs_root=url))
    assert read_record(url, "r1").mlflow_run_id == "m" and [r.run_id for r in list_runs(url)] == ["r1"]


def test_schemes_table_names_each_scheme_once():
    assert {"file", "s3"} <= set(SCHEMES) and scheme_of("/x") == scheme_of("file:///x") == "file"
    assert scheme_of("s3://b") == "s3" and scheme_of("memory://b") == "memory"


def test_local_memory_and_file_urls_round_trip(tmp_path):
    fields = {"x": FieldSpec(dtype="int32", shape=(3,))}
    for url in (str(tmp_path / "a"), (tmp_path / "b").as_uri(), "memory://sciscale-test/ds"):
        with DatasetWriter(url, fields, progress=False) as w:
            w.append({"x": np.arange(3)})
        assert read_manifest(url).num_samples == 1
    fs, path = filesystem("memory://sciscale-test/ds")
    assert fs.exists(path + "/manifest.json")


def test_retries_transient_errors_with_growing_backoff():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert with_retries(flaky, "s3://b/k", sleep=sleeps.append, base_delay=1.0) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0


def test_does_not_retry_missing_objects_or_bad_credentials():
    for exc, match in ((FileNotFoundError("k"), "object not found"), (PermissionError("denied"), "access denied")):
        calls = []

        def fail(exc=exc):
            calls.append(1)
            raise exc

        with pytest.raises(ValueError, match=match) as info:
            with_retries(fail, "s3://b/shards/000001.shard", sleep=lambda s: None)
        assert "s3://b/shards/000001.shard" in str(info.value) and len(calls) == 1


def test_unreachable_endpoint_is_explained_after_retries():
    exc = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b")
    assert is_transient(exc)
    err = explain(exc, "s3://b/manifest.json", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}})
    assert "cannot reach the object store at http://127.0.0.1:1" in str(err)
    assert "AWS_ENDPOINT_URL" in str(err)


def test_missing_local_dataset_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"nope/manifest.json: object not found.*writer"):
        read_manifest(str(tmp_path / "nope"))
