"""Session-wide real services on loopback: a Ray head, an MLflow server, SeaweedFS (S3)."""

from __future__ import annotations

import pytest

from orchestrator import services
from orchestrator.stack import exported


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def ray_head(service_dir):
    """`ray start --head` on loopback with token auth (its token in the service dir); 4 logical CPUs so a job
    driver and 2 workers fit on 2 cores. Clients of the session get RAY_AUTH_MODE=token and the token's path,
    so no test depends on (or writes) the machine's ~/.ray/auth_token."""
    head = services.start_ray_head(service_dir / "ray", num_cpus=4)
    try:
        with exported(services.ray_client_env(head.extra["token_path"])):
            yield head
    finally:
        head.stop()


@pytest.fixture(scope="session")
def mlflow_server(service_dir):
    server = services.start_mlflow_server(service_dir / "mlflow")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(service_dir):
    s3 = services.start_seaweedfs(service_dir / "seaweedfs")
    try:
        with exported(services.s3_env(s3.endpoint)):
            yield s3
    finally:
        s3.stop()
