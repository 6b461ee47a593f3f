"""Session-wide real services on loopback: a Ray head, an MLflow server, SeaweedFS (S3)."""

from __future__ import annotations

import os

import pytest

from orchestrator import services


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def ray_head(service_dir):
    """`ray start --head` on loopback; 4 logical CPUs so a job driver and 2 workers fit on 2 cores."""
    head = services.start_ray_head(service_dir / "ray", num_cpus=4)
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ.update(services.ray_client_env())
    yield head
    if old is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = old
    head.stop()


@pytest.fixture(scope="session")
def mlflow_server(service_dir):
    server = services.start_mlflow_server(service_dir / "mlflow")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(service_dir):
    s3 = services.start_seaweedfs(service_dir / "seaweedfs")
    old = {k: os.environ.get(k) for k in services.s3_env(s3.endpoint)}
    os.environ.update(services.s3_env(s3.endpoint))
    yield s3
    s3.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
