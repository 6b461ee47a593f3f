"""The launch-to-first-step timeline: the driver and each worker mark the end of their start-up phases in wall
time; rank 0 prints the breakdown at its first step and logs it to MLflow (``startup/*`` metrics). Kept free of
torch so that the driver can mark its phases from the first line of the CLI on."""

from __future__ import annotations

import os
import re
import time

_MARKS: list[tuple[str, float]] = []  # this process's (phase, wall time its end was reached), in order


def process_started() -> float:
    """Wall time at which this process started (so Python's own start and the first imports count too)."""
    try:
        import psutil

        return psutil.Process(os.getpid()).create_time()
    except Exception:  # noqa: BLE001 - a clock read must never fail a launch
        return time.time()


def mark(phase: str) -> None:
    """Record that ``phase`` ended now (the first mark of a process also records when the process started)."""
    if not _MARKS:
        _MARKS.append(("", process_started()))
    _MARKS.append((phase, time.time()))


def marks() -> list[tuple[str, float]]:
    return list(_MARKS)


def breakdown(driver: list, worker: list) -> list[tuple[str, float]]:
    """(phase, seconds): the driver's phases, then the worker's, each the time since the mark before. The span
    from the driver's last mark (it called Ray Train's fit) to this worker process's start is Ray Train's own: its
    controller actor and the worker group's processes. Without driver marks (a sweep's trial) the timeline starts
    at the worker process."""
    entries = list(driver) + ([(RAY_TRAIN, worker[0][1])] if driver else []) + list(worker[1:] if driver else worker)
    return [(phase, max(0.0, at - entries[i][1])) for i, (phase, at) in enumerate(entries[1:])]


RAY_TRAIN = "Ray Train controller and worker processes"


def summary(spans: list[tuple[str, float]], total_label: str) -> str:
    total = sum(s for _, s in spans)
    return f"startup: {total_label} {total:.1f} s = " + " + ".join(f"{p} {s:.1f}" for p, s in spans)


def metric_name(phase: str) -> str:
    return "startup/" + re.sub(r"[^a-z0-9]+", "_", phase.lower()).strip("_") + "_s"
