"""Rank 0's sciscale models (MLflow 3 LoggedModels) and each worker's system metrics, against a real MLflow
store (sqlite) without Ray: the artifact layout of docs/contracts.md, links to run, step and datasets, and the
weights a fine-tune from the registered model reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import mlflow
import pytest
import torch

from orchestrator import lineage, registry
from orchestrator.specload import validate_spec
from trainers.logged_models import ModelLogger
from trainers.tracking import BackgroundMonitor, MetricLogger, start_system_metrics, stop_system_metrics

LAYOUT = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "data/model.pth",
          "data/pickle_module_info.txt", "weights.safetensors", "sciscale.json"}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A final model of step 4 and a checkpoint model of step 2, logged as rank 0 logs them."""
    from models import load_family

    tmp = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as env:
        env.setattr("trainers.tracking.SPOOL_DIR", tmp / "spool")
        env.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("models", artifact_location=(tmp / "artifacts").as_uri())
        run_id = client.create_run(experiment).info.run_id
        spec = validate_spec({"name": "m", "model": {"family": "pde", "arch": "fno", "size": "debug",
                                                     "in_channels": 2, "resolution": 8},
                              "data": {"train": [{"url": "/d/ns/train"}], "val": [{"url": "/d/ns/val"}],
                                       "canonical_streams": 1},
                              "train": {"global_batch_size": 1, "micro_batch_size": 1, "max_steps": 4}})
        family = load_family("pde")
        torch.manual_seed(3)
        state = {k: v.detach().float().clone() for k, v in family.build_model(spec.model).state_dict().items()}
        refs = [lineage.DatasetRef("train", "/d/ns/train", "ns/train", "d1"),
                lineage.DatasetRef("val", "/d/ns/val", "ns/val", "d2")]
        metrics = MetricLogger(uri, run_id, flush_every_s=3600)
        models = ModelLogger(metrics, spec, {"run_id": "job-1", "mlflow_run_id": run_id, "tracking_uri": uri},
                             family.build_model, refs)
        models._requirements = ["torch"]  # inferring them loads the model in a subprocess (~15 s)
        metrics.log({"train/loss": 0.5, "val/loss": 0.7}, 2)
        models.log_in_background(state, 2)
        metrics.log({"train/loss": 0.25, "val/loss": 0.375, "sys/checkpoint_block_s": 0.01}, 4)
        final = models.log(state, 4)  # waits for the checkpoint's model first
        again = models.log(state, 4)
        metrics.close()
        yield dict(uri=uri, client=client, run_id=run_id, final=final, again=again, state=state, tmp=tmp)


def _files(client, model_id: str) -> set[str]:
    """The model's artifacts (a local store): every file, the code/ folder as one entry."""
    from pathlib import Path
    from urllib.parse import urlparse

    root = Path(urlparse(client.get_logged_model(model_id).artifact_location).path)
    assert (root / "code" / "models" / "pde" / "fno.py").is_file()  # code_paths ships the models package
    return {"code" if p.relative_to(root).parts[0] == "code" else str(p.relative_to(root))
            for p in root.rglob("*") if p.is_file()}


def test_the_final_model_has_the_documented_layout(logged):
    client = logged["client"]
    files = _files(client, logged["final"])
    assert files == LAYOUT | {"code"}, files
    model = client.get_logged_model(logged["final"])
    info = json.loads(mlflow.artifacts.load_text(f"{model.artifact_location}/sciscale.json"))
    assert set(info) == {"format", "spec", "step", "run_id", "mlflow_run_id", "family"}
    assert (info["format"], info["step"], info["run_id"], info["mlflow_run_id"], info["family"]) == (
        1, 4, "job-1", logged["run_id"], "pde")
    assert info["spec"]["train"]["max_steps"] == 4
    from safetensors.torch import load_file

    stored = load_file(registry.download(model, registry.WEIGHTS_FILE, logged["uri"]))
    assert stored.keys() == logged["state"].keys()
    assert all(torch.equal(stored[k], v) and stored[k].dtype == torch.float32 for k, v in logged["state"].items())


