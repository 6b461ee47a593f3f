"""End to end with real local Ray, real DeepSpeed (CPU, gloo) and an MLflow server on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.integration

SPEC = str(Path(__file__).resolve().parents[1] / "specs" / "backbone.yaml")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ns_data(tmp_path_factory):
    from data.generators.navier_stokes import generate

    out = tmp_path_factory.mktemp("ns16")
    generate(str(out), n_train=32, n_val=8, resolution=16, seed=0, progress=False)
    return out


@pytest.fixture
def launcher(ns_data, ray_head, mlflow_server, tmp_path, tmp_path_factory):
    env = {**os.environ, "RAY_ADDRESS": ray_head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(ROOT)}
    # for --cluster launches: the test's head runs on this machine, so its temporary directories are shared
    base = [f"storage.shared_paths=[{tmp_path_factory.getbasetemp()}]",
            f"data.train.0.url={ns_data}/train", f"data.val.0.url={ns_data}/val",
            f"storage.runs_root={tmp_path / 'runs'}", f"tracking.uri={mlflow_server.endpoint}"]

    def cmd(*extra: str, run_id: str | None = None, cluster: str | None = None) -> list[str]:
        argv = [sys.executable, "-m", "orchestrator.cli", "launch", SPEC]
        for item in base + list(extra):
            argv += ["--set", item]
        if run_id:
            argv += ["--run-id", run_id]
        if cluster:
            argv += ["--cluster", cluster]
        return argv

    return cmd, env, tmp_path / "runs"


def _run(argv, env, timeout=420) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc


def _mlflow_run(server, run_name: str):
    client = mlflow.MlflowClient(tracking_uri=server.endpoint)
    runs = client.search_runs(client.get_experiment_by_name("backbone-tests").experiment_id,
                              filter_string=f"tags.`sciscale.run_id` = '{run_name}'")
    assert len(runs) == 1, f"expected exactly one MLflow run for {run_name}, got {len(runs)}"
    return client, runs[0]


def _losses(client, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_trains_with_decreasing_loss(stage, launcher, mlflow_server):
    cmd, env, _ = launcher
    run_id = f"zero{stage}"
    _run(cmd(f"distributed.zero_stage={stage}", "train.max_steps=12", run_id=run_id), env)
    client, run = _mlflow_run(mlflow_server, run_id)
    assert run.info.status == "FINISHED"
    losses = _losses(client, run.info.run_id)
    assert [s for s, _ in losses] == list(range(1, 13)), losses
    first, last = sum(v for _, v in losses[:3]) / 3, sum(v for _, v in losses[-3:]) / 3
    assert last < 0.9 * first, f"ZeRO-{stage}: loss did not decrease: {losses}"


def test_run_records_params_metrics_artifacts_and_model(launcher, mlflow_server, tmp_path):
    cmd, env, runs_root = launcher
    proc = _run(cmd("train.max_steps=6", "train.eval_suite_every=3", "train.eval_suite_samples=4",
                    run_id="artifacts"), env)
    client, run = _mlflow_run(mlflow_server, "artifacts")
    suite = client.get_metric_history(run.info.run_id, "eval/rel_l1_median")  # the family's scores in training
    assert sorted(m.step for m in suite) == [3, 6], suite
    assert run.info.run_id in proc.stderr and "MLflow UI" in proc.stderr
    _check_console(proc, runs_root / "artifacts", env, steps=6)
    assert run.data.params["train.global_batch_size"] == "8"
    assert run.data.params["distributed.zero_stage"] == "2"
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/step_time_s",
                "train/data_wait_frac", "val/loss"):
        assert key in run.data.metrics, f"metric {key} missing: {sorted(run.data.metrics)}"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "weights.safetensors"} <= names, names
    # the model is the run's LoggedModel named "model" (runs:/RUN/model resolves to it) ...
    model = client.search_logged_models([run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'")
    assert len(model) == 1 and model[0].tags["sciscale.step"] == "6", model
    # ... which loads in a fresh process (no project on the path) and predicts
    probe = (
        "import mlflow.pytorch, torch\n"
        f"m = mlflow.pytorch.load_model('runs:/{run.info.run_id}/model')\n"
        "x = torch.randn(2, 2, 16, 16)\n"
        "out = m({'x': x, 'lead_time': torch.full((2,), 0.5)})\n"
        "y = out['y'] if isinstance(out, dict) else out\n"
        "assert y.shape[0] == 2 and torch.isfinite(y).all(), y.shape\n"
        "print('PREDICTED', tuple(y.shape))\n")
    fresh = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.endpoint,
                                              "PYTHONPATH": ""})
    assert fresh.returncode == 0 and "PREDICTED" in fresh.stdout, fresh.stderr[-3000:]


def _check_console(proc, run_dir: Path, env: dict, steps: int) -> None:
    """One line per logged step, from rank 0 only; Ray's, MLflow's and the workers' own output in the run's
    log files, not on the screen; `sciscale logs RUN` shows them."""
    screen = proc.stdout + proc.stderr
    for step in range(1, steps + 1):
        assert screen.count(f"step {step}/{steps} ") == 1, screen[-4000:]
    for noise in ("(RayTrainWorker", "(TrainController", "Token authentication", "PreemptionWatcher",
                  "WARNING mlflow", "FutureWarning", "Reporting training result", "Traceback"):
        assert noise not in screen, f"{noise!r} reached the console:\n{screen[-4000:]}"
    logs = run_dir / "sciscale" / "logs"
    assert {p.name for p in logs.iterdir()} == {"driver.log", "worker-rank0.log", "worker-rank1.log"}
    rank0 = (logs / "worker-rank0.log").read_text()
    assert rank0.count(f"step {steps}: loss=") == 1, rank0[-3000:]  # Ray Train's print patch is off
    shown = subprocess.run([sys.executable, "-m", "orchestrator.cli", "logs", run_dir.name, "--runs-root",
                            str(run_dir.parent), "--rank", "0"], env=env, capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
    assert shown.returncode == 0 and f"step {steps}: loss=" in shown.stdout, shown.stderr


def test_deterministic_worker_error_fails_at_once_and_status_says_why(launcher, mlflow_server, ns_data, tmp_path):
    """A corrupt shard (no restart can cure it; the preflight reads manifests only) ends the run FAILED on
    the first attempt although max_failures allows three restarts; status prints the cause, rank and step."""
    import shutil

    cmd, env, runs_root = launcher
    bad = tmp_path / "corrupt-train"
    shutil.copytree(ns_data / "train", bad)
    shard = next((bad / "shards").iterdir())
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    argv = cmd(f"data.train.0.url={bad}", "distributed.max_failures=3", run_id="corrupt")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=420, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr and "run corrupt FAILED on rank " in proc.stderr, proc.stderr[-4000:]
    assert "does not match the manifest" in proc.stderr and "not retried" in proc.stderr, proc.stderr[-4000:]
    _, run = _mlflow_run(mlflow_server, "corrupt")
    assert run.info.status == "FAILED" and run.data.tags["sciscale.group_starts"] == "1", run.data.tags
    error = json.loads(run.data.tags["sciscale.error"])
    assert error["type"] == "ValueError" and error["deterministic"] and error["step"] == 0, error
    assert Path(error["log"]).exists() and "Traceback" in Path(error["log"]).read_text()
    status = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", "corrupt", "--runs-root",
                             str(runs_root)], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "FAILED" in out and f"on rank {error['rank']} at step 0: ValueError:" in out, out
    assert "checksum" in out and f"full log: {error['log']}" in out, out


def test_only_s3_endpoint_url_set_puts_data_checkpoints_and_ray_state_on_seaweedfs(launcher, mlflow_server,
                                                                                  seaweedfs):
    """With S3_ENDPOINT_URL alone (no AWS_ENDPOINT_URL*), the reader, the checkpoints and Ray Train's own state
    all reach the test's SeaweedFS: the one storage layer resolves the endpoint for every caller. A local Ray of
    its own, so no process inherits another endpoint from the session's Ray head."""
    from data.generators.navier_stokes import generate
    from data.storage import ENDPOINT_VARS, open_url
    from orchestrator import services

    cmd, env, _ = launcher
    services.create_bucket(seaweedfs.endpoint, "s3only")
    generate("s3://s3only/ns16", n_train=16, n_val=4, resolution=16, seed=0, progress=False)
    env = {k: v for k, v in env.items() if k not in ENDPOINT_VARS and k != "RAY_ADDRESS"}
    env["S3_ENDPOINT_URL"] = seaweedfs.endpoint
    _run(cmd("data.train.0.url=s3://s3only/ns16/train", "data.val.0.url=s3://s3only/ns16/val",
             "storage.runs_root=s3://s3only/runs", "train.max_steps=4", "train.checkpoint_every=2",
             run_id="s3only"), env)
    fs, root = open_url("s3://s3only/runs/s3only")
    names = {p.rsplit("/", 1)[-1] for p in fs.find(root)}
    assert "checkpoint_manager_snapshot.json" in names, names  # Ray Train's state
    assert "commit-rank0.json" in names and "commit-rank1.json" in names, names  # our checkpoints
    assert {"run.json", "spec.yaml", "driver.log", "worker-rank0.log"} <= names, names
    _, run = _mlflow_run(mlflow_server, "s3only")
    assert run.info.status == "FINISHED"


