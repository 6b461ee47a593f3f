"""MLflow model URIs -> ModelSource: ``runs:/RUN/PATH``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``models:/m-<model_id>`` (trainers/sources.py describes the two layouts read here). Which model a URI names is
orchestrator/registry.py's (its errors too); here: the cached download, reading the sciscale layout, the
run-artifact layout of runs logged before LoggedModels, and MLflow's other errors as one-screen ValueErrors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from orchestrator import registry
from trainers.sources import FINAL_MODEL, FORMAT, SCISCALE_JSON, WEIGHTS, ModelSource

_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND")


def from_mlflow_uri(uri: str, tracking_uri: str, cache: Path) -> ModelSource:
    """The model an MLflow URI names; artifacts are downloaded once into ``cache``/mlflow."""
    with _reaching(uri, tracking_uri), _downloads_into(cache):
        if uri.startswith("runs:/"):
            return _from_runs_uri(uri, tracking_uri)
        return _from_models_uri(uri, tracking_uri)


def final_model(record, cache: Path) -> tuple[str, int | None, dict] | None:
    """(weights, step, mlflow ids) of the final model a sciscale run logged, or None if it logged none."""
    tracking = record.tracking_uri
    run_id = record.mlflow_run_id
    ids = {"tracking_uri": tracking, "mlflow_run_id": run_id}
    with _reaching(f"run {record.run_id}'s final model", tracking), _downloads_into(cache):
        try:
            base, model_id = _run_model(_client(tracking), f"runs:/{run_id}", run_id, "")
        except registry.SourceError:  # no such MLflow run: the record outlived it, only checkpoints are left
            return None
        found = _sciscale_model(base, tracking)
        if found is not None:
            weights, meta = found
            return weights, meta.get("step"), _with_id(ids, model_id)
        old = _run_artifacts(run_id, "", tracking)
        return (old[0], None, ids) if old is not None else None


def _from_runs_uri(uri: str, tracking: str) -> ModelSource:
    run_id, _, path = uri[len("runs:/"):].partition("/")
    path = path.strip("/")
    ids = {"tracking_uri": tracking, "mlflow_run_id": run_id}
    base, model_id = _run_model(_client(tracking), uri, run_id, path)
    found = _sciscale_model(base, tracking)
    if found is not None:
        weights, meta = found
        return _from_meta(meta, weights, uri, _with_id(ids, model_id))
    old = _run_artifacts(run_id, path, tracking)
    if old is not None:
        return ModelSource(_spec_file(old[1], uri), old[0], uri, None, ids, "mlflow")
    raise _not_sciscale(uri, [f"{base}/{SCISCALE_JSON}", f"runs:/{run_id}/{WEIGHTS} with runs:/{run_id}/spec.yaml"])


def _run_model(client, uri: str, run_id: str, path: str) -> tuple[str, str | None]:
    """(artifact location, model id) of the LoggedModel ``uri`` (runs:/RUN_ID/PATH) names, else (runs:/RUN_ID/
    PATH, None): a run that logged no such model may hold its files as run artifacts (a ``model`` folder when PATH
    is empty). The LoggedModel's own location is read directly: MLflow 3.17 resolves runs:/RUN/NAME through a
    client on the default tracking URI, not the one given."""
    try:
        model = registry.logged_model(client, uri)
    except registry.NoRunModelError:
        return f"runs:/{run_id}/{path or FINAL_MODEL}", None
    return model.artifact_location.rstrip("/"), model.model_id


def _from_models_uri(uri: str, tracking: str) -> ModelSource:
    client = _client(tracking)
    version = registry.model_version(client, uri)
    if version is None:  # models:/m-...
        model = registry.logged_model(client, uri)
        location, run_id, model_id, label = model.artifact_location, model.source_run_id, model.model_id, uri
    else:
        location = client.get_model_version_download_uri(version.name, version.version)
        run_id, model_id = version.run_id, registry.version_model_id(version)
        label = uri if uri.rstrip("/").endswith(f"/{version.version}") else f"{uri} (version {version.version})"
    ids = {"tracking_uri": tracking, "mlflow_run_id": run_id, "model_id": model_id}
    found = _sciscale_model(location.rstrip("/"), tracking)
    if found is not None:
        weights, meta = found
        return _from_meta(meta, weights, label, ids)
    old = _run_artifacts(run_id, "", tracking) if run_id else None
    if old is not None:  # a version registered from a run's `model` folder before models carried sciscale.json
        return ModelSource(_spec_file(old[1], uri), old[0], label, None, ids, "mlflow")
    looked = [f"{location}/{SCISCALE_JSON}"] + ([f"runs:/{run_id}/{WEIGHTS}"] if run_id else [])
    raise _not_sciscale(uri, looked)


def _with_id(ids: dict, model_id: str | None) -> dict:
    return {**ids, "model_id": model_id} if model_id else ids


def _sciscale_model(base: str, tracking: str) -> tuple[str, dict] | None:
    """(local weights path, sciscale.json) of a model in the current layout at ``base``, or None."""
    meta_path = _download(f"{base}/{SCISCALE_JSON}", tracking)
    if meta_path is None:
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("spec"), dict):
        raise ValueError(f"{base}/{SCISCALE_JSON}: format {meta.get('format') if isinstance(meta, dict) else meta!r} "
                         f"with a spec expected as format {FORMAT}. Hint: a newer sciscale wrote it; upgrade")
    weights = _download(f"{base}/{WEIGHTS}", tracking)
    if weights is None:
        raise ValueError(f"{base} holds {SCISCALE_JSON} but no {WEIGHTS}: the model was logged incompletely. "
                         "Hint: load the run's latest checkpoint instead (SOURCE = its run id or checkpoint dir)")
    return weights, meta


def _run_artifacts(run_id: str, path: str, tracking: str) -> tuple[str, str] | None:
    """(weights, spec.yaml) a run logged as run artifacts (the layout before models carried sciscale.json)."""
    if path not in ("", FINAL_MODEL, WEIGHTS):
        name = path if path.endswith(".safetensors") else f"{path}/{WEIGHTS}"
    else:
        name = WEIGHTS
    weights = _download(f"runs:/{run_id}/{name}", tracking)
    spec = _download(f"runs:/{run_id}/spec.yaml", tracking) if weights else None
    return (weights, spec) if weights and spec else None


def _from_meta(meta: dict, weights: str, label: str, ids: dict) -> ModelSource:
    from orchestrator.specload import validate_recorded

    spec = validate_recorded(meta["spec"], f"{label} ({SCISCALE_JSON})")
    ids = {**ids, "mlflow_run_id": meta.get("mlflow_run_id") or ids.get("mlflow_run_id")}
    step = meta.get("step")
    return ModelSource(spec, weights, label, int(step) if step is not None else None, ids, "mlflow")


def _spec_file(path: str, label: str):
    import yaml

    from orchestrator.specload import validate_recorded

    with open(path) as f:
        return validate_recorded(yaml.safe_load(f), f"{label} (spec.yaml)")


_CACHE: list[Path] = []


@contextlib.contextmanager
def _downloads_into(cache: Path):
    _CACHE.append(cache)
    try:
        yield
    finally:
        _CACHE.pop()


def _download(uri: str, tracking: str) -> str | None:
    """Local path of one artifact, or None when it does not exist. Logged artifacts do not change, so each is
    downloaded once into the cache (MLflow's own default is a fresh temporary copy per call, never removed)."""
    import mlflow
    import xxhash
    from mlflow.exceptions import MlflowException

    root = _CACHE[-1] / "mlflow"
    target = root / xxhash.xxh3_64(f"{tracking}|{uri}".encode()).hexdigest()
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if (target / name).exists():
        return str(target / name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=root)
    try:
        with _quiet_downloads():
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking, dst_path=tmp)
    except MlflowException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.error_code in _MISSING or "No such file" in str(exc):
            return None
        raise
    except (FileNotFoundError, NotADirectoryError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    rel = os.path.relpath(local, tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process put it there first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target / rel)


@contextlib.contextmanager
def _quiet_downloads():
    """No progress bar per small file (a user who set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR keeps theirs)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _client(tracking: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)


def _not_sciscale(uri: str, looked: list[str]) -> ValueError:
    return ValueError(f"{uri} holds no sciscale model\n  looked for: {'; '.join(looked)}\n  expected: a model "
                      f"logged by sciscale ({SCISCALE_JSON} and {WEIGHTS} in its artifacts) or a sciscale run's "
                      f"{WEIGHTS} and spec.yaml artifacts\n  hint: an MLflow model from elsewhere has no spec to "
                      "rebuild it from; point at the run or model sciscale logged")


@contextlib.contextmanager
def _reaching(what: str, tracking: str):
    """MLflow errors other than 'not found' (an unreachable server, a refused request) as one-screen errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{what}: MLflow at {tracking} answered {exc.error_code}: {first}. Hint: check "
                         "MLFLOW_TRACKING_URI (or the run record's tracking_uri) and that the server is up; a "
                         "checkpoint directory loads without MLflow") from None
