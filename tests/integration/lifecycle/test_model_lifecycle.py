"""MLflow 3 model lifecycle end to end: one tiny 2-worker run (real Ray, DeepSpeed on CPU, the session's MLflow
server) logs its datasets, system metrics per worker, a LoggedModel per checkpoint and a final one; the tests
read that one run, register its model, fine-tune from models:/NAME@ALIAS and feed the CLI bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from orchestrator import registry

pytestmark = pytest.mark.integration

SPEC = str(Path(__file__).resolve().parents[1] / "specs" / "backbone.yaml")
ROOT = Path(__file__).resolve().parents[3]
EXPERIMENT = "lifecycle-tests"


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory, ray_head, mlflow_server):
    """The launcher and the one trained run: 4 steps, checkpoints at 2 and 4, checkpoints as models, system
    metrics every second."""
    from data.generators.navier_stokes import generate

    base = tmp_path_factory.mktemp("lifecycle")
    generate(str(base / "ns16"), n_train=32, n_val=8, resolution=16, seed=0, progress=False)
    env = {**os.environ, "RAY_ADDRESS": ray_head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    sets = [f"data.train.0.url={base}/ns16/train", f"data.val.0.url={base}/ns16/val",
            f"storage.runs_root={base / 'runs'}", f"tracking.uri={mlflow_server.endpoint}",
            f"tracking.experiment={EXPERIMENT}"]

    def launch(run_id: str, *extra: str, expect: int = 0) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "orchestrator.cli", "launch", SPEC, "--run-id", run_id]
        for item in sets + list(extra):
            argv += ["--set", item]
        return _cli(argv, env, expect, timeout=480)

    launch("lc-base", "train.max_steps=4", "train.checkpoint_every=2", "tracking.log_checkpoints_as_models=true",
           "tracking.system_metrics_every_s=1")
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.endpoint)
    run = _run(client, "lc-base")
    return dict(base=base, env=env, launch=launch, client=client, run=run, runs_root=str(base / "runs"))


def _cli(argv, env, expect=0, timeout=240) -> subprocess.CompletedProcess:
    if argv[0] != sys.executable:
        argv = [sys.executable, "-m", "orchestrator.cli", *argv]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _run(client, run_name: str):
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs(experiment, filter_string=f"tags.`sciscale.run_id` = '{run_name}'")
    assert len(runs) == 1, runs
    return client.get_run(runs[0].info.run_id)  # search results leave the run's model inputs out


def _manifest(path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def _weights(client, model) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(registry.download(model, registry.WEIGHTS_FILE, client.tracking_uri))


def test_run_inputs_show_both_datasets_with_the_manifest_version(lifecycle):
    base, run = lifecycle["base"], lifecycle["run"]
    got = {i.dataset.name: (i.dataset.digest, [t.value for t in i.tags if t.key == "mlflow.data.context"],
                            json.loads(i.dataset.profile)["num_rows"], json.loads(i.dataset.source)["uri"])
           for i in run.inputs.dataset_inputs}
    assert got == {"ns16/train": (_manifest(base / "ns16/train")["version"], ["training"], 32, f"{base}/ns16/train"),
                   "ns16/val": (_manifest(base / "ns16/val")["version"], ["validation"], 8, f"{base}/ns16/val")}


def test_final_and_checkpoint_models_are_linked_to_run_step_and_datasets(lifecycle):
    client, run, base = lifecycle["client"], lifecycle["run"], lifecycle["base"]
    final = registry.final_model(client, run.info.run_id)
    assert final.name == "model" and final.source_run_id == run.info.run_id and str(final.status) == "READY"
    outputs = {client.get_logged_model(o.model_id).name: o.step for o in run.outputs.model_outputs}
    assert outputs == {"model": 4, "checkpoint-2": 2}, outputs
    links = {m.key: (m.step, m.dataset_name, m.dataset_digest) for m in final.metrics}
    assert links["train/loss"] == (4, "ns16/train", _manifest(base / "ns16/train")["version"])
    assert links["val/loss"] == (4, "ns16/val", _manifest(base / "ns16/val")["version"])
    info = registry.read_info(final, client.tracking_uri, "final")
    assert (info["format"], info["step"], info["run_id"], info["mlflow_run_id"], info["family"]) == (
        1, 4, "lc-base", run.info.run_id, "pde")
    assert info["spec"]["tracking"]["log_checkpoints_as_models"] is True
    files = registry.model_files(final, client.tracking_uri)
    assert {"MLmodel", "weights.safetensors", "sciscale.json", "requirements.txt", "data", "code"} <= files, files
    checkpoint = registry.logged_model(client, f"runs:/{run.info.run_id}/checkpoint-2")
    assert registry.read_info(checkpoint, client.tracking_uri, "checkpoint")["step"] == 2
    before, after = _weights(client, checkpoint), _weights(client, final)
    assert any(not torch.equal(before[k], after[k]) for k in after)  # two steps of training apart


def test_system_metrics_are_logged_per_worker_rank(lifecycle):
    keys = set(lifecycle["run"].data.metrics)
    for rank in (0, 1):
        for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "disk_usage_percentage"):
            assert f"system/rank{rank}/{name}" in keys, sorted(k for k in keys if k.startswith("system/"))


@pytest.fixture(scope="module")
def registered(lifecycle):
    proc = _cli(["register", "lc-base", "--name", "lc-fno", "--alias", "champion", "--runs-root",
                 lifecycle["runs_root"]], lifecycle["env"])
    assert "as lc-fno version 1, alias @champion" in proc.stdout, proc.stdout
    return registry.final_model(lifecycle["client"], lifecycle["run"].info.run_id)


def test_register_alias_and_ls_models(lifecycle, registered):
    version = lifecycle["client"].get_model_version_by_alias("lc-fno", "champion")
    assert version.source == f"models:/{registered.model_id}"
    shown = _cli(["ls", "--models", "--runs-root", lifecycle["runs_root"]], lifecycle["env"]).stdout.splitlines()
    line = shown[shown.index("lc-fno") + 1]
    assert line.split()[:3] == ["v1", "@champion", registered.model_id] and "run lc-base step 4" in line, shown


def test_finetune_from_the_alias_starts_from_exactly_those_weights(lifecycle, registered):
    """lr 1e-30 for one step: the fine-tune's final weights are its initial weights (a change of 1e-30 is below
    fp32 resolution), which must be the registered ones to the last bit, not a fresh initialisation."""
    client = lifecycle["client"]
    lifecycle["launch"]("lc-ft", "train.init_from=models:/lc-fno@champion", "train.max_steps=1",
                        "optim.lr=1e-30", "tracking.system_metrics_every_s=0")
    run = _run(client, "lc-ft")
    assert [m.model_id for m in run.inputs.model_inputs] == [registered.model_id]
    tuned = _weights(client, registry.final_model(client, run.info.run_id))
    source = _weights(client, registered)
    assert tuned.keys() == source.keys()
    for key, value in source.items():
        torch.testing.assert_close(tuned[key], value, rtol=0, atol=1e-25, msg=key)
    assert not any(k.startswith("system/") for k in run.data.metrics)  # system_metrics_every_s=0: off


def test_bad_input_exits_2_with_one_screen(lifecycle, registered):
    from mlflow.entities import LoggedModelOutput

    client, env, root = lifecycle["client"], lifecycle["env"], lifecycle["runs_root"]
    plain = client.create_logged_model(lifecycle["run"].info.experiment_id, name="plain",
                                       source_run_id=lifecycle["run"].info.run_id)
    client.log_outputs(lifecycle["run"].info.run_id, [LoggedModelOutput(plain.model_id, 0)])
    stub = lifecycle["base"] / "plain"
    stub.mkdir()
    (stub / "MLmodel").write_text("flavors: {}\n")
    client.log_model_artifacts(plain.model_id, str(stub))
    cases = [
        (["register", "no-such-run", "--name", "x", "--runs-root", root], "names no sciscale run in runs root"),
        (["register", "models:/lc-fno@nope", "--name", "x", "--runs-root", root], "has no alias 'nope'"),
        (["register", plain.model_id, "--name", "x", "--runs-root", root], "holds no sciscale model"),
    ]
    for argv, words in cases:
        err = _cli(argv, env, expect=2).stderr
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) <= 6, err
    failed = lifecycle["launch"]("lc-bad", "train.init_from=models:/lc-fno@nope", expect=2)
    assert "train.init_from" in failed.stderr and "has no alias 'nope'" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr and not (Path(root) / "lc-bad").exists()  # refused before the run


def test_eval_of_the_registered_model_is_linked_to_it(lifecycle, registered):
    """`sciscale eval models:/NAME@ALIAS`: Poseidon's scores printed, logged as an evaluation run whose eval/
    metrics carry the model id and the eval dataset (so the model's page lists them), with table and plots."""
    client, base = lifecycle["client"], lifecycle["base"]
    env = {**lifecycle["env"], "MLFLOW_TRACKING_URI": client.tracking_uri}
    proc = _cli(["eval", "models:/lc-fno@champion", "--data", f"{base}/ns16/val", "--runs-root",
                 lifecycle["runs_root"]], env)
    assert "direct_median" in proc.stdout and "persistence_median" in proc.stdout, proc.stdout
    model = client.get_logged_model(registered.model_id)
    linked = {m.key: (m.step, m.dataset_name) for m in model.metrics if m.key.startswith("eval/")}
    assert linked["eval/rel_l1_median"] == (4, "ns16/val"), linked
    assert "eval/rel_l1_median_persistence" in linked, sorted(linked)
    runs = client.search_runs([lifecycle["run"].info.experiment_id], "tags.`sciscale.kind` = 'evaluation'")
    assert len(runs) == 1 and [m.model_id for m in client.get_run(runs[0].info.run_id).inputs.model_inputs] == [
        registered.model_id]
    files = {a.path for a in client.list_artifacts(runs[0].info.run_id, "eval")}
    assert "eval/scores.json" in files and any(f.endswith(".png") for f in files), files
