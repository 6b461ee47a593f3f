"""Where a model comes from: a sciscale run id, a checkpoint directory or an MLflow model URI.

:func:`resolve` turns SOURCE into a :class:`ModelSource`: the resolved job spec, a local fp32
``weights.safetensors`` and what is known of its MLflow identity; :func:`trainers.inference.load_model` builds
the model from it. Torch-free except where a checkpoint is consolidated.

- A run id is looked up in the runs root as `sciscale status` does. Its final model is the MLflow model the run
  logged under the name ``model`` (``sciscale.json`` beside ``weights.safetensors``) or, for runs logged before
  that, its ``weights.safetensors`` run artifact; a run without either gives its latest committed checkpoint
  (the one Ray Train's ``checkpoint_manager_snapshot.json`` names). The spec is RUNS_ROOT/RUN_ID/sciscale/spec.yaml.
- A checkpoint directory (RUNS_ROOT/RUN_ID/checkpoint_*) is verified against its commit files and consolidated
  with DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` into a cached weights file; the spec is
  ../sciscale/spec.yaml.
- ``runs:/RUN/PATH``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-<model_id>``: a model whose
  artifacts hold ``sciscale.json`` ({"format": 1, "spec", "step", "run_id", "mlflow_run_id", "family"}) and
  ``weights.safetensors``, or a run that logged ``weights.safetensors`` and ``spec.yaml`` as run artifacts.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from orchestrator.runs import RunRecord, absolute_root, list_runs, read_record, runs_fs

SCISCALE_JSON = "sciscale.json"
FORMAT = 1
FINAL_MODEL = "model"
"""The name a run's final model is logged under (today's ``model`` artifact folder, a LoggedModel's name)."""
WEIGHTS = "weights.safetensors"
URI_FORMS = "runs:/RUN_ID/PATH, models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-<model_id>"
DEFAULT_CACHE = Path.home() / ".cache" / "sciscale" / "models"


@dataclass(frozen=True)
class ModelSource:
    """A trained model found: everything needed to build it and load its weights."""

    spec: object
    """The resolved orchestrator.spec.JobSpec the model was trained with."""
    weights: str
    """Local path of its fp32 weights.safetensors."""
    label: str
    """A short human name, e.g. 'ns-fno-20261201 step 120 (latest checkpoint)'."""
    step: int | None = None
    """The training step of the weights, where known."""
    mlflow: dict = field(default_factory=dict)
    """tracking_uri, mlflow_run_id and model_id, where known (what an evaluation links to)."""
    kind: str = ""
    """run, checkpoint or mlflow: which kind of SOURCE named it."""


def resolve(source: str, runs_root: str = "runs", storage=None, *, tracking_uri: str | None = None,
            cache_dir: str | None = None) -> ModelSource:
    """The model SOURCE names (module docstring). ``tracking_uri`` is for MLflow URIs (default:
    MLFLOW_TRACKING_URI, else the runs root's embedded store); run ids and checkpoints use their run record's.
    ``cache_dir`` holds consolidated checkpoints and downloaded MLflow artifacts (default
    ~/.cache/sciscale/models). Bad input raises ValueError: what was given, what was looked for, what was
    expected, a hint."""
    source = str(source).strip()
    if source.startswith(("runs:/", "models:/")):
        from trainers.model_uris import from_mlflow_uri

        return from_mlflow_uri(source, _tracking_uri(tracking_uri, runs_root), _cache(cache_dir))
    root = absolute_root(runs_root)
    if _exists(f"{source.rstrip('/')}/trainer_state.json", storage):
        return from_checkpoint(source, storage, cache_dir)
    if _exists(f"{source.rstrip('/')}/sciscale/run.json", storage):  # a run directory RUNS_ROOT/RUN_ID
        root, source = _parent(source)
    record = read_record(root, source, storage) if source and "/" not in source else None
    if record is not None:  # where it was found, also when the runs root has moved since the run was created
        return from_run(replace(record, runs_root=root), storage, cache_dir)
    raise _no_source(source, root, storage)


