"""Run identity and lifecycle: the run record in the runs root and the one MLflow run per sciscale run.

State lives in two places only: ``RUNS_ROOT/RUN_ID/`` (Ray Train's checkpoints, plus ``sciscale/run.json``
and ``sciscale/spec.yaml``) and the MLflow run named in run.json. Relaunching a run id reads both back.
"""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.lineage import log_datasets
from orchestrator.spec import JobSpec
from orchestrator.specload import dump_spec, flatten


class RunState(str, enum.Enum):
    """Lifecycle of a sciscale run as MLflow records it."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


@dataclass
class RunRecord:
    """What a relaunch, `status` or `stop` needs to find a run again (RUNS_ROOT/RUN_ID/sciscale/run.json)."""

    run_id: str
    runs_root: str
    tracking_uri: str
    experiment: str
    mlflow_run_id: str
    created: float = field(default_factory=time.time)
    attempts: int = 0
    job_id: str | None = None
    cluster: str | None = None
    kind: str = "run"
    """run, or sweep (the record of a sweep's parent run; orchestrator/sweep.py)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_context(record: RunRecord, spec: JobSpec) -> dict:
    """What the workers and the Train controller get to reach the run: the record plus the storage settings."""
    return {**record.__dict__, "storage": spec.storage.model_dump(mode="json")}


def log_dir(run: dict) -> tuple[str, str | None]:
    """(local directory of the run's log files, the runs-root directory they are uploaded to or None): under
    RUNS_ROOT/RUN_ID/sciscale/logs/ for a local runs root; for a remote one, ~/.cache/sciscale/logs/RUN_ID/
    first, uploaded when the process ends."""
    from data.storage import local_path, scheme_of

    root, run_id = run["runs_root"], run["run_id"]
    if scheme_of(root) == "file":
        return os.path.join(local_path(root), run_id, "sciscale", "logs"), None
    return str(Path.home() / ".cache" / "sciscale" / "logs" / run_id), f"{root.rstrip('/')}/{run_id}/sciscale/logs"


class RunLog:
    """One log file of a run (driver.log, worker-rankR.log), appended to by every attempt. With ``capture``
    this process's stdout and stderr (file descriptors 1 and 2, so output of C++ code and child processes
    too) go into it until ``close``."""

    def __init__(self, run: dict, name: str, capture: bool = True):
        local, remote = log_dir(run)
        os.makedirs(local, exist_ok=True)
        self.path, self.remote, self.storage = os.path.join(local, name), remote and f"{remote}/{name}", run.get("storage")
        self.where = self.remote or self.path
        self.file = open(self.path, "a", buffering=1)
        self.file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} ====\n")
        self._saved = None
        if capture:
            sys.stdout.flush(), sys.stderr.flush()
            self._saved = (os.dup(1), os.dup(2))
            os.dup2(self.file.fileno(), 1), os.dup2(self.file.fileno(), 2)

    def close(self) -> None:
        sys.stdout.flush(), sys.stderr.flush()
        if self._saved:
            for fd, saved in zip((1, 2), self._saved):
                os.dup2(saved, fd)
                os.close(saved)
            self._saved = None
        self.file.close()
        if self.remote:
            from data.storage import open_url

            try:
                fs, path = open_url(self.remote, self.storage)
                fs.put_file(self.path, path)
            except Exception as exc:  # noqa: BLE001 - the local copy stays; losing the upload fails nothing
                print(f"could not upload {self.path} to {self.remote}: {exc}", file=sys.stderr, flush=True)


def new_run_id(spec: JobSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def runs_fs(runs_root: str, storage=None):
    """(fsspec filesystem, root path) for a runs root, through the one storage layer (data/storage.py)."""
    from data.storage import open_url

    fs, root = open_url(runs_root, storage)
    return fs, root.rstrip("/")


def absolute_root(runs_root: str) -> str:
    """Runs roots are stored absolute so that workers started elsewhere find them."""
    if "://" in runs_root and not runs_root.startswith("file://"):
        return runs_root.rstrip("/")
    return str(Path(runs_root.removeprefix("file://")).resolve())


def tracking_uri(spec: JobSpec) -> str:
    """The spec's MLflow URI, else MLFLOW_TRACKING_URI, else a sqlite store in a local runs root."""
    if spec.tracking.uri:
        return spec.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = absolute_root(spec.storage.runs_root)
    if "://" in root:
        raise ValueError(f"tracking.uri is not set and storage.runs_root {root!r} is not local, so there is no "
                         "place for the embedded sqlite store. Hint: set tracking.uri to your MLflow server "
                         "(or export MLFLOW_TRACKING_URI)")
    Path(root).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root}/mlflow.db"


def record_path(runs_root: str, run_id: str) -> str:
    return f"{run_id}/sciscale/run.json"


def read_record(runs_root: str, run_id: str, storage=None) -> RunRecord | None:
    fs, root = runs_fs(runs_root, storage)
    path = f"{root}/{record_path(runs_root, run_id)}"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return RunRecord(**json.load(f))