def _latest_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the latest checkpoint Ray Train committed (a directory still being written does not count)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return None
    latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    return int(latest["metrics"]["step"]) if latest else None


def test_interrupted_run_resumes_from_checkpoint_into_same_mlflow_run(launcher, mlflow_server):
    cmd, env, runs_root = launcher
    run_id = "resume"
    log = runs_root.parent / "first-attempt.log"  # a file, not a pipe: an unread pipe would block the driver
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd("train.max_steps=400", "train.checkpoint_every=3", run_id=run_id), env=env,
                                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while _latest_checkpoint_step(runs_root / run_id) is None:
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("driver did not stop within 180 s of SIGTERM:\n" + log.read_text()[-4000:])
    assert proc.returncode == 130, log.read_text()[-4000:]
    client, run = _mlflow_run(mlflow_server, run_id)
    assert run.info.status == "KILLED"
    step = _latest_checkpoint_step(runs_root / run_id)
    second = _run(cmd("train.max_steps=" + str(step + 4), "train.checkpoint_every=3", run_id=run_id), env)
    assert "(resumed, attempt 2)" in second.stderr
    client, run2 = _mlflow_run(mlflow_server, run_id)  # still exactly one MLflow run
    assert run2.info.run_id == run.info.run_id and run2.info.status == "FINISHED"
    assert run2.data.tags["sciscale.attempts"] == "1"
    starts = sorted(v for k, v in run2.data.tags.items() if k.startswith("sciscale.group_start."))
    assert f"step={step} " in starts[-1], f"the second attempt did not start from step {step}: {starts}"
    steps = [s for s, _ in _losses(client, run.info.run_id)]
    # steps the first attempt logged after its last committed checkpoint keep their first value; no duplicates
    assert steps == list(range(1, max(steps) + 1)) and max(steps) >= step + 4, steps


