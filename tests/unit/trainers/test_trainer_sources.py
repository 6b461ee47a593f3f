"""Where a model comes from: run ids, checkpoint directories (real DeepSpeed checkpoints at ZeRO 0-3, one and
two ranks) and MLflow model URIs in a real sqlite store, and a one-screen error for every bad SOURCE."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import ds_checkpoint_writer as writer
from orchestrator.runs import RunRecord, write_record
from orchestrator.specload import dump_spec, validate_spec
from trainers.sources import ModelSource, resolve

ROOT = Path(__file__).resolve().parents[3]
FNO = {**writer.SPEC, "name": "fno-test",
       "model": {"family": "pde", "arch": "fno", "size": "debug", "in_channels": 2, "resolution": 16}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_checkpoints(root: Path, world: int, stages: str) -> Path:
    port, env = _free_port(), {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(Path(writer.__file__)), str(root), str(world), str(rank), str(port),
                               stages], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world)]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return root


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    return _write_checkpoints(tmp_path_factory.mktemp("ranks1"), 1, "0123")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _assert_equal_weights(source: ModelSource, expected: Path) -> None:
    got, want = load_file(source.weights), load_file(str(expected))
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_checkpoint_directory_consolidates_to_the_engines_fp32_weights(one_rank, cache, stage):
    source = resolve(str(one_rank / f"zero{stage}" / "checkpoint_000000"), cache_dir=cache)
    assert source.kind == "checkpoint" and source.step == writer.STEP
    assert source.spec.model.arch == "scot" and source.spec.distributed.zero_stage == stage
    assert source.label == f"zero{stage}/checkpoint_000000 step {writer.STEP}"
    _assert_equal_weights(source, one_rank / f"zero{stage}" / "expected.safetensors")
    assert resolve(str(one_rank / f"zero{stage}" / "checkpoint_000000"), cache_dir=cache).weights == source.weights


def test_two_rank_checkpoints_consolidate(tmp_path, cache):
    # ZeRO 2 and 3 are DeepSpeed's two consolidation paths (ZeRO 1 shares ZeRO 2's, ZeRO 0 has no shards);
    # all four stages at two ranks were checked the same way when this was written
    root = _write_checkpoints(tmp_path, 2, "23")
    for stage in (2, 3):
        files = os.listdir(root / f"zero{stage}" / "checkpoint_000000" / "step2")
        assert sum("optim_states" in f for f in files) == 2  # really sharded over two ranks
        source = resolve(str(root / f"zero{stage}" / "checkpoint_000000"), cache_dir=cache)
        _assert_equal_weights(source, root / f"zero{stage}" / "expected.safetensors")


def test_remote_checkpoint_is_downloaded_verified_and_consolidated(one_rank, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")  # a runs root on another filesystem, through the one storage layer
    for local in (one_rank / "zero1").rglob("*"):
        if local.is_file():
            fs.pipe(f"/remote-runs/zero1/{local.relative_to(one_rank / 'zero1')}", local.read_bytes())
    try:
        source = resolve("memory://remote-runs/zero1/checkpoint_000000", cache_dir=str(tmp_path / "cache"))
    finally:
        fs.rm("/remote-runs", recursive=True)
    assert source.label == f"zero1/checkpoint_000000 step {writer.STEP}" and source.spec.distributed.zero_stage == 1
    _assert_equal_weights(source, one_rank / "zero1" / "expected.safetensors")


def test_damaged_checkpoint_is_refused_naming_the_file(one_rank, tmp_path):
    import shutil

    run = tmp_path / "zero2"
    shutil.copytree(one_rank / "zero2", run)
    shard = next((run / "checkpoint_000000" / "step2").glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match=f"{shard.name} does not match its checksum"):
        resolve(str(run / "checkpoint_000000"), cache_dir=str(tmp_path / "cache"))


def test_checkpoint_outside_its_run_directory_says_where_the_spec_is_looked_for(one_rank, tmp_path):
    import shutil

    shutil.copytree(one_rank / "zero1" / "checkpoint_000000", tmp_path / "loose" / "checkpoint_000000")
    with pytest.raises(ValueError, match=r"no resolved spec at .*loose/sciscale/spec.yaml.*must stay inside its run"):
        resolve(str(tmp_path / "loose" / "checkpoint_000000"), cache_dir=str(tmp_path / "cache"))


# ---- MLflow: a real sqlite store ------------------------------------------------------------------------------


def _fno_weights(directory: Path) -> Path:
    from models import load_family

    torch.manual_seed(3)
    model = load_family("pde").build_model(validate_spec(FNO).model)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "weights.safetensors"))
    (directory / "MLmodel").write_text("flavors:\n  pytorch: {}\n")  # stands for mlflow.pytorch's files
    return directory / "weights.safetensors"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Runs logged the way sciscale logs them today (weights.safetensors and spec.yaml run artifacts) and the
    way the MLflow-model layout does (a LoggedModel named ``model`` holding sciscale.json), registered."""
    import mlflow

    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base}/mlflow.db"
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    # the registry looks logged models up through the default URI, which an earlier test may have set
    with pytest.MonkeyPatch.context() as env, _use_tracking_uri(uri):
        env.setenv("MLFLOW_TRACKING_URI", uri)  # restored on exit (mlflow writes it too)
        return _fill_store(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri, base)


