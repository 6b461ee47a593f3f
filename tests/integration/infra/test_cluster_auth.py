"""Cluster commands against a Ray head with token authentication on (the session `ray_head`, as real Ray
2.60 heads run): with the token, `sciscale launch --cluster` trains and `status --cluster` reports; without
it, or with a wrong one, both print one screen saying where the token is looked for and exit 2, before any
MLflow run exists."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from orchestrator import services
from orchestrator.cluster import job_client

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SPEC = str(ROOT / "tests" / "integration" / "specs" / "backbone.yaml")
EXPERIMENT = "cluster-auth-tests"


@pytest.fixture(scope="module")
def ns_data(tmp_path_factory):
    from data.generators.navier_stokes import generate

    out = tmp_path_factory.mktemp("ns16-auth")
    generate(str(out), n_train=32, n_val=8, resolution=16, seed=0, progress=False)
    return out


@pytest.fixture
def launch_argv(ns_data, ray_head, mlflow_server, tmp_path, tmp_path_factory):
    # the test's head runs on this machine, so its temporary directories are paths every node has
    sets = [f"storage.shared_paths=[{tmp_path_factory.getbasetemp()}]",
            f"data.train.0.url={ns_data}/train", f"data.val.0.url={ns_data}/val",
            f"storage.runs_root={tmp_path / 'runs'}", f"tracking.uri={mlflow_server.endpoint}",
            f"tracking.experiment={EXPERIMENT}", "train.max_steps=4"]

    def argv(run_id: str) -> list[str]:
        return ["launch", SPEC, "--run-id", run_id, "--cluster", ray_head.endpoint] + [
            x for item in sets for x in ("--set", item)]

    return argv


def _cli(argv: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def _env(**extra: str) -> dict:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), **extra}


def _runs(server, run_id: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=server.endpoint)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs(experiment.experiment_id, filter_string=f"tags.`sciscale.run_id` = '{run_id}'")


def test_launch_and_status_with_the_token_succeed(launch_argv, ray_head, mlflow_server):
    from ray.job_submission import JobStatus

    done = _cli(launch_argv("auth-ok"), _env())
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    job_id = done.stdout.strip().splitlines()[-1]
    jobs = job_client(ray_head.endpoint)
    deadline = time.monotonic() + 400
    while not (status := jobs.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, f"job {job_id} still {status} after 400 s"
        time.sleep(1)
    assert status == JobStatus.SUCCEEDED, jobs.get_job_logs(job_id)[-4000:]
    (run,) = _runs(mlflow_server, "auth-ok")
    assert run.info.status == "FINISHED"
    shown = _cli(["status", job_id, "--cluster", ray_head.endpoint], _env())
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert f"job {job_id}: SUCCEEDED" in shown.stdout, shown.stdout


@pytest.mark.parametrize("token", ["missing", "wrong"])
def test_without_the_right_token_launch_and_status_exit_2_before_any_run(token, launch_argv, ray_head,
                                                                          mlflow_server, tmp_path):
    home = tmp_path / "home"  # no ~/.ray/auth_token there; the machine's own one is never touched
    home.mkdir()
    env = {k: v for k, v in _env(HOME=str(home)).items() if not k.startswith("RAY_AUTH")}
    if token == "wrong":
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    expected = ("requires an auth token" if token == "missing" else
                "rejected the auth token from $RAY_AUTH_TOKEN")
    for argv in (launch_argv(f"auth-{token}"), ["status", "some-job", "--cluster", ray_head.endpoint]):
        proc = _cli(argv, env)
        assert proc.returncode == 2, f"{argv[0]}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        err = proc.stderr[proc.stderr.index("error: "):]
        assert "Traceback" not in proc.stderr and len(err.splitlines()) <= 12, proc.stderr
        assert expected in err and ray_head.endpoint in err, err
        assert "$RAY_AUTH_TOKEN_PATH: unset" in err and f"{home / '.ray' / 'auth_token'}: absent" in err, err
        assert "ray get-auth-token" in err, err
    assert _runs(mlflow_server, f"auth-{token}") == [], "the refused launch created an MLflow run"
    assert not (tmp_path / "runs" / f"auth-{token}").exists(), "the refused launch wrote a run record"


def test_an_unreachable_head_is_one_screen():
    address = f"http://127.0.0.1:{services.free_port()}"
    proc = _cli(["ls", "--cluster", address], _env(), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: cannot reach the Ray Job API at {address}" in proc.stderr, proc.stderr
