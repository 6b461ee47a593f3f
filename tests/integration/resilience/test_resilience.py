"""Chaos tests with real processes on CPU: worker SIGKILL, driver + Ray loss, storage and tracking outages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from orchestrator import services
from trainers.resilience import read_audit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SPEC = str(ROOT / "tests" / "integration" / "specs" / "backbone.yaml")
STEPS = 60  # long enough that a kill after the first checkpoint lands mid-run
COMMON = [f"train.max_steps={STEPS}", "train.checkpoint_every=4", "train.audit_samples=true", "train.log_every=1",
          "distributed.max_failures=3"]


@pytest.fixture(scope="module")
def ns_local(tmp_path_factory):
    from data.generators.navier_stokes import generate

    out = tmp_path_factory.mktemp("ns16-resilience")
    generate(str(out), n_train=32, n_val=8, resolution=16, seed=0, progress=False)
    return out


def _argv(data: str, runs: Path, uri: str, run_id: str, extra=()) -> list[str]:
    argv = [sys.executable, "-m", "orchestrator.cli", "launch", SPEC, "--run-id", run_id]
    for item in [f"data.train.0.url={data}/train", f"data.val.0.url={data}/val", f"storage.runs_root={runs}",
                 f"tracking.uri={uri}", *COMMON, *extra]:
        argv += ["--set", item]
    return argv


def _env(head) -> dict:
    return {**os.environ, "RAY_ADDRESS": head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
            **services.ray_client_env()}


def _start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start a launch with its output in a file (an unread pipe would block the driver when full)."""
    with open(log, "w") as sink:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen, timeout=600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"launch still running after {timeout} s:\n{proc.log.read_text()[-6000:]}")
    out = proc.log.read_text()
    assert proc.returncode == 0, out[-6000:]
    return out


def _weights(uri: str, run_name: str) -> dict[str, torch.Tensor]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = _run(uri, run_name)
    path = client.download_artifacts(run.info.run_id, "weights.safetensors")
    return load_file(path)


def _run(uri: str, run_name: str):
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs(client.get_experiment_by_name("backbone-tests").experiment_id,
                              filter_string=f"tags.`sciscale.run_id` = '{run_name}'")
    assert len(runs) == 1
    return runs[0]


def _steps(uri: str, run_name: str, key="train/loss") -> list[int]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return sorted(m.step for m in client.get_metric_history(_run(uri, run_name).info.run_id, key))


def _wait_checkpoint(runs: Path, run_id: str, proc, timeout=400) -> None:
    deadline = time.monotonic() + timeout
    while not list((runs / run_id).glob("checkpoint_*/latest")):
        assert proc.poll() is None, proc.log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.3)


def train_workers(head) -> list[int]:
    """Pids of the Ray Train workers of this head (children of its raylet)."""
    out = subprocess.run(["ps", "-eo", "pid,pgid,ppid,args"], capture_output=True, text=True).stdout.splitlines()
    rows = [line.split(None, 3) for line in out[1:]]
    raylets = {r[0] for r in rows if len(r) == 4 and r[1] == str(head.pid) and "raylet" in r[3]}
    return [int(r[0]) for r in rows if len(r) == 4 and r[2] in raylets and "RayTrainWorker" in r[3]]


@pytest.fixture(scope="module")
def reference(ns_local, ray_head, mlflow_server, tmp_path_factory):
    """An uninterrupted run: its weights and sample stream are what every recovered run must reproduce."""
    runs = tmp_path_factory.mktemp("ref-runs")
    proc = _start(_argv(str(ns_local), runs, mlflow_server.endpoint, "reference"), _env(ray_head), runs.parent / "launch.log")
    _finish(proc)
    return {"weights": _weights(mlflow_server.endpoint, "reference"), "audit": read_audit(str(runs), "reference")}


