"""`sciscale stack` without the services: argument checks, the state file, the printed environment, and
that `down` stops exactly the recorded process groups and sessions."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pytest

from orchestrator import stack


def _state(tmp_path, pids=(11, 12, 13)) -> dict:
    return {"version": stack.STATE_VERSION, "created": "2026-01-01T00:00:00+00:00", "dir": str(tmp_path), "bucket": "sciscale",
            "s3_env": {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_ACCESS_KEY_ID": "k",
                       "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"},
            "ports": {"s3": 8333, "mlflow": 5000, "ray": 6379, "dashboard": 8265},
            "services": [
                {"name": "seaweedfs", "pid": pids[0], "endpoint": "http://127.0.0.1:8333", "log_path": "x",
                 "extra": {}},
                {"name": "mlflow", "pid": pids[1], "endpoint": "http://127.0.0.1:5000", "log_path": "x",
                 "extra": {"artifacts_destination": "s3://sciscale/mlflow-artifacts"}},
                {"name": "ray", "pid": pids[2], "endpoint": "http://127.0.0.1:8265", "log_path": "x",
                 "extra": {"gcs_address": "127.0.0.1:6379", "token_path": f"{tmp_path}/ray/auth_token"}}]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sciscale")
    stack.register(parser.add_subparsers(dest="command"))
    return parser


def test_client_env_points_a_spec_at_the_stack(tmp_path):
    env = stack.client_env(_state(tmp_path))
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["RAY_ADDRESS"] == "127.0.0.1:6379"
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == f"{tmp_path}/ray/auth_token"
    text = stack.describe(_state(tmp_path), {"seaweedfs": True, "mlflow": False, "ray": True})
    assert "DOWN" in text and "runs_root: s3://sciscale/runs" in text
    assert f"Ray auth token  {tmp_path}/ray/auth_token" in text
    assert f"export RAY_AUTH_TOKEN_PATH={tmp_path}/ray/auth_token" in stack.env_lines(_state(tmp_path))
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in stack.env_lines(_state(tmp_path))


@pytest.mark.parametrize("argv, message", [
    (["--postgres-url", "mysql://x"], "postgresql://"),
    (["--bucket", "Bad_Bucket"], "--bucket"),
    (["--s3-port", "80"], "--s3-port"),
])
def test_up_rejects_bad_arguments_before_starting_anything(tmp_path, argv, message):
    args = _parser().parse_args(["stack", "up", "--dir", str(tmp_path / "s"), *argv])
    with pytest.raises(ValueError, match=message):
        args.func(args)
    assert not (tmp_path / "s").exists()


def test_corrupt_state_is_explained(tmp_path):
    (tmp_path / stack.STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        stack.load_state(tmp_path)


def test_status_and_down_without_a_stack(tmp_path, capsys):
    args = _parser().parse_args(["stack", "status", "--dir", str(tmp_path)])
    assert args.func(args) == 1
    assert "no stack" in capsys.readouterr().out
    assert stack.down(tmp_path) == []


def test_a_reused_pid_is_not_taken_for_a_service(tmp_path):
    # this test's own process is alive but is not a `weed` server
    record = {"name": "seaweedfs", "pid": os.getpid(), "endpoint": "http://127.0.0.1:1"}
    assert not stack.leader_alive(record)
    assert not stack.healthy(record)


def test_down_stops_recorded_groups_and_their_strays_only(tmp_path):
    # a fake "ray" leader in its own session whose child moves to a new process group, and a bystander
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen("
                               "[sys.executable, '-c', 'import os, time; os.setpgid(0, 0); time.sleep(60)']); "
                               "time.sleep(60)", "ray"], start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(stack.stray_pids({"services": [{"pid": leader.pid}]})) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        state = _state(tmp_path, pids=(2**22 + 1, 2**22 + 2, leader.pid))
        (tmp_path / stack.STATE_FILE).write_text(__import__("json").dumps(state))
        assert stack.down(tmp_path) == ["ray"]
        leader.wait(timeout=10)
        assert stack.stray_pids(state) == []
        assert bystander.poll() is None, "down must not touch processes it did not start"
        assert not (tmp_path / stack.STATE_FILE).exists()
    finally:
        for proc in (leader, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_status_json_hides_the_database_password(tmp_path, capsys):
    state = _state(tmp_path, pids=(2**22 + 1, 2**22 + 2, 2**22 + 3))
    state["services"][1]["extra"]["backend_uri"] = "postgresql://mlflow:s3cret@db:5432/mlflow"
    (tmp_path / stack.STATE_FILE).write_text(__import__("json").dumps(state))
    args = _parser().parse_args(["stack", "status", "--dir", str(tmp_path), "--json"])
    assert args.func(args) == 1  # nothing is running
    out = capsys.readouterr().out
    assert "s3cret" not in out and "postgresql://mlflow:***@db:5432/mlflow" in out


def test_status_of_a_stack_from_before_token_auth_asks_for_a_restart(tmp_path, capsys):
    state = _state(tmp_path, pids=(2**22 + 1, 2**22 + 2, 2**22 + 3))
    state["version"] = 1
    del state["services"][2]["extra"]["token_path"]
    (tmp_path / stack.STATE_FILE).write_text(__import__("json").dumps(state))
    args = _parser().parse_args(["stack", "status", "--dir", str(tmp_path)])
    assert args.func(args) == 1
    assert f"sciscale stack up --dir {tmp_path}" in capsys.readouterr().out


def test_token_file_is_private_and_kept_across_restarts(tmp_path):
    from orchestrator import services

    path = services.ensure_token_file(tmp_path / "ray" / "auth_token")
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits, hex, like `ray get-auth-token --generate`
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    assert services.ensure_token_file(path).read_text() == token
    assert path.stat().st_mode & 0o777 == 0o600
    assert services.ray_client_env(path) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path),
                                             "RAY_AUTH_TOKEN": ""}