def _fill_store(client, uri: str, base: Path) -> dict:
    from mlflow.entities import LoggedModelStatus

    exp = client.create_experiment("t", artifact_location=(base / "artifacts").as_uri())
    spec_yaml = dump_spec(validate_spec(FNO))
    files = base / "files"
    weights = _fno_weights(files / "old")
    old = client.create_run(exp).info.run_id
    client.log_artifact(old, str(weights))
    client.log_text(old, spec_yaml, "spec.yaml")
    client.log_artifacts(old, str(files / "old"), "model")
    new = client.create_run(exp).info.run_id
    _fno_weights(files / "new")
    meta = {"format": 1, "spec": yaml.safe_load(spec_yaml), "step": 42, "run_id": "fno-test-1", "mlflow_run_id": new,
            "family": "pde"}
    (files / "new" / "sciscale.json").write_text(json.dumps(meta))
    model = client.create_logged_model(exp, name="model", source_run_id=new)
    client.log_model_artifacts(model.model_id, str(files / "new"))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.create_registered_model("pde-fno")
    client.create_model_version("pde-fno", f"models:/{model.model_id}", run_id=new, model_id=model.model_id)
    client.set_registered_model_alias("pde-fno", "champion", "1")
    foreign = client.create_logged_model(exp, name="other", source_run_id=client.create_run(exp).info.run_id)
    (files / "foreign").mkdir()
    (files / "foreign" / "MLmodel").write_text("flavors: {}\n")
    client.log_model_artifacts(foreign.model_id, str(files / "foreign"))
    client.create_registered_model("foreign")
    client.create_model_version("foreign", f"models:/{foreign.model_id}", model_id=foreign.model_id)
    empty = client.create_run(exp).info.run_id
    return {"uri": uri, "old": old, "new": new, "model_id": model.model_id, "foreign": foreign.model_id,
            "empty": empty, "exp": exp, "weights": load_file(str(weights))}


