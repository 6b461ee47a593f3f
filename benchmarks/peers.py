"""What the peer benchmarks share (benchmarks/peer_atoms.py, benchmarks/peer_pde.py): one sciscale launch and
one peer run, each reduced to the same figures, so both sides are measured the same way.

- ``launch``: `sciscale launch` as a user runs it; launch to first step is the ``startup:`` line rank 0 prints,
  the step time is the median ``step_time_s`` rank 0 logs (a whole optimizer step, data wait included).
- ``settle``, before either: the previous launch's Ray processes have exited (they took a share of the 2 cores
  from whatever ran next, the peer included, for up to half a minute).
- ``clocked``: a peer's own command in a child process under a step clock: torch's global optimizer-step hook
  stamps every step, so launch to first step is the first stamp less the moment the child was started, and the
  step time is the median gap between consecutive stamps (its data loading included, as in sciscale's).

The clock is this file run as a script: ``python benchmarks/peers.py STAMPS.json -m module args...`` (or a
script path instead of ``-m module``)."""

from __future__ import annotations

import json
import os
import re
import runpy
import statistics
import subprocess
import sys
import time
from pathlib import Path

from startup import LINE as STARTUP  # benchmarks/startup.py: rank 0's startup line, its total in group 1

ROOT = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^step (\d+): .*step_time_s=([0-9.e-]+)")


def step_time(lines: list[str], skip: int) -> float:
    """Median logged step time of rank 0 (its ``step N: ... step_time_s=`` lines) after the first ``skip`` steps."""
    times = [float(m.group(2)) for m in map(STEP.match, lines) if m and int(m.group(1)) > skip]
    if not times:
        raise ValueError(f"no logged step after step {skip}")
    return statistics.median(times)


def settle(timeout_s: float = 90.0, quiet_s: float = 3.0) -> float:
    """Wait until no Ray process (a local Ray's GCS, raylet, dashboard, workers) is left on this machine, then
    ``quiet_s`` more; returns the seconds waited."""
    import psutil

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        names = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
        if not any(("ray::" in n or "/ray/core/src/" in n or "ray/dashboard" in n) for n in names):
            break
        time.sleep(1.0)
    time.sleep(quiet_s)
    return time.monotonic() - started


def launch(spec: str | Path, run_id: str, sets: list[str], work: Path, skip: int) -> dict:
    """One `sciscale launch`; {wall_s, first_step_s, step_s} (step_s: the median logged step time after the
    first ``skip`` steps), the run's directory and the ranks' step profiles (train.profile_steps) if any."""
    argv = [sys.executable, "-m", "orchestrator.cli", "launch", str(spec), "--run-id", run_id,
            "--set", f"storage.runs_root={work}/runs", "--set", f"tracking.uri=sqlite:///{work}/mlflow.db"]
    argv += [x for s in sets for x in ("--set", s)]
    settle()
    started = time.time()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"{run_id} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    run_dir = work / "runs" / run_id
    log = (run_dir / "sciscale" / "logs" / "worker-rank0.log").read_text().splitlines()
    first = [float(m.group(1)) for m in map(STARTUP.search, log) if m]
    if not first:
        raise SystemExit(f"{run_id}: no startup line in {run_dir}")
    profiles = [line for path in sorted((run_dir / "sciscale" / "logs").glob("worker-rank*.log"))
                for line in path.read_text().splitlines() if line.startswith("profile (rank")]
    return {"wall_s": wall, "first_step_s": first[-1], "step_s": step_time(log, skip), "run_dir": str(run_dir),
            "profile": profiles}


def clocked(argv: list[str], stamps: Path, skip: int, cwd: Path, env: dict | None = None) -> dict:
    """A peer's command (``[-m module | script] args...``) under the step clock; the same figures as ``launch``."""
    settle()
    started = time.time()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(stamps), *argv], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"peer {argv[:2]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    times = json.loads(stamps.read_text())
    gaps = [b - a for a, b in zip(times[skip:], times[skip + 1:])]
    if not gaps:
        raise SystemExit(f"peer {argv[:2]}: {len(times)} optimizer steps, none after step {skip}")
    return {"wall_s": wall, "first_step_s": times[0] - started, "step_s": statistics.median(gaps),
            "steps": len(times)}


def _clock(stamps_path: str, argv: list[str]) -> None:
    import atexit

    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list[float] = []
    register_optimizer_step_post_hook(lambda *_: stamps.append(time.time()))
    atexit.register(lambda: Path(stamps_path).write_text(json.dumps(stamps)))
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


def median_of(rows: list[dict], key: str) -> tuple[float, float, float]:
    values = [r[key] for r in rows]
    return statistics.median(values), min(values), max(values)


if __name__ == "__main__":
    _clock(sys.argv[1], sys.argv[2:])
