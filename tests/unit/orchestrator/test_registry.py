"""`sciscale register` and `ls --models` against a real MLflow store (sqlite), with sciscale models written the
way rank 0 writes them (without torch: the model files are stand-ins). Bad input: exit 2, one screen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import LoggedModelOutput, Metric

from orchestrator import registry
from orchestrator.cli import main
from orchestrator.runs import RunRecord, write_record

ROOT = Path(__file__).resolve().parents[3]


def _model(client, experiment, run_id, tmp_path, step=4, sciscale=True, name="model", kind="final"):
    model = client.create_logged_model(experiment, name=name, source_run_id=run_id,
                                       tags={registry.KIND_TAG: kind, registry.STEP_TAG: str(step),
                                             registry.RUN_TAG: "job-1"})
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    files = tmp_path / model.model_id
    files.mkdir()
    (files / "MLmodel").write_text("flavors: {}\n")
    (files / registry.WEIGHTS_FILE).write_bytes(b"weights of " + model.model_id.encode())
    if sciscale:
        (files / registry.INFO_FILE).write_text(json.dumps({"format": 1, "spec": {}, "step": step, "run_id": "job-1",
                                                            "mlflow_run_id": run_id, "family": "pde"}))
    client.log_model_artifacts(model.model_id, str(files))
    client.finalize_logged_model(model.model_id, "READY")
    return model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A runs root with one sciscale run (record + MLflow run) that logged a final model with an eval score,
    a checkpoint model, and a LoggedModel that is not a sciscale model; the final model is registered as
    ns-fno with the alias champion."""
    tmp_path = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path / "runs"
        root.mkdir()
        uri = f"sqlite:///{root}/mlflow.db"
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("reg", artifact_location=(root / "mlartifacts").as_uri())
        run_id = client.create_run(experiment).info.run_id
        write_record(RunRecord(run_id="job-1", runs_root=str(root), tracking_uri=uri, experiment="reg",
                               mlflow_run_id=run_id))
        final = _model(client, experiment, run_id, tmp_path)
        checkpoint = _model(client, experiment, run_id, tmp_path, step=2, name="checkpoint-2", kind="checkpoint")
        plain = _model(client, experiment, run_id, tmp_path, sciscale=False, name="plain", kind="other")
        client.log_batch(run_id, metrics=[Metric("eval/rel_l1", 0.125, 1, 4, model_id=final.model_id,
                                                 dataset_name="ns/val", dataset_digest="abc")])
        registry.register_model(client, final, "ns-fno", "champion")
        yield dict(root=str(root), uri=uri, client=client, run_id=run_id, final=final, checkpoint=checkpoint,
                   plain=plain)


def test_register_a_run_id_names_its_final_model_and_sets_the_alias(store, capsys):
    assert main(["register", "job-1", "--name", "reg-1", "--alias", "best", "--runs-root", store["root"]]) == 0
    out = capsys.readouterr().out
    assert f"registered {store['final'].model_id} (run job-1, step 4, pde) as reg-1 version 1, alias @best" in out
    assert "train.init_from: models:/reg-1@best" in out
    version = store["client"].get_model_version_by_alias("reg-1", "best")
    assert str(version.version) == "1" and version.source == f"models:/{store['final'].model_id}"
    # the same model again makes no new version; a checkpoint model (by URI) becomes version 2 and takes the alias
    assert main(["register", f"models:/{store['final'].model_id}", "--name", "reg-1", "--runs-root",
                 store["root"]]) == 0
    assert main(["register", f"runs:/{store['run_id']}/checkpoint-2", "--name", "reg-1", "--alias", "best",
                 "--runs-root", store["root"]]) == 0
    assert str(store["client"].get_model_version_by_alias("reg-1", "best").version) == "2"
    # the models list their versions as mlflow.register_model keeps them (the UI shows them from this tag)
    tags = store["client"].get_logged_model(store["checkpoint"].model_id).tags
    assert {"name": "reg-1", "version": 2} in json.loads(tags["mlflow.modelVersions"])


