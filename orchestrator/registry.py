"""`sciscale register` and `sciscale ls --models`: sciscale models in MLflow's model registry (torch-free).

A sciscale model is an MLflow 3 LoggedModel whose artifacts hold ``MLmodel`` and the mlflow.pytorch files,
``weights.safetensors`` and ``sciscale.json`` (docs/contracts.md). A SOURCE names one: a sciscale run id in
the runs root (its final model), an MLflow model id (``m-...``) or a model URI (``runs:/RUN_ID/model``,
``models:/m-...``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``). Registering it makes a model version
(aliases name versions; stages are deprecated); ``train.init_from: models:/NAME@ALIAS`` then fine-tunes from
its weights, pinned to the model id the alias named when the run was launched.

This module is the one place that maps a SOURCE to a LoggedModel (:func:`logged_model`) or a registered version
(:func:`model_version`), with the errors for each way it can name nothing; trainers/model_uris.py (`sciscale
eval`, inference) reads through it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Any

FORMAT = 1
INFO_FILE = "sciscale.json"
WEIGHTS_FILE = "weights.safetensors"
FINAL_NAME = "model"  # MLflow resolves runs:/RUN/model to the run's LoggedModel of this name
KIND_TAG, STEP_TAG, RUN_TAG = "sciscale.kind", "sciscale.step", "sciscale.run_id"
SOURCES = ("a sciscale run id in the runs root (`sciscale ls`), an MLflow model id (m-...), or a model URI "
           "(runs:/MLFLOW_RUN_ID/model, models:/m-..., models:/NAME@ALIAS, models:/NAME/VERSION)")
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
_SHOWN_SCORES = 8


class SourceError(ValueError):
    """A SOURCE (or init_from) that names no sciscale model: what was wrong, the value, what was expected, and
    what to do; the CLI prints it on one screen and exits 2."""

    def __init__(self, what: str, received: Any, expected: str, hint: str):
        self.what, self.received, self.expected, self.hint = what, received, expected, hint
        super().__init__(f"{what}\n  received: {received}\n  expected: {expected}\n  hint: {hint}")


class NoRunModelError(SourceError):
    """A runs:/ URI of an MLflow run that logged no LoggedModel of that name: runs made before sciscale logged
    models keep their weights as run artifacts, which readers fall back to."""


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in _NOT_FOUND


def _or_none(call, *args):
    """``call(*args)``, or None when MLflow answers that what it names does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return call(*args)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        return None


