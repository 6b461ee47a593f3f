"""`sciscale sweep` with real Ray Tune, Ray Train, DeepSpeed (CPU) and an MLflow server: a scaling ladder whose
driver is killed mid-way and resumed, and a random sweep that ASHA cuts short."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
BACKBONE = ROOT / "tests" / "integration" / "specs" / "backbone.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_head, mlflow_server):
    from data.generators.navier_stokes import generate

    base = tmp_path_factory.mktemp("sweeps")
    generate(str(base / "ns16"), n_train=32, n_val=8, resolution=16, seed=0, progress=False)
    env = {**os.environ, "RAY_ADDRESS": ray_head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def spec(name: str, sweep: dict, **train) -> Path:
        raw = yaml.safe_load(BACKBONE.read_text())
        raw["name"] = name
        raw["data"]["train"][0]["url"], raw["data"]["val"][0]["url"] = f"{base}/ns16/train", f"{base}/ns16/val"
        raw["train"].update({"global_batch_size": 8, "micro_batch_size": 4, "log_every": 2, **train})
        raw["distributed"]["workers"] = 1
        raw["storage"] = {"runs_root": str(base / "runs")}
        raw["tracking"].update({"uri": mlflow_server.endpoint, "experiment": "sweep-tests",
                                "system_metrics_every_s": 0})
        raw["sweep"] = sweep
        path = base / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.endpoint)
    return dict(base=base, env=env, spec=spec, client=client, runs=base / "runs")


def _sweep(setup, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", *args], env=setup["env"],
                                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.log = log
    return proc


def _wait(proc, timeout: float = 900) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"sweep still running after {timeout} s:\n{proc.log.read_text()[-6000:]}")
    out = proc.log.read_text()
    assert proc.returncode == 0, out[-6000:]
    return out


def _children(client, parent_id: str) -> dict:
    experiment = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def _parent(client, sweep_id: str):
    experiment = client.get_experiment_by_name("sweep-tests").experiment_id
    (run,) = client.search_runs([experiment], filter_string=f"tags.`sciscale.sweep_id` = '{sweep_id}' and "
                                "tags.`sciscale.kind` = 'sweep'")
    return run


def _steps(client, run) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]


@pytest.fixture(scope="module")
def ladder(setup):
    """A 3 x 3 scaling ladder (FNO width x max_steps); the driver is SIGKILLed once two trials have finished
    (taking its Tune trials, their Train controllers and workers with it), then `sciscale sweep --resume`."""
    path = setup["spec"]("ladder", {
        "method": "scaling", "max_concurrent": 2,
        "parameters": {"model.width": {"values": [4, 8, 16]}, "train.max_steps": {"values": [4, 8, 12]}}},
        checkpoint_every=4, max_steps=12)
    proc = _sweep(setup, str(path), "--sweep-id", "ladder", log=setup["base"] / "ladder.log")
    deadline = time.monotonic() + 900
    while proc.log.read_text().count(" finished at step ") < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.log.read_text()[-6000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    client = setup["client"]
    parent = _parent(client, "ladder")
    before = {name: (run.info.status, _steps(client, run))
              for name, run in _children(client, parent.info.run_id).items()}
    resumed = _sweep(setup, "--resume", "ladder", "--runs-root", str(setup["runs"]),
                     log=setup["base"] / "ladder-resume.log")
    out = _wait(resumed)
    return dict(parent=client.get_run(parent.info.run_id), before=before, out=out,
                children=_children(client, parent.info.run_id))


def test_ladder_resumed_after_a_driver_kill_reruns_no_finished_trial(ladder, setup):
    client, children, before = setup["client"], ladder["children"], ladder["before"]
    assert len(children) == 9 and {r.info.status for r in children.values()} == {"FINISHED"}, ladder["out"][-4000:]
    finished_before = [name for name, (status, _) in before.items() if status == "FINISHED"]
    assert len(finished_before) >= 2, before
    for name, run in children.items():
        max_steps = int(run.data.params["train.max_steps"])
        assert _steps(client, run) == list(range(2, max_steps + 1, 2)), name  # each step once, none missing
        if name in finished_before:  # never reopened: same run, one attempt, the same history
            assert "sciscale.attempts" not in run.data.tags and _steps(client, run) == before[name][1], name
    assert ladder["parent"].info.status == "FINISHED"
    assert ladder["parent"].data.tags["sciscale.attempts"] == "1"


def test_ladder_parent_holds_the_table_best_trial_fit_and_plots(ladder, setup):
    client, parent, children = setup["client"], ladder["parent"], ladder["children"]
    losses = {name: run.data.metrics["val/loss"] for name, run in children.items()}
    best = min(losses, key=losses.get)
    assert parent.data.tags["sciscale.best_run_id"] == best
    assert parent.data.metrics["best/val/loss"] == pytest.approx(losses[best])
    for key in ("E", "A", "alpha", "B", "beta"):
        lo, value, hi = (parent.data.metrics[f"fit/{key}{s}"] for s in ("_lo", "", "_hi"))
        assert lo <= value <= hi, key
    sizes = {run.data.metrics["model/params"] for run in children.values()}
    samples = {run.data.metrics["model/train_samples"] for run in children.values()}
    assert len(sizes) == 3 and samples == {32.0, 64.0, 96.0}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert artifacts == {f"plots/{n}.png" for n in ("metric_vs_params", "learning_curves", "scaling_loss_vs_n",
                                                     "scaling_compute_optimal")}
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="trials.json", tracking_uri=client.tracking_uri)).read_text())
    assert sorted(row[table["columns"].index("trial")] for row in table["data"]) == sorted(children)
    status = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", "ladder", "--runs-root",
                             str(setup["runs"])], env=setup["env"], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0 and "trials: 9 (9 finished)" in status.stdout and f"best: {best}" in status.stdout


def test_random_sweep_with_asha_stops_a_trial_early(setup):
    """One trial at a time, so each meets the rung records of those before it: the weak learning rates are cut
    at the first rung (step 4) and end KILLED with the reason tagged."""
    path = setup["spec"]("asha", {
        "method": "random", "num_samples": 4, "max_concurrent": 1, "seed": 10,  # lr 1.9e-2, 8.5e-6, 5.1e-3, 4.7e-6
        "early_stop": {"grace_steps": 4, "reduction_factor": 2},
        "parameters": {"optim.lr": {"log_uniform": [1.0e-6, 3.0e-2]}}}, max_steps=12, eval_every=4)
    out = _wait(_sweep(setup, str(path), "--sweep-id", "asha", log=setup["base"] / "asha.log"))
    client = setup["client"]
    children = _children(client, _parent(client, "asha").info.run_id)
    assert len(children) == 4, out[-4000:]
    killed = {n: r for n, r in children.items() if r.info.status == "KILLED"}
    assert killed, f"no trial was stopped early:\n{out[-4000:]}"
    for name, run in killed.items():
        reason = run.data.tags["sciscale.end_reason"]
        assert reason.startswith("stopped early by ASHA at step "), name
        assert int(reason.split(" at step ")[1].split()[0]) < 12 and f"trial {name} stopped early" in out, reason
        # (the stop takes effect when Tune removes the trial's actor; a 12-step trial may have run on to its end)
    assert {r.info.status for r in children.values()} <= {"FINISHED", "KILLED"}
