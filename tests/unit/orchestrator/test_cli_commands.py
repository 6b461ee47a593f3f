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


def test_spec_reference_is_current():
    from orchestrator.specdoc import render_spec_doc

    assert (ROOT / "docs" / "spec.md").read_text() == render_spec_doc(), \
        "docs/spec.md is stale: run `python -m orchestrator.specdoc > docs/spec.md`"