def from_run(record: RunRecord, storage=None, cache_dir: str | None = None) -> ModelSource:
    """A run's final model, else its latest committed checkpoint."""
    from trainers.model_uris import final_model

    spec = _read_spec(f"{record.runs_root}/{record.run_id}/sciscale/spec.yaml", storage, f"run {record.run_id}")
    found = final_model(record, _cache(cache_dir))
    if found is not None:
        weights, step, mlflow = found
        return ModelSource(spec, weights, f"{record.run_id} final model", step, mlflow, "run")
    latest = latest_checkpoint(record.runs_root, record.run_id, storage)
    if latest is None:
        raise ValueError(f"run {record.run_id} (runs root {record.runs_root}) has neither a final model nor a "
                         f"committed checkpoint: looked for the MLflow model runs:/{record.mlflow_run_id}/"
                         f"{FINAL_MODEL} and its {WEIGHTS} artifact at {record.tracking_uri}, and for "
                         "checkpoint_manager_snapshot.json in the run's directory. Hint: the run stopped before "
                         "its first checkpoint (`sciscale status " + record.run_id + "` says why)")
    found_ckpt = from_checkpoint(latest, storage, cache_dir, spec=spec, record=record)
    return replace(found_ckpt, label=f"{record.run_id} step {found_ckpt.step} (latest checkpoint; no final model)",
                   kind="run")


def latest_checkpoint(runs_root: str, run_id: str, storage=None) -> str | None:
    """URL of the run's latest committed checkpoint (Ray Train's checkpoint manager snapshot names it)."""
    fs, root = runs_fs(runs_root, storage)
    try:
        with fs.open(f"{root}/{run_id}/checkpoint_manager_snapshot.json", "r") as f:
            name = (json.load(f).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (FileNotFoundError, ValueError, AttributeError):
        return None
    return f"{runs_root.rstrip('/')}/{run_id}/{name}" if name else None


def from_checkpoint(url: str, storage=None, cache_dir: str | None = None, *, spec=None,
                    record: RunRecord | None = None) -> ModelSource:
    """A checkpoint directory RUNS_ROOT/RUN_ID/checkpoint_*: consolidated to fp32 weights (cached)."""
    from data.storage import open_url

    url = absolute_root(url)  # one cache key and label whatever the current directory
    fs, path = open_url(url, storage)
    path = path.rstrip("/")
    with fs.open(f"{path}/trainer_state.json", "r") as f:
        state = json.load(f)
    run_dir, run_id = _parent(_parent(url)[0])
    if spec is None:
        spec = _read_spec(f"{run_dir}/{run_id}/sciscale/spec.yaml", storage, f"checkpoint {url}")
    record = record or read_record(run_dir, run_id, storage)
    weights = consolidated(fs, path, url, state, _cache(cache_dir))
    mlflow = {"tracking_uri": record.tracking_uri, "mlflow_run_id": record.mlflow_run_id} if record else {}
    label = f"{run_id}/{url.rsplit('/', 1)[-1]} step {state['step']}"
    return ModelSource(spec, weights, label, int(state["step"]), mlflow, "checkpoint")


def consolidated(fs, path: str, url: str, state: dict, cache_dir: Path) -> str:
    """fp32 weights.safetensors of the checkpoint at ``path``, written once into ``cache_dir`` under a key of
    its URL and commit files (which hold every file's checksum)."""
    import xxhash

    key = xxhash.xxh3_64(url.encode())
    for name in sorted(n for n in fs.ls(path, detail=False) if n.rsplit("/", 1)[-1].startswith("commit-rank")):
        key.update(fs.cat_file(name))
    out = cache_dir / "checkpoints" / key.hexdigest() / WEIGHTS
    if out.exists():
        return str(out)
    with _local_copy(fs, path) as local:
        from trainers import checkpoint

        checkpoint.verify(local)
        tensors = fp32_state_dict(local, state)
    _save_atomic(tensors, out)
    return str(out)


def fp32_state_dict(directory: str, state: dict) -> dict:
    """The full fp32 state dict of a checkpoint directory written by trainers/checkpoint.py, at any world size."""
    import torch

    tag = f"step{state['step']}"
    if int(state["zero_stage"]) == 0:
        # No optimizer shards at ZeRO 0, and DeepSpeed's consolidator fails on that (0.19.8: TypeError); the
        # model states file holds the whole module (under bf16, DeepSpeed's fp32 copy there is unnamed)
        module = torch.load(os.path.join(directory, tag, "mp_rank_00_model_states.pt"), map_location="cpu",
                            weights_only=False)["module"]
        return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    chatter = io.StringIO()  # its progress prints and bars would interleave with the caller's output
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        return get_fp32_state_dict_from_zero_checkpoint(directory, tag=tag)


def _save_atomic(tensors: dict, out: Path) -> None:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    # clones: the consolidated tensors are views of DeepSpeed's flat buffers, which safetensors refuses
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out)