def _assert_same_as_reference(reference, uri, runs, run_id):
    audit = read_audit(str(runs), run_id)
    assert sorted(audit) == list(range(1, STEPS + 1))
    assert audit == reference["audit"], "sample-id stream differs from the uninterrupted run"
    weights = _weights(uri, run_id)
    assert weights.keys() == reference["weights"].keys()
    for name, tensor in reference["weights"].items():
        assert torch.equal(tensor, weights[name]), f"{name} differs from the uninterrupted run"
    steps = _steps(uri, run_id)
    assert steps == list(range(1, STEPS + 1)), f"duplicated or missing metric steps: {steps}"


@pytest.mark.skip(reason="the kill lands after the run has ended in the suite (no Ray Train worker found); "
                         "needs a kill point tied to the step, not to the first checkpoint - issue 7 stays open")
def test_worker_sigkill_recovers_bitwise(reference, ns_local, ray_head, mlflow_server, tmp_path):
    runs = tmp_path / "runs"
    proc = _start(_argv(str(ns_local), runs, mlflow_server.endpoint, "worker-kill"), _env(ray_head), runs.parent / "launch.log")
    _wait_checkpoint(runs, "worker-kill", proc)
    victims = train_workers(ray_head)
    assert victims, "no Ray Train worker found to kill"
    os.kill(victims[-1], signal.SIGKILL)
    _finish(proc)
    _assert_same_as_reference(reference, mlflow_server.endpoint, runs, "worker-kill")
    tags = _run(mlflow_server.endpoint, "worker-kill").data.tags
    assert int(tags["sciscale.group_starts"]) >= 2


def test_driver_and_ray_killed_then_resume(reference, ns_local, mlflow_server, tmp_path):
    runs = tmp_path / "runs"
    head = services.start_ray_head(tmp_path / "ray1", num_cpus=4)
    try:
        proc = _start(_argv(str(ns_local), runs, mlflow_server.endpoint, "driver-kill"), _env(head), tmp_path / "driver-kill.log")
        _wait_checkpoint(runs, "driver-kill", proc)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        head.stop()  # the whole local Ray instance goes with the driver
    assert _run(mlflow_server.endpoint, "driver-kill").info.status == "RUNNING"  # nobody could mark it
    head = services.start_ray_head(tmp_path / "ray2", num_cpus=4)
    try:
        resume = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", "driver-kill", "--runs-root",
                                 str(runs)], env=_env(head), cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        head.stop()
    assert resume.returncode == 0, resume.stderr[-6000:]
    run = _run(mlflow_server.endpoint, "driver-kill")
    assert run.info.status == "FINISHED" and run.data.tags["sciscale.attempts"] == "1"
    _assert_same_as_reference(reference, mlflow_server.endpoint, runs, "driver-kill")


def _pause(service, seconds: float) -> None:
    os.killpg(service.pid, signal.SIGSTOP)
    time.sleep(seconds)
    os.killpg(service.pid, signal.SIGCONT)


def test_mlflow_outage_loses_no_metric(ns_local, ray_head, tmp_path):
    server = services.start_mlflow_server(tmp_path / "mlflow")
    try:
        runs = tmp_path / "runs"
        proc = _start(_argv(str(ns_local), runs, server.endpoint, "mlflow-outage", ["train.max_steps=40"]),
                      _env(ray_head), tmp_path / "mlflow-outage.log")
        _wait_checkpoint(runs, "mlflow-outage", proc)
        _pause(server, 30)
        _finish(proc, timeout=900)
        assert _steps(server.endpoint, "mlflow-outage") == list(range(1, 41))
    finally:
        server.stop()


def _copy_small_shards(src: str, dst: str) -> None:
    """Rewrite a local dataset to S3 with one trajectory per shard, so training keeps fetching shards."""
    from data.format import open_shard, read_manifest
    from data.writer import DatasetWriter

    manifest = read_manifest(src)
    with DatasetWriter(dst, manifest.fields, attrs=manifest.attrs, shard_bytes=4096,
                       progress=False) as writer:
        for shard in manifest.shards:
            view = open_shard(f"{src}/{shard.key}", manifest.fields)
            for i in range(shard.num_samples):
                writer.append({k: v for k, v in view.sample(i).items()})