# ------------------------------------------------------------------------------------------------ resolve
def logged_model(client, source: str, runs_root: str | None = None, field: str = "SOURCE"):
    """The LoggedModel a SOURCE names (see the module docstring); SourceError when it names none
    (NoRunModelError when it is a runs:/ URI of a run that logged no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        if source.startswith("models:/"):
            version = model_version(client, source, field)
            if version is None:
                return _get_model(client, source[len("models:/"):].strip("/"), source, field)
            model_id = version_model_id(version)
            if model_id is None:
                raise _no_sciscale(source, f"version {version.version} of {version.name} was registered from "
                                           f"{version.source}, not from an MLflow LoggedModel", field)
            return _get_model(client, model_id, source, field)
        if source.startswith("runs:/"):
            run_id, _, path = source[len("runs:/"):].partition("/")
            return _from_run(client, run_id, path.strip("/"), source, field)
        if source.startswith("m-") and "/" not in source:
            return _get_model(client, source, source, field)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        raise SourceError(f"{field} {source!r} names no MLflow model at {client.tracking_uri}", source, SOURCES,
                          f"MLflow says: {exc.message.splitlines()[0]}") from None
    raise SourceError(f"{field} {source!r} names no sciscale run in runs root {runs_root} and no MLflow model",
                      source, SOURCES, "`sciscale ls` lists runs, `sciscale ls --models` registered models")


def model_version(client, uri: str, field: str = "SOURCE"):
    """The registered version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names, None for
    ``models:/m-...`` (a model id); SourceError listing the aliases, versions or names there are."""
    path = uri[len("models:/"):].strip("/")
    if path.startswith("m-") and "/" not in path and "@" not in path:
        return None
    name, _, alias = path.partition("@")
    if not alias:
        name, _, number = path.partition("/")
        if not number.isdigit():
            raise SourceError(f"{field} {uri!r} is not a model URI sciscale reads", uri,
                              "models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-... (model ids start with m-; "
                              "stages are deprecated)", "`sciscale ls --models` lists registered models with their "
                              "versions and aliases")
    version = (_or_none(client.get_model_version_by_alias, name, alias) if alias else
               _or_none(client.get_model_version, name, number))
    if version is not None:
        return version
    registered = _registered_model(client, name, uri, field)
    if alias:
        shown = ", ".join(f"@{a} (version {v})" for a, v in sorted(registered.aliases.items())) or "none"
        raise SourceError(f"{field} {uri!r}: registered model {name!r} has no alias {alias!r} at "
                          f"{client.tracking_uri}", uri, f"one of its aliases: {shown}", f"`sciscale register "
                          f"SOURCE --name {name} --alias {alias}` sets it, or use models:/{name}/VERSION")
    have = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    raise SourceError(f"{field} {uri!r} names no MLflow model: version {number} of registered model {name!r} was "
                      f"not found at {client.tracking_uri}", uri, f"one of its versions: "
                      f"{', '.join(map(str, have)) or 'none'}", f"models:/{name}@ALIAS names a version by alias; "
                      "`sciscale ls --models` lists them")


def _registered_model(client, name: str, uri: str, field: str):
    """The registered model ``name``; SourceError suggesting a close name (or listing them) when none."""
    import difflib

    registered = _or_none(client.get_registered_model, name)
    if registered is not None:
        return registered
    names = [m.name for m in client.search_registered_models(max_results=200)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = (f"did you mean {close[0]!r}? (`sciscale ls --models` lists them)" if close else
            f"registered models: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}" if names else
            "there are none; `sciscale register RUN_ID --name NAME --alias ALIAS` makes one")
    raise SourceError(f"{field} {uri!r}: there is no registered model {name!r} at {client.tracking_uri}", uri,
                      "the name of a registered model", hint)


def version_model_id(version) -> str | None:
    """The model id of the LoggedModel a registered version was made from, None if it was registered from
    elsewhere (MLflow 3.17's sqlite registry leaves model_id empty; the version's source models:/m-... names it)."""
    source = version.source or ""
    if source.startswith("models:/m-") and "/" not in source[len("models:/"):]:
        return source[len("models:/"):]
    return getattr(version, "model_id", None) or None


def _get_model(client, model_id: str, source: str, field: str):
    model = _or_none(client.get_logged_model, model_id)
    if model is not None:
        return model
    raise SourceError(f"{field} {source!r} names no MLflow model: model id {model_id!r} was not found at "
                      f"{client.tracking_uri}", source, "the id of a LoggedModel in this tracking store (model ids "
                      "start with m-)", "the run page's Logged models lists its models; `sciscale ls --models` "
                      "the registered ones")


def _from_run(client, mlflow_run_id: str, path: str, source: str, field: str):
    name = path.split("/", 1)[0]
    if name in ("", FINAL_NAME, WEIGHTS_FILE):
        return final_model(client, mlflow_run_id, field, source)
    found = _newest(client, _run(client, mlflow_run_id, source, field), name)
    if found is None:
        raise NoRunModelError(f"{field} {source!r}: MLflow run {mlflow_run_id} logged no model named {name!r}",
                              source, f"runs:/{mlflow_run_id}/{FINAL_NAME} or runs:/{mlflow_run_id}/checkpoint-STEP",
                              "the run page's Logged models lists its models")
    return found


def final_model(client, mlflow_run_id: str, field: str = "SOURCE", source: str | None = None):
    """The run's latest final sciscale model (its LoggedModel named ``model``); NoRunModelError when it has
    none (still training, or failed), SourceError when there is no such run."""
    run = _run(client, mlflow_run_id, source or mlflow_run_id, field)
    found = _newest(client, run, FINAL_NAME)
    if found is None:
        raise NoRunModelError(f"{field} {source or mlflow_run_id!r}: the run has no final model (MLflow run "
                              f"{mlflow_run_id} is {run.info.status})", source or mlflow_run_id,
                              "a run that finished training (its final model is logged at the end)",
                              "wait until it finishes, or name a checkpoint model (runs:/MLFLOW_RUN_ID/"
                              "checkpoint-STEP, tracking.log_checkpoints_as_models)")
    return found


def _run(client, mlflow_run_id: str, source: str, field: str):
    run = _or_none(client.get_run, mlflow_run_id) if mlflow_run_id else None
    if run is not None:
        return run
    raise SourceError(f"{field} {source!r}: no MLflow run {mlflow_run_id!r} at {client.tracking_uri}", source,
                      "runs:/MLFLOW_RUN_ID/model or runs:/MLFLOW_RUN_ID/checkpoint-STEP (MLflow's run id, as in "
                      "the UI)", "check the run id and the tracking URI (MLFLOW_TRACKING_URI, --tracking-uri)")


def _newest(client, run, name: str):
    """The run's newest LoggedModel called ``name`` (MLflow resolves runs:/RUN/NAME the same way), or None."""
    found = client.search_logged_models([run.info.experiment_id], filter_string=(
        f"source_run_id = '{run.info.run_id}' AND name = '{name}'"), order_by=[_NEWEST], max_results=1)
    return found[0] if found else None


