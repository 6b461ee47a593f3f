"""The launch-to-first-step timeline (orchestrator/startup.py) and the benchmark's reading of it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from orchestrator import startup

DRIVER = [("", 100.0), ("Python start, CLI", 101.0), ("run record, MLflow run", 103.5), ("Ray start", 105.0)]
WORKER = [("", 108.0), ("worker setup", 112.0), ("DeepSpeed initialise", 114.5), ("first step", 115.0)]


def test_breakdown_spans_driver_ray_train_and_worker():
    spans = startup.breakdown(DRIVER, WORKER)
    assert spans == [("Python start, CLI", 1.0), ("run record, MLflow run", 2.5), ("Ray start", 1.5),
                     (startup.RAY_TRAIN, 3.0), ("worker setup", 4.0), ("DeepSpeed initialise", 2.5),
                     ("first step", 0.5)]
    assert sum(s for _, s in spans) == pytest.approx(15.0)  # launch to first step, nothing counted twice


def test_breakdown_without_driver_marks_starts_at_the_worker_process():
    spans = startup.breakdown([], WORKER)
    assert [p for p, _ in spans] == ["worker setup", "DeepSpeed initialise", "first step"]
    assert sum(s for _, s in spans) == pytest.approx(7.0)


def test_marks_start_at_the_process_start(monkeypatch):
    monkeypatch.setattr(startup, "_MARKS", [])
    startup.mark("a")
    startup.mark("b")
    (first, t0), (a, ta), (b, tb) = startup.marks()
    assert (first, a, b) == ("", "a", "b") and t0 <= ta <= tb


def test_summary_and_metric_names_round_trip_through_the_benchmark():
    spec = importlib.util.spec_from_file_location("startup_bench", Path(__file__).parents[3] / "benchmarks" /
                                                  "startup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    spans = startup.breakdown(DRIVER, WORKER)
    line = "[pid] " + startup.summary(spans, "launch to first step")
    assert bench.parse(line) == pytest.approx(dict(spans))
    assert startup.metric_name("run record, MLflow run") == "startup/run_record_mlflow_run_s"
    assert startup.metric_name(startup.RAY_TRAIN) == "startup/ray_train_controller_and_worker_processes_s"