def test_object_store_outage_run_completes(ns_local, ray_head, mlflow_server, seaweedfs, tmp_path, monkeypatch):
    for key, value in services.s3_env(seaweedfs.endpoint).items():  # other fixtures may have pointed AWS_* elsewhere
        monkeypatch.setenv(key, value)
    services.create_bucket(seaweedfs.endpoint, "chaos")
    for split in ("train", "val"):
        _copy_small_shards(f"{ns_local}/{split}", f"s3://chaos/ns16/{split}")
    runs = tmp_path / "runs"
    argv = _argv("s3://chaos/ns16", runs, mlflow_server.endpoint, "s3-outage",
                 ["train.max_steps=40", "data.prefetch=1", "data.shuffle_window=1"])
    proc = _start(argv, _env(ray_head), tmp_path / "s3-outage.log")
    _wait_checkpoint(runs, "s3-outage", proc)
    _pause(seaweedfs, 20)
    _finish(proc, timeout=900)
    assert _run(mlflow_server.endpoint, "s3-outage").info.status == "FINISHED"


ELASTIC_STEPS = 160
ELASTIC = ["distributed.workers={min: 1, max: 2}", "distributed.resources_per_worker={CPU: 1, slot: 1}",
           "distributed.resize_check_s=3", f"train.max_steps={ELASTIC_STEPS}"]


def _loss_curve(uri: str, run_name: str) -> dict[int, float]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return {m.step: m.value for m in client.get_metric_history(_run(uri, run_name).info.run_id, "train/loss")}


def _world_sizes(uri: str, run_name: str) -> list[float]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return [m.value for m in client.get_metric_history(_run(uri, run_name).info.run_id, "sys/world_size")]


@pytest.mark.skip(reason="not yet passing: the worker kill misses the running group (see the worker-kill test); "
                         "issue 7 stays open")
def test_elastic_shrink_and_grow_keeps_sample_stream(ns_local, mlflow_server, tmp_path):
    import ray

    head = services.start_ray_head(tmp_path / "ray", num_cpus=4, resources={"slot": 2})
    env = _env(head)
    try:
        ref_runs = tmp_path / "ref"
        _finish(_start(_argv(str(ns_local), ref_runs, mlflow_server.endpoint, "elastic-ref", ELASTIC), env, tmp_path / "ref.log"))
        runs = tmp_path / "runs"
        proc = _start(_argv(str(ns_local), runs, mlflow_server.endpoint, "elastic", ELASTIC), env, tmp_path / "elastic.log")
        _wait_checkpoint(runs, "elastic", proc)
        os.environ.update(services.ray_client_env())
        ray.init(address=head.extra["gcs_address"], logging_level="ERROR")
        try:
            blocker = ray.remote(resources={"slot": 1}, num_cpus=0)(_Blocker).remote()  # takes a freed slot
            os.kill(train_workers(head)[-1], signal.SIGKILL)
            ray.get(blocker.ready.remote(), timeout=300)
            deadline = time.monotonic() + 300
            while 1.0 not in _world_sizes(mlflow_server.endpoint, "elastic"):
                assert proc.poll() is None and time.monotonic() < deadline, "the run never continued on 1 worker"
                time.sleep(1)
            ray.kill(blocker)  # the slot comes back: the run grows to 2 workers again
        finally:
            ray.shutdown()
        out = _finish(proc, timeout=900)
    finally:
        head.stop()
    sizes = _world_sizes(mlflow_server.endpoint, "elastic")
    assert 1.0 in sizes and sizes[-1] == 2.0, f"world sizes seen: {sizes}\n{out[-3000:]}"
    assert read_audit(str(runs), "elastic") == read_audit(str(ref_runs), "elastic-ref")
    ref, got = _loss_curve(mlflow_server.endpoint, "elastic-ref"), _loss_curve(mlflow_server.endpoint, "elastic")
    assert sorted(got) == sorted(ref) == list(range(1, ELASTIC_STEPS + 1))
    for step, value in ref.items():
        assert abs(got[step] - value) <= 1e-4 * abs(value), f"step {step}: {got[step]} vs {value}"


class _Blocker:
    def ready(self) -> bool:
        return True
