"""`sciscale stack up/status/down` with the real services, and a spec that uses them end to end: data and
checkpoints in the stack's S3, metrics and artifacts through its MLflow server, workers on its Ray head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from orchestrator import stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "tests" / "integration" / "specs" / "backbone.yaml"


def _cli(*argv: str, env: dict | None = None, timeout: float = 300, check: bool = True):
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _group_members(leaders: set[int]) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and (int(fields[2]) in leaders or int(fields[3]) in leaders):
                members.append(int(entry.name))
    return members


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory):
    stack_dir = tmp_path_factory.mktemp("stack")
    try:
        _cli("stack", "up", "--dir", str(stack_dir), "--num-cpus", "4")
        yield stack_dir
    finally:
        _cli("stack", "down", "--dir", str(stack_dir), check=False)


def test_up_is_idempotent_and_status_reports_health(local_stack):
    before = json.loads((local_stack / stack.STATE_FILE).read_text())
    again = _cli("stack", "up", "--dir", str(local_stack))
    assert "already up" in again.stdout
    after = json.loads((local_stack / stack.STATE_FILE).read_text())
    assert [s["pid"] for s in after["services"]] == [s["pid"] for s in before["services"]]
    status = json.loads(_cli("stack", "status", "--dir", str(local_stack), "--json").stdout)
    assert status["healthy"] == {"seaweedfs": True, "mlflow": True, "ray": True}
    env_lines = _cli("stack", "status", "--dir", str(local_stack), "--env").stdout.split("\n")
    exported = dict(line.removeprefix("export ").split("=", 1) for line in env_lines if line)
    assert exported["MLFLOW_TRACKING_URI"] == status["env"]["MLFLOW_TRACKING_URI"]
    assert exported["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_spec_trains_with_s3_data_and_checkpoints_and_logs_to_mlflow(local_stack):
    from data.generators.navier_stokes import generate
    from orchestrator.services import _s3fs

    state = stack.load_state(local_stack)
    env = stack.client_env(state)
    bucket = state["bucket"]
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    generate(f"s3://{bucket}/datasets/ns16", n_train=32, n_val=8, resolution=16, seed=0, progress=False)
    sets = [f"data.train.0.url=s3://{bucket}/datasets/ns16/train", f"data.val.0.url=s3://{bucket}/datasets/ns16/val",
            f"storage.runs_root=s3://{bucket}/runs", f"tracking.uri={env['MLFLOW_TRACKING_URI']}",
            "train.max_steps=6", "train.checkpoint_every=3", "tracking.experiment=stack-tests"]
    argv = ["launch", str(SPEC), "--run-id", "stack-e2e"] + [x for s in sets for x in ("--set", s)]
    _cli(*argv, env={**env, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}, timeout=480)

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("stack-tests")
    (run,) = client.search_runs(experiment.experiment_id, "tags.`sciscale.run_id` = 'stack-e2e'")
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert max(steps) == 6
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must go through the server"
    fs = _s3fs(env["AWS_ENDPOINT_URL"])
    stored = fs.find(f"{bucket}/mlflow-artifacts")
    assert any(p.endswith("spec.yaml") for p in stored), f"no MLflow artifact in the stack's bucket: {stored[:20]}"
    checkpoints = fs.find(f"{bucket}/runs/stack-e2e")
    assert len(checkpoints) > 1, f"no checkpoint objects under s3://{bucket}/runs/stack-e2e: {checkpoints}"


def test_down_leaves_no_process_behind(tmp_path):
    # a second, separate stack so that this test does not depend on the shared one's order
    _cli("stack", "up", "--dir", str(tmp_path), "--num-cpus", "1")
    state = stack.load_state(tmp_path)
    leaders = {s["pid"] for s in state["services"]}
    assert _group_members(leaders), "up started no process"
    out = _cli("stack", "down", "--dir", str(tmp_path)).stdout
    assert "stopped ray, mlflow, seaweedfs" in out
    assert _group_members(leaders) == []
    assert not (tmp_path / stack.STATE_FILE).exists()
    status = _cli("stack", "status", "--dir", str(tmp_path), check=False)
    assert status.returncode == 1 and "no stack" in status.stdout