@contextlib.contextmanager
def _local_copy(fs, path: str):
    """The checkpoint directory as a local path: itself when local, else a downloaded temporary copy."""
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sciscale-ckpt-") as tmp:
        for remote in fs.find(path):
            local = os.path.join(tmp, remote[len(path):].lstrip("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(remote, local)
        yield tmp


def _read_spec(url: str, storage, what: str):
    import yaml

    from data.storage import open_url
    from orchestrator.specload import validate_recorded

    fs, path = open_url(url, storage)
    if not fs.exists(path):
        raise ValueError(f"{what}: no resolved spec at {url}; expected the spec.yaml `sciscale launch` writes "
                         "beside every run. Hint: a checkpoint must stay inside its run directory "
                         "RUNS_ROOT/RUN_ID/ (its spec is ../sciscale/spec.yaml)")
    with fs.open(path, "r") as f:
        return validate_recorded(yaml.safe_load(f), url)


def _exists(url: str, storage) -> bool:
    from data.storage import open_url

    try:
        fs, path = open_url(url, storage)
        return fs.exists(path)
    except (ValueError, OSError):
        return False


def _parent(url: str) -> tuple[str, str]:
    """(parent, name) of a local path (made absolute) or URL: RUNS_ROOT/RUN_ID -> (RUNS_ROOT, RUN_ID)."""
    parent, _, name = absolute_root(url.rstrip("/")).rpartition("/")
    return parent, name


def _cache(cache_dir: str | None) -> Path:
    return Path(cache_dir) if cache_dir else DEFAULT_CACHE


def _tracking_uri(explicit: str | None, runs_root: str) -> str:
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = absolute_root(runs_root)
    if "://" not in root and os.path.exists(f"{root}/mlflow.db"):
        return f"sqlite:///{root}/mlflow.db"
    raise ValueError(f"an MLflow model URI needs a tracking server: MLFLOW_TRACKING_URI is not set and the runs "
                     f"root {root} has no embedded store (mlflow.db). Hint: export MLFLOW_TRACKING_URI=http://HOST:5000 "
                     "or pass --runs-root of the runs that logged the model")


def _no_source(source: str, root: str, storage) -> ValueError:
    try:
        runs = [r.run_id for r in list_runs(root, storage)]
    except (OSError, ValueError):
        runs = []
    close = difflib.get_close_matches(source, runs, n=1, cutoff=0.6)
    hint = (f"did you mean {close[0]!r}?" if close else
            f"runs in {root}: {', '.join(runs[:8])}{' ...' if len(runs) > 8 else ''}" if runs else
            f"the runs root {root} holds no runs; pass --runs-root of the runs you mean")
    return ValueError(f"SOURCE {source!r} names no run, checkpoint or model\n"
                      f"  looked for: a run record {root}/{source}/sciscale/run.json and a checkpoint directory "
                      f"{source}/trainer_state.json\n"
                      f"  expected: a run id (`sciscale ls` lists them), a checkpoint directory "
                      f"RUNS_ROOT/RUN_ID/checkpoint_*, or an MLflow model URI ({URI_FORMS})\n"
                      f"  hint: {hint}")
