"""The CLI stays torch-free at start-up; schema, plan and the generated spec reference work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[3]


def test_cli_import_does_not_load_torch():
    code = "import sys, orchestrator.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_schema_is_json_schema_with_descriptions(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "JobSpec"
    train = schema["$defs"]["TrainSpec"]["properties"]
    assert "multiple" in train["micro_batch_size"]["description"] or train["micro_batch_size"]["description"]
    assert set(schema["required"]) >= {"name", "model", "data", "train"}


def test_plan_counts_parameters_and_decomposes_batch(tmp_path, capsys):
    spec = {"name": "p", "model": {"family": "pde", "arch": "fno", "size": "debug", "in_channels": 2, "resolution": 32},
            "data": {"train": [{"url": "s3://bucket/x"}]},
            "train": {"global_batch_size": 16, "micro_batch_size": 2, "max_steps": 1},
            "distributed": {"workers": {"min": 1, "max": 2}, "zero_stage": 3}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "world 1: 16 = 2 x 8 x 1" in out and "world 2: 16 = 2 x 4 x 2" in out
    assert "<- spec" in out


def test_data_convert_and_generate_help_list_every_tool(capsys):
    from data.converters import CONVERTER_MODULES
    from data.generators import GENERATOR_MODULES

    for tool, modules in (("convert", CONVERTER_MODULES), ("generate", GENERATOR_MODULES)):
        assert main(["data", tool, "--help"]) == 0
        out = capsys.readouterr().out
        for name in modules:
            line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
            assert line.rstrip().endswith("."), f"{tool} {name}: summary is not one whole sentence: {line!r}"
    assert main(["data", "convert"]) == 2  # no name: the list, and a usage error


def test_ui_stops_its_mlflow_server_when_stopped(tmp_path):
    """SIGTERM to `sciscale ui` stops `mlflow server` and its uvicorn worker (its whole process group)."""
    import os
    import signal
    import time
    import urllib.request

    import mlflow

    from orchestrator.services import free_port

    mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # create the store
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--runs-root", str(tmp_path), "--port",
                           str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            assert ui.poll() is None and time.monotonic() < deadline, "the MLflow UI did not come up"
            time.sleep(0.5)
    import psutil

    group = {p.pid for p in psutil.Process(ui.pid).children(recursive=True)}
    assert group, "no mlflow server process under `sciscale ui`"
    ui.send_signal(signal.SIGTERM)
    assert ui.wait(timeout=60) == 130
    time.sleep(0.5)
    alive = [p for p in group if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes of the MLflow server outlived `sciscale ui`: {alive}"


def test_spec_reference_is_current():
    from orchestrator.specdoc import render_spec_doc

    assert (ROOT / "docs" / "spec.md").read_text() == render_spec_doc(), \
        "docs/spec.md is stale: run `python -m orchestrator.specdoc > docs/spec.md`"