_NEWEST = {"field_name": "creation_time", "ascending": False}


def _no_sciscale(source: str, why: str, field: str) -> SourceError:
    return SourceError(f"{field} {source!r} holds no sciscale model: {why}", source,
                       f"an MLflow model whose artifacts hold {INFO_FILE} and {WEIGHTS_FILE} (every model a "
                       "sciscale run logs)", "point at a sciscale run or its model (`sciscale ls`, the run page's "
                       "Logged models)")


def model_files(model, tracking_uri: str) -> set[str]:
    from mlflow.artifacts import list_artifacts

    return {os.path.basename(a.path) for a in list_artifacts(artifact_uri=model.artifact_location,
                                                            tracking_uri=tracking_uri)}


def read_info(model, tracking_uri: str, source: str, field: str = "SOURCE") -> dict:
    """The model's sciscale.json; ValueError when the model is not a sciscale model."""
    if INFO_FILE not in model_files(model, tracking_uri):
        raise _no_sciscale(source, f"model {model.model_id} has no {INFO_FILE}", field)
    with open(download(model, INFO_FILE, tracking_uri)) as f:
        return json.load(f)


def download(model, name: str, tracking_uri: str | None) -> str:
    """A local copy of one file of the model's artifacts."""
    from mlflow.artifacts import download_artifacts

    return download_artifacts(artifact_uri=f"{model.artifact_location}/{name}", tracking_uri=tracking_uri)


def fetch_weights(uri: str, tracking_uri: str | None) -> str:
    """A local weights.safetensors for a ``models:/`` or ``runs:/`` URI (train.init_from, on the workers):
    the named model's weights; a runs:/ path of a run that logged no sciscale model is downloaded as it is
    (runs made before sciscale logged models kept weights.safetensors among the run's artifacts)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        model = logged_model(client, uri, field="train.init_from")
    except NoRunModelError:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
    return download(model, WEIGHTS_FILE, tracking_uri)


def pin_init_from(spec, mlflow_run_id: str, tracking_uri: str) -> str | None:
    """For ``train.init_from: models:/NAME@ALIAS`` (or /VERSION): the model id it names now, recorded as the
    run's model input, so every worker and restart loads exactly those weights; None for other sources."""
    uri = spec.train.init_from
    if not uri or not uri.startswith("models:/"):
        return None
    import mlflow
    from mlflow.entities import LoggedModelInput

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    model = logged_model(client, uri, field="train.init_from")
    if WEIGHTS_FILE not in model_files(model, tracking_uri):
        raise _no_sciscale(uri, f"model {model.model_id} has no {WEIGHTS_FILE}", "train.init_from")
    client.log_inputs(mlflow_run_id, models=[LoggedModelInput(model.model_id)])
    client.set_tag(mlflow_run_id, "sciscale.init_from", f"{uri} = models:/{model.model_id}")
    return f"models:/{model.model_id}"


