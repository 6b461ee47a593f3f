"""benchmarks/gpu_check.py --cpu-smoke (issue 16): every path of the GPU check runs on CPU at debug sizes, so
the script is known to work before a GPU machine is lent: the three pretraining models through the family
builders, the FLOP counter and a DeepSpeed ZeRO-2 engine, and the all-reduce over spawned ranks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_cpu_smoke_fills_every_row(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    *models, allreduce = result["rows"]
    assert [r["model"] for r in models] == ["scOT-B", "ClimaX-B", "EScAIP-H512L10"]
    errors = {r["model"]: r["error"] for r in result["rows"] if "error" in r}
    assert not errors, errors
    for row in models:
        assert row["step_ms"] > 0 and row["gflop"] > 0 and row["tflops"] > 0, row
        # the class DeepSpeed built around the optimizer it was given or built, e.g. DeepSpeedZeroOptimizer(AdamW)
        assert re.fullmatch(r"DeepSpeedZeroOptimizer\(\w*Adam\w*\)", row["optimizer"]), row
    assert allreduce["model"] == "all-reduce gloo" and allreduce["batch"] == 2 and allreduce["bus_GBps"] > 0
    assert "scOT-B" in proc.stdout and "all-reduce gloo" in proc.stdout  # the table is printed
