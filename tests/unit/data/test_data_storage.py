"""Storage options, URL handling, retries and error explanations (no network)."""

from __future__ import annotations

import botocore.exceptions
import numpy as np
import pytest

from data.format import FieldSpec, read_manifest
from data.spec import StorageSpec
from data.storage import explain, filesystem, is_transient, storage_options, with_retries
from data.writer import DatasetWriter


def test_s3_options_from_spec_and_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    opts = storage_options("s3://b/p", StorageSpec(endpoint_url="http://spec:2", region="r"))
    assert opts["client_kwargs"] == {"endpoint_url": "http://spec:2", "region_name": "r"}
    assert (opts["key"], opts["secret"]) == ("k", "s")
    assert storage_options("s3://b/p", None)["client_kwargs"]["endpoint_url"] == "http://env:1"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://env:3")
    assert storage_options("s3://b/p", {})["client_kwargs"]["endpoint_url"] == "http://env:3"
    assert storage_options("/local/path", StorageSpec(endpoint_url="http://x")) == {}


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