def test_cluster_submit_succeeds_and_stop_marks_killed(launcher, mlflow_server, ray_head):
    from ray.job_submission import JobStatus

    from orchestrator.cluster import job_client

    cmd, env, _ = launcher
    jobs = job_client(ray_head.endpoint)  # with the head's token (Ray's own client sends none in this process)
    # both jobs at once (2 + 1 workers fit the head's 4 CPUs): their start-ups overlap
    done = _run(cmd("train.max_steps=4", run_id="cluster-ok", cluster=ray_head.endpoint), env)
    long = _run(cmd("train.max_steps=100000", "distributed.workers=1", run_id="cluster-stop",
                    cluster=ray_head.endpoint), env)
    job_id = done.stdout.strip().splitlines()[-1]
    status = _wait_job(jobs, job_id, 400)
    assert status == JobStatus.SUCCEEDED, jobs.get_job_logs(job_id)[-4000:]
    _, run = _mlflow_run(mlflow_server, "cluster-ok")
    assert run.info.status == "FINISHED"
    shown = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", job_id, "--cluster", ray_head.endpoint],
                           env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id}: SUCCEEDED" in shown.stdout and "cause=first start" in shown.stdout, shown.stdout

    job_id = long.stdout.strip().splitlines()[-1]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.endpoint)
    deadline = time.monotonic() + 300
    while True:  # wait until it trains
        _, run = _mlflow_run(mlflow_server, "cluster-stop")
        if client.get_metric_history(run.info.run_id, "train/loss"):
            break
        assert jobs.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING), jobs.get_job_logs(job_id)
        assert time.monotonic() < deadline
        time.sleep(1)
    stop = subprocess.run([sys.executable, "-m", "orchestrator.cli", "stop", job_id, "--cluster",
                           ray_head.endpoint], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert stop.returncode == 0, stop.stderr
    assert jobs.get_job_status(job_id) == JobStatus.STOPPED
    _, run = _mlflow_run(mlflow_server, "cluster-stop")
    assert run.info.status == "KILLED"


def _wait_job(jobs, job_id: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {status} after {timeout} s")