def check_init_from(spec, tracking_uri: str) -> None:
    """Preflight: a ``models:/`` init_from names a model with weights (ValueError otherwise)."""
    uri = spec.train.init_from
    if uri and uri.startswith("models:/"):
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        model = logged_model(client, uri, field="train.init_from")
        if WEIGHTS_FILE not in model_files(model, tracking_uri):
            raise _no_sciscale(uri, f"model {model.model_id} has no {WEIGHTS_FILE}", "train.init_from")


# ------------------------------------------------------------------------------------------------ register
def register_model(client, model, name: str, alias: str | None = None):
    """A model version of ``name`` for the LoggedModel (the existing one if this model is already a version
    of it), and ``alias`` pointing at it. Returns the ModelVersion."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise _refused("--name", name, exc) from None
    source = f"models:/{model.model_id}"
    same = [v for v in client.search_model_versions(f"name = '{name}'") if v.source == source]
    if same:
        version = same[0]
    else:
        with _process_tracking_uri(client.tracking_uri):  # MLflow's registry store finds the LoggedModel with it
            version = client.create_model_version(
                name, source, run_id=model.source_run_id, model_id=model.model_id,
                tags={k: v for k, v in model.tags.items() if k in (RUN_TAG, STEP_TAG, KIND_TAG)})
        _record_version(client, model, name, version.version)
    if alias:
        try:
            client.set_registered_model_alias(name, alias, version.version)
        except MlflowException as exc:
            raise _refused("--alias", alias, exc) from None
    return version


def _record_version(client, model, name: str, version) -> None:
    """The model's tag mlflow.modelVersions lists its registered versions (as mlflow.register_model keeps it),
    which is how the UI shows a LoggedModel's registered models."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    current = client.get_logged_model(model.model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    versions = json.loads(current) if current else []
    client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        versions + [{"name": name, "version": version}])})


@contextlib.contextmanager
def _process_tracking_uri(uri: str):
    """The process-wide tracking URI set to ``uri`` for a call, then put back, MLFLOW_TRACKING_URI included
    (MLflow's own helper unsets the variable when only the environment had set it)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def _refused(flag: str, value: str, exc) -> SourceError:
    return SourceError(f"{flag} {value!r} was refused by MLflow", value, "a registered-model name or alias MLflow "
                       "accepts (aliases: not 'latest', not v<number>)", f"MLflow says: {exc.message.splitlines()[0]}")


def tracking_uri(runs_root: str, explicit: str | None = None) -> str:
    """Where the registry is: --tracking-uri, else MLFLOW_TRACKING_URI, else the one tracking store of the
    runs in the runs root, else the runs root's embedded store."""
    from orchestrator.runs import absolute_root, list_runs

    if explicit or os.environ.get("MLFLOW_TRACKING_URI"):
        return explicit or os.environ["MLFLOW_TRACKING_URI"]
    root = absolute_root(runs_root)
    uris = sorted({r.tracking_uri for r in list_runs(root)})
    if len(uris) > 1:
        raise SourceError(f"the runs in {root} use {len(uris)} MLflow tracking stores", ", ".join(uris),
                          "one tracking store", "pass --tracking-uri (or export MLFLOW_TRACKING_URI)")
    if uris:
        return uris[0]
    if "://" in root or not os.path.exists(f"{root}/mlflow.db"):
        raise SourceError(f"no MLflow tracking store found for runs root {root}", runs_root,
                          "a runs root with runs, or a tracking URI", "pass --runs-root, --tracking-uri, or "
                          "export MLFLOW_TRACKING_URI")
    return f"sqlite:///{root}/mlflow.db"


def resolve_source(source: str, runs_root: str, explicit_uri: str | None = None):
    """(client, LoggedModel) for a SOURCE: a sciscale run id in the runs root first (its record names its
    tracking store), else an MLflow model id or URI in the registry's store."""
    import mlflow

    from orchestrator.runs import absolute_root, read_record

    root = absolute_root(runs_root)
    record = read_record(root, source) if "/" not in source and ":" not in source else None
    if record is not None:
        client = mlflow.MlflowClient(tracking_uri=explicit_uri or record.tracking_uri)
        return client, final_model(client, record.mlflow_run_id, source=source)
    if not source.startswith(("models:/", "runs:/", "m-")):
        raise SourceError(f"SOURCE {source!r} names no sciscale run in runs root {root} and no MLflow model",
                          source, SOURCES, "`sciscale ls --runs-root R` lists runs, `sciscale ls --models` "
                          "registered models")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(runs_root, explicit_uri))
    return client, logged_model(client, source, root)


