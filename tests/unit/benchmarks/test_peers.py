"""benchmarks/peers.py: the step clock that times a peer trainer's own command (issue 16's peer benchmarks)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402

PEER = """
import time, torch
w = torch.nn.Parameter(torch.zeros(3))
opt = torch.optim.SGD([w], lr=0.1)
time.sleep(0.3)  # the peer's start-up
for i in range(6):
    opt.zero_grad(); (w - 1).square().sum().backward(); opt.step(); time.sleep(0.05)
"""


def test_clock_stamps_every_optimizer_step_of_the_peer_command(tmp_path):
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    got = peers.clocked([str(script)], tmp_path / "stamps.json", skip=2, cwd=tmp_path)
    assert got["steps"] == 6
    assert 0.3 < got["first_step_s"] < got["wall_s"]
    assert 0.045 < got["step_s"] < 0.5  # the gaps after the first two steps: sleep plus the step