def test_ls_models_lists_versions_aliases_and_eval_scores(store, capsys):
    main(["register", store["checkpoint"].model_id, "--name", "reg-2", "--runs-root", store["root"]])
    main(["register", "job-1", "--name", "reg-2", "--alias", "champion", "--runs-root", store["root"]])
    capsys.readouterr()
    assert main(["ls", "--models", "--runs-root", store["root"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    block = lines[lines.index("reg-2") + 1:lines.index("reg-2") + 3]
    assert block[0].split()[:3] == ["v2", "@champion", store["final"].model_id], lines
    assert "run job-1 step 4" in block[0] and "eval/rel_l1=0.125 (ns/val)" in block[0]
    assert block[1].split()[:3] == ["v1", "-", store["checkpoint"].model_id] and "step 2" in block[1]


@pytest.mark.parametrize("source, words", [
    ("no-such-run", ["names no sciscale run in runs root", "`sciscale ls"]),
    ("m-0123456789", ["names no MLflow model", "not found"]),
    ("models:/ns-fno@nope", ["has no alias 'nope'", "one of its aliases: @champion (version 1)"]),
    ("models:/missing@champion", ["there is no registered model 'missing'"]),
    ("models:/ns-fno/9", ["names no MLflow model", "not found"]),
    ("models:/ns-fno/Production", ["stages are deprecated"]),
    ("PLAIN", ["holds no sciscale model", "has no sciscale.json"]),
])
def test_bad_sources_exit_2_with_one_screen(store, capsys, source, words):
    source = source.replace("PLAIN", store["plain"].model_id)
    assert main(["register", source, "--name", "ns-fno", "--runs-root", store["root"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) <= 5, err
    for word in words:
        assert word in err, err
    assert "received:" in err and "expected:" in err and "hint:" in err


def test_a_run_without_a_final_model_is_refused(store, capsys):
    client = store["client"]
    experiment = client.get_run(store["run_id"]).info.experiment_id
    write_record(RunRecord(run_id="job-2", runs_root=store["root"], tracking_uri=store["uri"], experiment="reg",
                           mlflow_run_id=client.create_run(experiment).info.run_id))
    assert main(["register", "job-2", "--name", "x", "--runs-root", store["root"]]) == 2
    assert "the run has no final model" in capsys.readouterr().err


def test_cli_subprocess_exits_2_torch_free_without_traceback(store):
    code = ("import sys; from orchestrator.cli import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "register", "models:/x@y", "--name", "x", "--runs-root",
                          store["root"]], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.strip() == "False" and "there is no registered model 'x'" in out.stderr


def test_init_from_is_pinned_to_the_model_the_alias_names(store):
    from orchestrator.specload import validate_spec

    spec = validate_spec({"name": "ft", "model": {"family": "pde", "arch": "fno", "size": "debug", "in_channels": 2,
                                                  "resolution": 8},
                          "data": {"train": [{"url": "s3://b/x"}], "canonical_streams": 1},
                          "train": {"global_batch_size": 1, "micro_batch_size": 1, "max_steps": 1,
                                    "init_from": "models:/ns-fno@champion"}})
    client = store["client"]
    run_id = client.create_run(client.get_run(store["run_id"]).info.experiment_id).info.run_id
    assert registry.pin_init_from(spec, run_id, store["uri"]) == f"models:/{store['final'].model_id}"
    run = client.get_run(run_id)
    assert [m.model_id for m in run.inputs.model_inputs] == [store["final"].model_id]
    assert run.data.tags["sciscale.init_from"].endswith(store["final"].model_id)
    path = registry.fetch_weights("models:/ns-fno@champion", store["uri"])
    assert Path(path).read_bytes() == b"weights of " + store["final"].model_id.encode()
    spec.train.init_from = "models:/ns-fno@nope"
    with pytest.raises(registry.SourceError, match="has no alias 'nope'"):
        registry.pin_init_from(spec, run_id, store["uri"])


def test_validate_and_launch_refuse_an_init_from_alias_that_does_not_exist(store, tmp_path, capsys):
    import yaml

    from data.generators.navier_stokes import generate

    generate(str(tmp_path / "ns"), n_train=2, n_val=1, resolution=16, snapshots=5, seed=0, progress=False)
    spec = {"name": "ft", "model": {"family": "pde", "arch": "fno", "size": "debug", "in_channels": 2,
                                    "resolution": 16},
            "data": {"train": [{"url": str(tmp_path / "ns" / "train")}], "canonical_streams": 1},
            "train": {"global_batch_size": 1, "micro_batch_size": 1, "max_steps": 1,
                      "init_from": "models:/ns-fno@nope"},
            "storage": {"runs_root": store["root"]}, "tracking": {"uri": store["uri"]}}
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(spec))
    for command in ("validate", "launch"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert "train.init_from" in err and "has no alias 'nope'" in err and "@champion (version 1)" in err, err
    spec["train"]["init_from"] = "models:/ns-fno@champion"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 0