def test_models_are_linked_to_run_step_and_datasets(logged):
    client = logged["client"]
    model = client.get_logged_model(logged["final"])
    assert (model.name, model.source_run_id, str(model.status)) == ("model", logged["run_id"], "READY")
    assert model.tags[registry.KIND_TAG] == "final" and model.tags[registry.STEP_TAG] == "4"
    links = {(m.key, m.step, m.dataset_name, m.dataset_digest) for m in model.metrics}
    assert links == {("train/loss", 4, "ns/train", "d1"), ("val/loss", 4, "ns/val", "d2"),
                     ("sys/checkpoint_block_s", 4, None, None)}
    outputs = {(o.model_id, o.step) for o in client.get_run(logged["run_id"]).outputs.model_outputs}
    checkpoint = [m for m, _ in outputs if m != logged["final"]]
    assert outputs == {(logged["final"], 4), (checkpoint[0], 2)}
    ckpt = client.get_logged_model(checkpoint[0])
    assert ckpt.name == "checkpoint-2" and ckpt.tags[registry.KIND_TAG] == "checkpoint"
    assert {(m.key, m.step) for m in ckpt.metrics} == {("train/loss", 2), ("val/loss", 2)}
    # linked points are the run's own points: each step keeps one value per key
    assert sorted(m.step for m in client.get_metric_history(logged["run_id"], "train/loss")) == [2, 4]
    # a second final model of the same step (a relaunched attempt) is not logged
    assert logged["again"] is None
    assert "weights.safetensors" in {a.path for a in client.list_artifacts(logged["run_id"])}


def test_registered_weights_are_what_init_from_loads(logged):
    from trainers.weights import load_initial

    client = logged["client"]
    registry.register_model(client, client.get_logged_model(logged["final"]), "unit-fno", "champion")
    from models import load_family

    fresh = load_family("pde").build_model(validate_spec({
        "name": "m", "model": {"family": "pde", "arch": "fno", "size": "debug", "in_channels": 2, "resolution": 8},
        "data": {"train": [{"url": "/x"}], "canonical_streams": 1},
        "train": {"global_batch_size": 1, "micro_batch_size": 1, "max_steps": 1}}).model)
    report = load_initial(fresh, "models:/unit-fno@champion", logged["uri"])
    assert not report["shape_mismatch"] and not report["not_in_checkpoint"]
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in logged["state"].items())


def test_the_model_loads_in_a_fresh_process_without_the_project(logged):
    probe = ("import mlflow.pytorch, torch\n"
             f"m = mlflow.pytorch.load_model('models:/{logged['final']}')\n"
             "print(type(m).__module__, sum(p.numel() for p in m.parameters()) > 0)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                         cwd=logged["tmp"], env={**os.environ, "MLFLOW_TRACKING_URI": logged["uri"], "PYTHONPATH": ""})
    assert out.returncode == 0 and out.stdout.split() == ["models.pde.fno", "True"], out.stderr[-3000:]


def test_system_metrics_per_worker_node_and_off_at_zero(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("sys")).info.run_id
    run = {"mlflow_run_id": run_id, "tracking_uri": uri}
    assert start_system_metrics(run, 0, 0) is None
    monitor = start_system_metrics(run, 0, 1.0)
    background = BackgroundMonitor(run, 1, 1.0)  # what a worker starts: built off its start-up path
    time.sleep(2.5)
    stop_system_metrics(monitor)
    background.stop()
    assert background.monitor is not None
    keys = set(client.get_run(run_id).data.metrics)
    for rank in (0, 1):
        for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "disk_usage_percentage",
                     "network_receive_megabytes"):
            assert f"system/rank{rank}/{name}" in keys, sorted(keys)


def test_inferred_requirements_are_kept_per_arch_until_the_code_changes(tmp_path, monkeypatch):
    """MLflow's requirement inference (a subprocess, ~13 s a model) runs once per family/arch and environment:
    a second model of the same arch reads the list back; another arch, or a change to the models package,
    has none until inferred again."""
    from types import SimpleNamespace

    from trainers import logged_models

    package = tmp_path / "models"
    package.mkdir()
    (package / "net.py").write_text("x = 1\n")
    monkeypatch.setattr(logged_models, "REQUIREMENTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("trainers.weights.MODELS_DIR", package)
    fno, scot = SimpleNamespace(family="pde", arch="fno"), SimpleNamespace(family="pde", arch="scot")
    assert logged_models.read_requirements(fno) is None
    logged_models.save_requirements(spec_model=fno, requirements=["torch==2.13.0", "neuraloperator==2.0.0"])
    assert logged_models.read_requirements(fno) == ["torch==2.13.0", "neuraloperator==2.0.0"]
    assert logged_models.read_requirements(scot) is None
    later = os.stat(package / "net.py").st_mtime_ns + 10**9
    os.utime(package / "net.py", ns=(later, later))  # the model code changed: its imports may have
    assert logged_models.read_requirements(fno) is None