def write_record(record: RunRecord, storage=None, spec_yaml: str | None = None) -> None:
    fs, root = runs_fs(record.runs_root, storage)
    base = f"{root}/{record.run_id}/sciscale"
    fs.makedirs(base, exist_ok=True)
    _atomic_write(fs, f"{base}/run.json", record.to_json())
    if spec_yaml is not None:
        _atomic_write(fs, f"{base}/spec.yaml", spec_yaml)


def _atomic_write(fs, path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open(tmp, "w") as f:
        f.write(text)
    fs.mv(tmp, path)


def list_runs(runs_root: str, storage=None) -> list[RunRecord]:
    fs, root = runs_fs(runs_root, storage)
    if not fs.exists(root):
        return []
    records = []
    for entry in sorted(fs.ls(root, detail=False)):
        rec = read_record(runs_root, entry.rstrip("/").split("/")[-1], storage)
        if rec is not None:
            records.append(rec)
    return records


def mlflow_client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_run(spec: JobSpec, run_id: str) -> tuple[RunRecord, bool]:
    """Create the run (record + MLflow run) or reopen it, logging its datasets as the run's inputs; returns
    (record, resumed)."""
    runs_root = absolute_root(spec.storage.runs_root)
    storage = spec.storage
    record = read_record(runs_root, run_id, storage)
    spec_yaml = dump_spec(spec)
    if record is not None:
        client = mlflow_client(record.tracking_uri)
        record.attempts += 1
        client.update_run(record.mlflow_run_id, status=RunState.RUNNING.value)
        client.set_tag(record.mlflow_run_id, "sciscale.attempts", str(record.attempts))
        client.log_text(record.mlflow_run_id, spec_yaml, f"spec-attempt-{record.attempts}.yaml")
        log_datasets(client, record.mlflow_run_id, spec)
        write_record(record, storage)
        return record, True
    uri = tracking_uri(spec)
    client = mlflow_client(uri)
    experiment_id = _experiment(client, spec.tracking.experiment, runs_root, uri)
    tags = {"sciscale.run_id": run_id, "sciscale.family": spec.model.family, **spec.tracking.tags}
    run = client.create_run(experiment_id, run_name=run_id, tags=tags)
    record = RunRecord(run_id=run_id, runs_root=runs_root, tracking_uri=uri, experiment=spec.tracking.experiment,
                       mlflow_run_id=run.info.run_id)
    _log_params(client, record.mlflow_run_id, spec)
    client.log_text(record.mlflow_run_id, spec_yaml, "spec.yaml")
    log_datasets(client, record.mlflow_run_id, spec)
    write_record(record, storage, spec_yaml)
    return record, False


def _experiment(client, name: str, runs_root: str, uri: str) -> str:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if uri.startswith("sqlite:") and "://" not in runs_root:
        location = Path(runs_root, "mlartifacts", name).as_uri()  # not ./mlartifacts of whatever cwd
    return client.create_experiment(name, artifact_location=location)


def _log_params(client, mlflow_run_id: str, spec: JobSpec) -> None:
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in flatten(spec.model_dump(mode="json")).items()]
    for i in range(0, len(params), 100):
        client.log_batch(mlflow_run_id, params=params[i:i + 100])


def finish_run(record: RunRecord, state: RunState, reason: str | None = None, error: dict | None = None) -> None:
    """Set the MLflow run's final status; ``error`` (type, message, rank, step, logs) goes into the tag
    ``sciscale.error`` that `sciscale status` shows."""
    client = mlflow_client(record.tracking_uri)
    if reason:
        client.set_tag(record.mlflow_run_id, "sciscale.end_reason", reason[:5000])
    if error:
        client.set_tag(record.mlflow_run_id, "sciscale.error", json.dumps(error)[:5000])
    client.set_terminated(record.mlflow_run_id, status=state.value)


def ui_url(record: RunRecord) -> str:
    """Where to look at the run: the server's page, or how to serve the embedded store."""
    experiment = mlflow_client(record.tracking_uri).get_run(record.mlflow_run_id).info.experiment_id
    page = f"#/experiments/{experiment}/runs/{record.mlflow_run_id}"
    if record.tracking_uri.startswith("http"):
        return f"{record.tracking_uri.rstrip('/')}/{page}"
    return f"http://127.0.0.1:5000/{page} (serve it with `sciscale ui --runs-root {record.runs_root}`)"


def failure_lines(run_id: str, e: dict) -> list[str]:
    """The one screen that says why a run failed (the launch's last words and `sciscale status`)."""
    where = f" on rank {e['rank']} at step {e['step']}" if e.get("rank") is not None else ""
    message = e["message"].strip().splitlines() or [""]
    lines = [f"run {run_id} FAILED{where}: {e['type']}: {message[0]}", *[f"  {m}" for m in message[1:12]]]
    if e.get("deterministic"):
        lines.append("  not retried: the error is deterministic (a restart would raise it again)")
    logs = [x for x in (e.get("log"), e.get("driver_log")) if x]
    if logs:
        lines.append("  full log: " + "  ".join(logs))
    return lines
