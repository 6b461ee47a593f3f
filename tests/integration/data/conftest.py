"""SeaweedFS started on loopback as the S3 server for the data integration tests."""

from __future__ import annotations

import os

import pytest

from orchestrator.services import create_bucket, s3_env, start_seaweedfs


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """(endpoint, bucket) of a fresh SeaweedFS; the S3 environment variables point at it."""
    service = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    saved = {k: os.environ.get(k) for k in s3_env(service.endpoint)}
    os.environ.update(s3_env(service.endpoint))
    create_bucket(service.endpoint, "sciscale-data")
    try:
        yield service.endpoint, "sciscale-data"
    finally:
        service.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
