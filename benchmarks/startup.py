"""Launch to first step, phase by phase: the quickstart spec (or another) launched N times on local Ray, each
launch's breakdown read from the ``startup:`` line rank 0 prints at its first step (orchestrator/startup.py).

    python benchmarks/startup.py --repeats 3

Prints each launch's total and the per-phase medians; `--json` writes them. The venv and DeepSpeed's CPU op
should already be built (the first launch after a fresh venv also compiles it)."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"startup: (?:launch|worker start) to first step ([0-9.]+) s = (.*)")


def parse(line: str) -> dict[str, float]:
    """{phase: seconds} from one ``startup:`` line."""
    match = LINE.search(line)
    if not match:
        raise ValueError(f"not a startup line: {line!r}")
    phases = {}
    for part in match.group(2).split(" + "):
        phase, seconds = part.rsplit(" ", 1)
        phases[phase] = float(seconds)
    return phases


def launch_once(spec: str, work: Path, index: int, extra: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """One launch; (wall time to the end of the run, phases)."""
    run_id = f"startup-{index}"
    cmd = [sys.executable, "-m", "orchestrator.cli", "launch", spec, "--run-id", run_id,
           "--set", f"data.train.0.url={work}/data/train", "--set", f"data.val.0.url={work}/data/val",
           "--set", f"storage.runs_root={work}/runs", "--set", f"tracking.uri=sqlite:///{work}/mlflow.db", *extra]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"launch {index} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    log = (work / "runs" / run_id / "sciscale" / "logs" / "worker-rank0.log").read_text()
    lines = [line for line in log.splitlines() if LINE.search(line)]
    return wall, parse(lines[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "quickstart.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="more --set overrides for each launch")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE,...",
                    help="compare: launches alternate between these environments (e.g. nice15:RAY_worker_niceness=15)")
    ap.add_argument("--json", help="write the launches and medians here")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sciscale-startup-"))
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "data", "generate", "navier-stokes", "--out",
                    str(work / "data"), "--n-train", "96", "--n-val", "16", "--resolution", "32", "--seed", "0"],
                   cwd=ROOT, check=True, capture_output=True)
    extra = [x for s in args.set for x in ("--set", s)]
    variants = [_variant(v) for v in args.variant] or [("as is", {})]
    launches = []
    for i in range(args.repeats * len(variants)):
        name, env = variants[i % len(variants)]
        load = os.getloadavg()[0]
        wall, phases = launch_once(args.spec, work, i, extra, env)
        total = sum(phases.values())
        launches.append({"variant": name, "load_avg_1m": load, "first_step_s": total, "run_wall_s": wall,
                         "phases": phases})
        print(f"launch {i + 1} ({name}): first step {total:.1f} s after launch (load average {load:.1f} before), "
              f"run {wall:.1f} s", flush=True)
    for name, _ in variants:
        table([x for x in launches if x["variant"] == name], name)
    if args.json:
        Path(args.json).write_text(json.dumps({"launches": launches}, indent=1))
    return 0


def _variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    return name, dict(a.split("=", 1) for a in assignments.split(",") if a)


def table(launches: list[dict], name: str) -> None:
    names = list(dict.fromkeys(p for x in launches for p in x["phases"]))
    medians = {p: statistics.median(x["phases"].get(p, 0.0) for x in launches) for p in names}
    print(f"\n{name}:\n| phase | median s (of {len(launches)}) | min-max |\n|---|---|---|")
    for p in names:
        values = [x["phases"].get(p, 0.0) for x in launches]
        print(f"| {p} | {medians[p]:.1f} | {min(values):.1f}-{max(values):.1f} |")
    totals = [x["first_step_s"] for x in launches]
    print(f"| **launch to first step** | **{statistics.median(totals):.1f}** | {min(totals):.1f}-{max(totals):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
