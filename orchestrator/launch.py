"""`sciscale launch`: run a spec on a local Ray instance, inside a cluster job, or submit it to a cluster."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from orchestrator.cluster import job_client
from orchestrator.runs import RunRecord, RunState, ensure_run, finish_run, new_run_id, ui_url, write_record
from orchestrator.spec import JobSpec
from orchestrator.specload import dump_spec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "trainers", "models", "data")


class Stopped(KeyboardInterrupt):
    """The driver received SIGTERM/SIGINT (e.g. `sciscale stop` or Ctrl-C). A KeyboardInterrupt, so that no
    ``except Exception`` on the way (Ray's polling loop) swallows it and Ray aborts the run as on Ctrl-C."""


def launch(spec: JobSpec, run_id: str | None = None, cluster: str | None = None, in_cluster: bool = False,
           echo=print) -> int:
    run_id = run_id or new_run_id(spec)
    if cluster:
        job_client(cluster)  # a missing or rejected token, or a wrong address, fails before any MLflow run exists
    record, resumed = ensure_run(spec, run_id)
    echo(f"run {run_id} ({'resumed, attempt ' + str(record.attempts + 1) if resumed else 'new'}); "
         f"MLflow run {record.mlflow_run_id} at {record.tracking_uri}")
    if cluster:
        return submit(spec, record, cluster, echo)
    return run_here(spec, record, echo, connect_existing=in_cluster)


_SIGNALS: list[str] = []  # stop signals received; Ray may turn the Stopped we raise into its own error


_GRACE: dict = {}  # the run being driven and whether a SIGTERM grace checkpoint has begun


def _on_signal(signum, frame):  # noqa: ARG001
    name = signal.Signals(signum).name
    record, grace = _GRACE.get("record"), _GRACE.get("grace_s", 0)
    if signum == signal.SIGTERM and record is not None and grace > 0 and not _GRACE.get("started"):
        _GRACE["started"] = True
        threading.Thread(target=_grace_checkpoint, args=(record, grace), daemon=True).start()
        return
    _SIGNALS.append(name)
    raise Stopped(name)


def _grace_checkpoint(record: RunRecord, grace_s: float) -> None:
    """SIGTERM (preemption of the driver's node, `kill`): ask the workers for a checkpoint, wait until it is
    committed or the grace period ends, then stop as for any signal."""
    from trainers import resilience

    run = record.__dict__
    print(f"SIGTERM: asking the workers for a checkpoint; stopping once it is committed or in {grace_s:.0f} s",
          flush=True)
    deadline = time.monotonic() + grace_s
    try:
        resilience.request_checkpoint(run, "SIGTERM")
        while time.monotonic() < deadline:
            step = resilience.requested_checkpoint_committed(run)
            if step is not None:
                print(f"checkpoint of step {step} committed; stopping", flush=True)
                break
            time.sleep(0.5)
        else:
            print(f"no checkpoint committed within {grace_s:.0f} s; stopping", flush=True)
    except Exception as exc:  # noqa: BLE001 - stopping is what matters now
        print(f"checkpoint request failed ({exc}); stopping", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


def run_here(spec: JobSpec, record: RunRecord, echo=print, connect_existing: bool = False) -> int:
    """Drive the training on a Ray instance from this process; the MLflow status follows the outcome."""
    import ray

    previous = {}
    try:
        if not ray.is_initialized():
            if connect_existing:  # inside a Ray job: the job's runtime env already carries the project
                ray.init(address="auto", logging_level="WARNING")
            else:
                ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env=worker_env(), logging_level="WARNING")
        from trainers.resilience import clear_checkpoint_request

        clear_checkpoint_request(record.__dict__)  # a request an earlier, stopped attempt left behind
        _GRACE.update(record=record, grace_s=spec.distributed.preemption_grace_s, started=False)
        # after ray.init, which installs handlers of its own
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        from trainers.ray_job import fit

        result = fit(spec, record)
    except BaseException as exc:
        if isinstance(exc, Stopped) or _SIGNALS:
            finish_run(record, RunState.KILLED, f"stopped by {', '.join(_SIGNALS) or exc}")
            echo(f"run {record.run_id} stopped; MLflow run {record.mlflow_run_id} marked KILLED")
            return 130
        finish_run(record, RunState.FAILED, f"{type(exc).__name__}: {exc}")
        echo(f"run {record.run_id} FAILED: {type(exc).__name__}: {exc}")
        raise
    finally:
        _GRACE.clear()
        for s, handler in previous.items():
            signal.signal(s, handler)
    finish_run(record, RunState.FINISHED)
    echo(f"run {record.run_id} finished at step {result.get('step')}: " +
         ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.items()) if isinstance(v, float)))
    echo(f"MLflow run id: {record.mlflow_run_id}")
    echo(f"MLflow UI: {ui_url(record)}")
    return 0


def worker_env() -> dict:
    """Runtime env for Ray workers: this project's packages importable, DeepSpeed on the CPU when no GPU."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    for key in ("DS_ACCELERATOR", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION", "MLFLOW_TRACKING_URI",
                "OMP_NUM_THREADS"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return {"env_vars": env}


def submit(spec: JobSpec, record: RunRecord, cluster: str, echo=print) -> int:
    """Submit through Ray's Job Submission API; the job runs `sciscale launch --in-cluster` on the head."""
    client = job_client(cluster)
    staging = Path(tempfile.mkdtemp(prefix="sciscale-submit-"))
    try:
        for pkg in PACKAGES:
            shutil.copytree(PROJECT_ROOT / pkg, staging / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        (staging / "spec.yaml").write_text(dump_spec(spec))
        env = worker_env()["env_vars"]
        env.pop("PYTHONPATH", None)  # the working dir is on the path inside the job
        job_id = _submit_with_retry(client, dict(
            entrypoint=f"{sys.executable} -m orchestrator.cli launch spec.yaml --run-id {record.run_id} --in-cluster",
            runtime_env={"working_dir": str(staging), "env_vars": env},
            submission_id=f"{record.run_id}-{record.attempts}",
            metadata={"sciscale_run_id": record.run_id, "mlflow_run_id": record.mlflow_run_id,
                      "tracking_uri": record.tracking_uri, "runs_root": record.runs_root},
        ))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record.job_id, record.cluster = job_id, cluster
    write_record(record, spec.storage.endpoint_url)
    echo(f"submitted job {job_id} to {cluster}")
    echo(f"follow it: sciscale logs {job_id} --cluster {cluster} -f")
    print(job_id)
    return 0


def _submit_with_retry(client, kwargs: dict, attempts: int = 6) -> str:
    """The Job API answers 500 'No available agent' while the head's agent is still starting or busy."""
    import time

    for attempt in range(attempts):
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")
