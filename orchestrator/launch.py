"""`sciscale launch`: run a spec on a local Ray instance, inside a cluster job, or submit it to a cluster."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchestrator import startup
from orchestrator.cluster import job_client
from orchestrator.console import Console, headline
from orchestrator.registry import pin_init_from
from orchestrator.services import NORMAL_PRIORITY
from orchestrator.runs import (RunLog, RunRecord, RunState, ensure_run, failure_lines, finish_run, new_run_id,
                               run_context, ui_url, write_record)
from orchestrator.spec import JobSpec
from orchestrator.specload import dump_spec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "trainers", "models", "data")


class Stopped(KeyboardInterrupt):
    """The driver received SIGTERM/SIGINT (e.g. `sciscale stop` or Ctrl-C). A KeyboardInterrupt, so that no
    ``except Exception`` on the way (Ray's polling loop) swallows it and Ray aborts the run as on Ctrl-C."""


def launch(spec: JobSpec, run_id: str | None = None, cluster: str | None = None, in_cluster: bool = False,
           verbose: bool = False) -> int:
    """Create or reopen the run, then train here or submit to ``cluster``; returns the exit code."""
    console = Console(verbose)
    run_id = run_id or new_run_id(spec)
    if cluster:
        job_client(cluster)  # a missing or rejected token, or a wrong address, fails before any MLflow run exists
        record, _ = _ensure_run(spec, run_id, console)
        return submit(spec, record, cluster, console.echo)
    # Ray's start (mostly waiting for its processes) overlaps the MLflow run and the driver's Ray Train imports
    with ThreadPoolExecutor(2) as pool:
        ensured = pool.submit(_ensure_run, spec, run_id, console)
        pool.submit(_import_ray_train)
        try:
            board, failed = _start_ray(run_id, console, connect_existing=in_cluster), None
        except BaseException as exc:  # noqa: BLE001 - the MLflow run ends FAILED (or KILLED) with the cause
            board, failed = None, exc
        record, _ = ensured.result()
    init_from = pin_init_from(spec, record.mlflow_run_id, record.tracking_uri)
    run = {**run_context(record, spec), "verbose": verbose, "init_from": init_from}
    log = RunLog(run, "driver.log", capture=False)
    console.attach(log)
    console.echo(f"logs: {log.where.rsplit('/', 1)[0]}/ (driver.log, worker-rank*.log)")
    try:
        return _failed(record, run, failed, console) if failed else run_here(spec, record, run, console, board)
    finally:
        console.close_bar()
        log.close()


def _ensure_run(spec: JobSpec, run_id: str, console: Console) -> tuple[RunRecord, bool]:
    record, resumed = ensure_run(spec, run_id)
    startup.mark("run record, MLflow run")
    console.echo(f"run {run_id} ({'resumed, attempt ' + str(record.attempts + 1) if resumed else 'new'}); "
                 f"MLflow run {record.mlflow_run_id} at {record.tracking_uri}")
    return record, resumed


def _import_ray_train() -> None:
    """Ray Train's TorchTrainer (it imports torch: about 2 s on one core), loaded while Ray starts."""
    import ray.train.torch  # noqa: F401

    startup.mark("Ray Train imports")


_SIGNALS: list[str] = []  # stop signals received; Ray may turn the Stopped we raise into its own error


_GRACE: dict = {}  # the run being driven and whether a SIGTERM grace checkpoint has begun


def _on_signal(signum, frame):  # noqa: ARG001
    name = signal.Signals(signum).name
    run, grace = _GRACE.get("run"), _GRACE.get("grace_s", 0)
    if signum == signal.SIGTERM and run is not None and grace > 0 and not _GRACE.get("started"):
        _GRACE["started"] = True
        threading.Thread(target=_grace_checkpoint, args=(run, grace), daemon=True).start()
        return
    _SIGNALS.append(name)
    raise Stopped(name)


def _grace_checkpoint(run: dict, grace_s: float) -> None:
    """SIGTERM (preemption of the driver's node, `kill`): ask the workers for a checkpoint, wait until it is
    committed or the grace period ends, then stop as for any signal."""
    from trainers import resilience

    echo = _GRACE.get("echo", print)
    echo(f"SIGTERM: asking the workers for a checkpoint; stopping once it is committed or in {grace_s:.0f} s")
    deadline = time.monotonic() + grace_s
    try:
        resilience.request_checkpoint(run, "SIGTERM")
        while time.monotonic() < deadline:
            step = resilience.requested_checkpoint_committed(run)
            if step is not None:
                echo(f"checkpoint of step {step} committed; stopping")
                break
            time.sleep(0.5)
        else:
            echo(f"no checkpoint committed within {grace_s:.0f} s; stopping")
    except Exception as exc:  # noqa: BLE001 - stopping is what matters now
        echo(f"checkpoint request failed ({exc}); stopping")
    os.kill(os.getpid(), signal.SIGTERM)


def run_here(spec: JobSpec, record: RunRecord, run: dict, console: Console, board) -> int:
    """Drive the training from this process on the Ray instance ``_start_ray`` started or connected to (its
    progress ``board``); the MLflow status follows the outcome."""
    previous, stop, follower = {}, threading.Event(), None
    try:
        from trainers.resilience import clear_checkpoint_request

        clear_checkpoint_request(run)  # a request an earlier, stopped attempt left behind
        _GRACE.update(run=run, grace_s=spec.distributed.preemption_grace_s, started=False, echo=console.echo)
        # after ray.init, which installs handlers of its own
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        follower = threading.Thread(target=console.follow, args=(board, stop), name="sciscale-console", daemon=True)
        follower.start()
        from trainers.ray_job import fit

        result = fit(spec, record, run)
    except BaseException as exc:
        stop.set()
        if follower is not None:
            follower.join(timeout=5)
        console.close_bar()
        return _failed(record, run, exc, console)
    finally:
        stop.set()
        _GRACE.clear()
        for s, handler in previous.items():
            signal.signal(s, handler)
    follower.join(timeout=10)  # it shows rank 0's last events first
    console.close_bar()
    finish_run(record, RunState.FINISHED)
    shown = ["train/loss", *headline(result)]
    console.echo(f"run {record.run_id} finished at step {result.get('step')}: " +
                 ", ".join(f"{k} {result[k]:.4g}" for k in shown if isinstance(result.get(k), float)))
    console.echo(f"MLflow run id: {record.mlflow_run_id}")
    console.echo(f"MLflow UI: {ui_url(record)}")
    return 0


def _start_ray(run_id: str, console: Console, connect_existing: bool):
    """``ray_init`` and the console's progress board."""
    address = ray_init(console, connect_existing)
    startup.mark("Ray connect" if address else "Ray start")
    from trainers.progress import create_board

    return create_board(run_id)


def ray_init(console: Console, connect_existing: bool) -> str | None:
    """ray.init for a launch or a sweep: inside a Ray job its own cluster and runtime env; else RAY_ADDRESS's
    cluster or a local instance started here, whose workers run at normal priority (Ray's default, nice 15, gives
    training's CPU to anything else that runs on the machine). Returns the address (None: started here)."""
    import ray

    console.quiet()
    address = "auto" if connect_existing else os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        quiet = {} if console.verbose else {"log_to_driver": False}
        if connect_existing:
            ray.init(address="auto", logging_level="WARNING", **quiet)
        else:
            for key, value in NORMAL_PRIORITY.items():  # read by the raylet this ray.init starts
                os.environ.setdefault(key, value)
            ray.init(address=address, runtime_env=worker_env(), logging_level="WARNING", **quiet)
    console.quiet()
    return address


def _failed(record: RunRecord, run: dict, exc: BaseException, console: Console) -> int:
    """End the MLflow run KILLED (a stop signal) or FAILED (with its cause in tags), and say why on one screen;
    the traceback is in driver.log and the worker's log."""
    import traceback

    traceback.print_exception(exc, file=console.log.file if console.log else sys.stderr)
    if isinstance(exc, Stopped) or _SIGNALS:
        finish_run(record, RunState.KILLED, f"stopped by {', '.join(_SIGNALS) or exc}")
        console.echo(f"run {record.run_id} stopped; MLflow run {record.mlflow_run_id} marked KILLED")
        return 130
    summary = failure_summary(exc, console.log.where if console.log else "")
    finish_run(record, RunState.FAILED, f"{summary['type']}: {summary['message']}", error=summary)
    for line in failure_lines(record.run_id, summary):
        console.echo(line)
    return 1


def failure_summary(exc: BaseException, driver_log: str) -> dict:
    """The cause of a failed run for the tag sciscale.error: the first worker failure's type, message, rank,
    step and log, else the driver's own error."""
    from trainers.failures import first_cause

    cause = first_cause(exc)
    summary = cause.summary() if cause else {"type": type(exc).__name__, "message": str(exc)[:4000], "rank": None,
                                              "step": None, "deterministic": False, "log": ""}
    return {**summary, "driver_log": driver_log}


def worker_env() -> dict:
    """Runtime env for Ray workers: this project's packages importable, DeepSpeed on the CPU when no GPU."""
    from data.storage import ENV_VARS

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    for key in ("DS_ACCELERATOR", *ENV_VARS, "MLFLOW_TRACKING_URI", "OMP_NUM_THREADS"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return {"env_vars": env}


def submit(spec: JobSpec, record: RunRecord, cluster: str, echo=print, command: str | None = None) -> int:
    """Submit through Ray's Job Submission API; the job runs `sciscale launch --in-cluster` on the head (or
    ``command``, sciscale arguments: a sweep's driver)."""
    client = job_client(cluster)
    command = command or f"launch spec.yaml --run-id {record.run_id} --in-cluster"
    staging = Path(tempfile.mkdtemp(prefix="sciscale-submit-"))
    try:
        for pkg in PACKAGES:
            shutil.copytree(PROJECT_ROOT / pkg, staging / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        (staging / "spec.yaml").write_text(dump_spec(spec))
        env = worker_env()["env_vars"]
        env.pop("PYTHONPATH", None)  # the working dir is on the path inside the job
        job_id = _submit_with_retry(client, dict(
            entrypoint=f"{sys.executable} -m orchestrator.cli {command}",
            runtime_env={"working_dir": str(staging), "env_vars": env},
            submission_id=f"{record.run_id}-{record.attempts}",
            metadata={"sciscale_run_id": record.run_id, "mlflow_run_id": record.mlflow_run_id,
                      "tracking_uri": record.tracking_uri, "runs_root": record.runs_root},
        ))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record.job_id, record.cluster = job_id, cluster
    write_record(record, spec.storage)
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