def _load(uri: str, store, tmp_path) -> ModelSource:
    return resolve(uri, tracking_uri=store["uri"], cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("path", ["", "/model", "/weights.safetensors"])
def test_runs_uri_of_a_run_with_weights_and_spec_artifacts(store, tmp_path, path):
    source = _load(f"runs:/{store['old']}{path}", store, tmp_path)
    assert source.kind == "mlflow" and source.spec.model.arch == "fno" and source.step is None
    assert source.mlflow == {"tracking_uri": store["uri"], "mlflow_run_id": store["old"]}
    assert load_file(source.weights).keys() == store["weights"].keys()


def test_runs_uri_of_a_logged_model_with_sciscale_json(store, tmp_path):
    source = _load(f"runs:/{store['new']}/model", store, tmp_path)
    assert source.step == 42 and source.spec.name == "fno-test"
    assert source.mlflow == {"tracking_uri": store["uri"], "mlflow_run_id": store["new"], "model_id": store["model_id"]}


@pytest.mark.parametrize("uri", ["models:/pde-fno@champion", "models:/pde-fno/1", "models:/{model_id}"])
def test_registered_and_logged_model_uris(store, tmp_path, uri):
    source = _load(uri.format(model_id=store["model_id"]), store, tmp_path)
    assert source.step == 42 and source.mlflow["model_id"] == store["model_id"]
    assert source.mlflow["mlflow_run_id"] == store["new"]
    assert source.label.startswith(uri.format(model_id=store["model_id"]))
    assert "version 1" in source.label or not uri.endswith("champion")


def test_tracking_uri_defaults_to_the_environment(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    assert resolve("models:/pde-fno/1", cache_dir=str(tmp_path)).step == 42


def _run_record(tmp_path, store, mlflow_run_id: str, run_id: str = "fno-test-1") -> Path:
    root = tmp_path / "runs"
    record = RunRecord(run_id=run_id, runs_root=str(root), tracking_uri=store["uri"], experiment="t",
                       mlflow_run_id=mlflow_run_id)
    write_record(record, spec_yaml=dump_spec(validate_spec(FNO)))
    return root


@pytest.mark.parametrize("which,step", [("old", None), ("new", 42)])
def test_run_id_gives_the_final_model(store, tmp_path, which, step):
    root = _run_record(tmp_path, store, store[which])
    source = resolve("fno-test-1", runs_root=str(root), cache_dir=str(tmp_path / "cache"))
    assert source.kind == "run" and source.label == "fno-test-1 final model" and source.step == step
    assert source.mlflow["mlflow_run_id"] == store[which]
    assert resolve(str(root / "fno-test-1"), cache_dir=str(tmp_path / "c2")).label == source.label  # the run's path


def test_run_id_without_a_final_model_gives_its_latest_committed_checkpoint(one_rank, store, tmp_path):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(one_rank / "zero2", root / "scot-1")
    (root / "scot-1" / "checkpoint_000000").rename(root / "scot-1" / "checkpoint_2026-12-01_10-00-00.000001")
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_2026-12-01_10-00-00.000001",
                                             "metrics": {"step": writer.STEP}}}
    (root / "scot-1" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    record = RunRecord(run_id="scot-1", runs_root=str(root), tracking_uri=store["uri"], experiment="t",
                       mlflow_run_id=store["empty"])
    write_record(record)
    source = resolve("scot-1", runs_root=str(root), cache_dir=str(tmp_path / "cache"))
    assert source.kind == "run" and source.step == writer.STEP
    assert source.label == f"scot-1 step {writer.STEP} (latest checkpoint; no final model)"
    assert source.mlflow == {"tracking_uri": store["uri"], "mlflow_run_id": store["empty"]}
    _assert_equal_weights(source, one_rank / "zero2" / "expected.safetensors")


# ---- bad input: each one screen -------------------------------------------------------------------------------


def test_source_naming_nothing_lists_what_was_looked_for_and_suggests_a_run(store, tmp_path):
    root = _run_record(tmp_path, store, store["old"], run_id="fno-test-20261201")
    with pytest.raises(ValueError) as info:
        resolve("fno-test-20261202", runs_root=str(root))
    text = str(info.value)
    assert "SOURCE 'fno-test-20261202' names no run, checkpoint or model" in text
    assert f"{root}/fno-test-20261202/sciscale/run.json" in text and "trainer_state.json" in text
    assert "models:/NAME@ALIAS" in text and "did you mean 'fno-test-20261201'?" in text


def test_run_without_final_model_or_checkpoint(store, tmp_path):
    root = _run_record(tmp_path, store, store["empty"])
    with pytest.raises(ValueError, match=r"run fno-test-1 .* has neither a final model nor a committed checkpoint"):
        resolve("fno-test-1", runs_root=str(root), cache_dir=str(tmp_path / "cache"))


def test_missing_alias_lists_the_models_aliases(store, tmp_path):
    with pytest.raises(ValueError, match=r"(?s)models:/pde-fno@prod': registered model 'pde-fno' has no alias "
                                         r"'prod'.*one of its aliases: @champion \(version 1\)"):
        _load("models:/pde-fno@prod", store, tmp_path)


def test_missing_version_lists_the_versions(store, tmp_path):
    with pytest.raises(ValueError, match=r"(?s)version 7 of registered model 'pde-fno' was not found.*"
                                         r"its versions: 1\n"):
        _load("models:/pde-fno/7", store, tmp_path)


def test_unknown_registered_model_suggests_a_name(store, tmp_path):
    with pytest.raises(ValueError, match=r"(?s)no registered model 'pde-fn0' .* did you mean 'pde-fno'\?"):
        _load("models:/pde-fn0@champion", store, tmp_path)


def test_unknown_logged_model_and_run(store, tmp_path):
    with pytest.raises(ValueError, match=r"(?s)models:/m-0000' names no MLflow model: model id 'm-0000' was not found.*"
                                         r"model ids start with m-"):
        _load("models:/m-0000", store, tmp_path)
    with pytest.raises(ValueError, match=r"runs:/0123abc/model': no MLflow run '0123abc'"):
        _load("runs:/0123abc/model", store, tmp_path)


@pytest.mark.parametrize("uri", ["models:/foreign/1", "models:/{foreign}", "runs:/{empty}/model", "runs:/{old}/plots"])
def test_model_uri_holding_no_sciscale_model(store, tmp_path, uri):
    uri = uri.format(**store)
    with pytest.raises(ValueError) as info:
        _load(uri, store, tmp_path)
    text = str(info.value)
    assert text.startswith(f"{uri} holds no sciscale model") and "looked for:" in text and "sciscale.json" in text


def test_model_uri_without_a_tracking_server(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=r"needs a tracking server: MLFLOW_TRACKING_URI is not set"):
        resolve("models:/x@y", runs_root=str(tmp_path))
