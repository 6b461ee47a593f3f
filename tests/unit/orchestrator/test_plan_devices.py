"""`sciscale plan SPEC --max-memory ...`: the inference device map, built on the meta device; bad budgets exit 2."""

from __future__ import annotations

import yaml

from orchestrator.cli import main

SPEC = {"name": "p", "model": {"family": "weather", "arch": "climax", "size": "B", "grid": [32, 64],
                               "variables": ["geopotential_500", "2m_temperature"]},
        "data": {"train": [{"url": "s3://bucket/x"}]},
        "train": {"global_batch_size": 16, "micro_batch_size": 2, "max_steps": 1}}


def _spec(tmp_path) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return str(path)


def test_plan_prints_the_device_map_and_bytes_per_device(tmp_path, capsys):
    assert main(["plan", _spec(tmp_path), "--max-memory", "0=60MB,cpu=200MB,disk"]) == 0
    out = capsys.readouterr().out
    assert "batch decomposition" in out  # the training plan is still there
    device_map = out.split("device map for max_memory 0=0.056 GiB, cpu=0.186 GiB, disk:\n", 1)[1]
    lines = {line.split("->")[0].strip(): line.split("->")[1].split()[0] for line in device_map.splitlines()
             if "->" in line}
    assert lines["patch_weight"] == "0" and lines["blocks.{0..1}"] == "cpu" and lines["blocks.{2..7}"] == "disk"
    assert "\nbytes per device: 0: 53,248 B, cpu: 0.109 GiB, disk: 0.291 GiB" in device_map and "note:" not in out


def test_plan_says_when_the_model_needs_disk_that_was_not_allowed(tmp_path, capsys):
    assert main(["plan", _spec(tmp_path), "--max-memory", "0=60MB,cpu=100MB"]) == 0
    assert "fit in no budget: allow disk offload (add disk) or raise a budget" in capsys.readouterr().out


def test_bad_budget_is_one_screen_exit_2(tmp_path, capsys):
    assert main(["plan", _spec(tmp_path), "--max-memory", "0=20GiB,cpu=lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --max-memory '0=20GiB,cpu=lots': cpu: 'lots' is not a size") and "Traceback" not in err
