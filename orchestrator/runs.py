"""Run identity and lifecycle: the run record in the runs root and the one MLflow run per sciscale run.

State lives in two places only: ``RUNS_ROOT/RUN_ID/`` (Ray Train's checkpoints, plus ``sciscale/run.json``
and ``sciscale/spec.yaml``) and the MLflow run named in run.json. Relaunching a run id reads both back.
"""

from __future__ import annotations

import enum
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def new_run_id(spec: JobSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def runs_fs(runs_root: str, endpoint_url: str | None = None):
    """(fsspec filesystem, root path) for a runs root (local path, file:// or s3://)."""
    import fsspec

    if runs_root.startswith("s3://"):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
        fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint} if endpoint else {})
        return fs, runs_root[len("s3://"):].rstrip("/")
    local = Path(runs_root[len("file://"):] if runs_root.startswith("file://") else runs_root).resolve()
    return fsspec.filesystem("file"), str(local)


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


def read_record(runs_root: str, run_id: str, endpoint_url: str | None = None) -> RunRecord | None:
    fs, root = runs_fs(runs_root, endpoint_url)
    path = f"{root}/{record_path(runs_root, run_id)}"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return RunRecord(**json.load(f))


def write_record(record: RunRecord, endpoint_url: str | None = None, spec_yaml: str | None = None) -> None:
    fs, root = runs_fs(record.runs_root, endpoint_url)
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


def list_runs(runs_root: str, endpoint_url: str | None = None) -> list[RunRecord]:
    fs, root = runs_fs(runs_root, endpoint_url)
    if not fs.exists(root):
        return []
    records = []
    for entry in sorted(fs.ls(root, detail=False)):
        rec = read_record(runs_root, entry.rstrip("/").split("/")[-1], endpoint_url)
        if rec is not None:
            records.append(rec)
    return records


def mlflow_client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_run(spec: JobSpec, run_id: str) -> tuple[RunRecord, bool]:
    """Create the run (record + MLflow run) or reopen it; returns (record, resumed)."""
    runs_root = absolute_root(spec.storage.runs_root)
    endpoint = spec.storage.endpoint_url
    record = read_record(runs_root, run_id, endpoint)
    spec_yaml = dump_spec(spec)
    if record is not None:
        client = mlflow_client(record.tracking_uri)
        record.attempts += 1
        client.update_run(record.mlflow_run_id, status=RunState.RUNNING.value)
        client.set_tag(record.mlflow_run_id, "sciscale.attempts", str(record.attempts))
        client.log_text(record.mlflow_run_id, spec_yaml, f"spec-attempt-{record.attempts}.yaml")
        write_record(record, endpoint)
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
    write_record(record, endpoint, spec_yaml)
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


def finish_run(record: RunRecord, state: RunState, reason: str | None = None) -> None:
    client = mlflow_client(record.tracking_uri)
    if reason:
        client.set_tag(record.mlflow_run_id, "sciscale.end_reason", reason[:5000])
    client.set_terminated(record.mlflow_run_id, status=state.value)


def ui_url(record: RunRecord) -> str:
    """Where to look at the run: the server's page, or how to serve the embedded store."""
    experiment = mlflow_client(record.tracking_uri).get_run(record.mlflow_run_id).info.experiment_id
    page = f"#/experiments/{experiment}/runs/{record.mlflow_run_id}"
    if record.tracking_uri.startswith("http"):
        return f"{record.tracking_uri.rstrip('/')}/{page}"
    return f"http://127.0.0.1:5000/{page} (serve it with `sciscale ui --runs-root {record.runs_root}`)"