def handle_register(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one screen, no download bars
    client, model = resolve_source(args.source, args.runs_root, args.tracking_uri)
    info = read_info(model, client.tracking_uri, args.source)
    version = register_model(client, model, args.name, args.alias)
    alias = f", alias @{args.alias}" if args.alias else ""
    print(f"registered {model.model_id} (run {info['run_id']}, step {info['step']}, {info['family']}) as "
          f"{args.name} version {version.version}{alias}")
    print(f"fine-tune from it: train.init_from: models:/{args.name}" + (f"@{args.alias}" if args.alias else
                                                                        f"/{version.version}"))
    return 0


def handle_ls_models(args: argparse.Namespace) -> int:
    """`sciscale ls --models`: registered models, their versions, aliases and eval scores."""
    import mlflow

    uri = tracking_uri(args.runs_root, getattr(args, "tracking_uri", None))
    client = mlflow.MlflowClient(tracking_uri=uri)
    registered = list(client.search_registered_models(order_by=["name ASC"]))
    if not registered:
        print(f"no registered models at {uri} (`sciscale register RUN_ID --name NAME` makes one)")
    for reg in registered:
        print(reg.name)
        by_version: dict[str, list[str]] = {}
        for alias, v in reg.aliases.items():
            by_version.setdefault(str(v), []).append(f"@{alias}")
        versions = sorted(client.search_model_versions(f"name = '{reg.name}'"), key=lambda v: -int(v.version))
        for v in versions:
            print("  " + version_line(client, v, by_version.get(str(v.version), [])))
    return 0


def version_line(client, version, aliases: list[str]) -> str:
    """``v2 @champion  m-...  run RUN step 120  eval/x=0.1 ...``: one registered version."""
    line = f"v{version.version:<3} {' '.join(sorted(aliases)) or '-':<12} {version.source.removeprefix('models:/')}"
    model_id = version_model_id(version)
    if model_id is None:
        return line
    model = client.get_logged_model(model_id)
    line += f"  run {model.tags.get(RUN_TAG, model.source_run_id)} step {model.tags.get(STEP_TAG, '?')}"
    return line + "".join(f"  {s}" for s in scores(model.metrics or []))


def scores(metrics: list) -> list[str]:
    """The model's eval scores (metrics under eval/), latest point per key and dataset, sorted by key."""
    latest: dict[tuple, Any] = {}
    for m in metrics:
        if m.key.startswith("eval/"):
            key = (m.key, m.dataset_name)
            if key not in latest or (m.step, m.timestamp) >= (latest[key].step, latest[key].timestamp):
                latest[key] = m
    shown = [f"{k}={m.value:.4g}" + (f" ({d})" if d else "") for (k, d), m in sorted(latest.items(),
                                                                                    key=lambda i: (i[0][0], i[0][1] or ""))]
    if len(shown) > _SHOWN_SCORES:
        shown = shown[:_SHOWN_SCORES] + [f"(+{len(shown) - _SHOWN_SCORES} more eval scores on the model's page)"]
    return shown


def register(subparsers: Any) -> None:
    """Add ``register`` to the ``sciscale`` argument parser."""
    p = subparsers.add_parser("register", help="register a run's (or any sciscale) model in MLflow's model "
                              "registry, optionally under an alias", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help=f"what to register: {SOURCES}")
    p.add_argument("--name", required=True, help="registered model name (created if new)")
    p.add_argument("--alias", help="alias to point at this version, e.g. champion (moved if it exists)")
    p.add_argument("--runs-root", default="runs", help="runs root a run id is looked up in (default: runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking store (default: the run's, MLFLOW_TRACKING_URI, or "
                   "the runs root's)")
    p.set_defaults(func=handle_register)
