"""Fault injection for chaos tests and benchmarks: hold workers at a named point so a test can kill one there.

Off unless ``SCISCALE_FAULT_HOLD`` is set in the launch environment (the launch forwards it to the workers).
The value is a comma-separated list of ``POINT@STEP``, POINT one of ``step`` (right after optimizer step
STEP) or ``upload`` (the files of step STEP's checkpoint are uploaded, its commit file not yet). There each
rank writes its pid to ``$SCISCALE_FAULT_DIR/POINT-STEP-rankR.pid`` and waits until
``$SCISCALE_FAULT_DIR/release-POINT-STEP`` exists, at most ``SCISCALE_FAULT_HOLD_S`` seconds (default 600).
A test kills the pid it reads, then writes the release file; workers that reach the point later pass it.
One more POINT holds nothing: ``nan@STEP`` makes the loss of step STEP's first micro-batch NaN on every rank,
to exercise the ``train.nonfinite`` policy.
"""

from __future__ import annotations

import os
import time

ENV_VARS = ("SCISCALE_FAULT_HOLD", "SCISCALE_FAULT_DIR", "SCISCALE_FAULT_HOLD_S")


def hold(point: str, step: int, rank: int) -> None:
    points = os.environ.get("SCISCALE_FAULT_HOLD")
    if not points or f"{point}@{step}" not in points.split(","):
        return
    directory = os.environ["SCISCALE_FAULT_DIR"]
    release = os.path.join(directory, f"release-{point}-{step}")
    if os.path.exists(release):
        return
    path = os.path.join(directory, f"{point}-{step}-rank{rank}.pid")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    print(f"[rank {rank}] fault injection: holding at {point} {step} (pid {os.getpid()})", flush=True)
    deadline = time.monotonic() + float(os.environ.get("SCISCALE_FAULT_HOLD_S", "600"))
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)


def poisoned(step: int) -> bool:
    """Whether the loss of ``step`` is to be made NaN (``nan@STEP`` in ``SCISCALE_FAULT_HOLD``)."""
    points = os.environ.get("SCISCALE_FAULT_HOLD")
    return bool(points) and f"nan@{step}" in points.split(",")
