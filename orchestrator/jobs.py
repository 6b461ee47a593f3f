"""`sciscale status | logs | stop | ls`: runs in a runs root and jobs on a Ray cluster."""

from __future__ import annotations

import os
import sys
import time

from orchestrator.cluster import job_client
from orchestrator.runs import (RunState, absolute_root, failure_lines, finish_run, list_runs, mlflow_client,
                               read_record)


def _cluster(args) -> str:
    address = args.cluster or os.environ.get("SCISCALE_CLUSTER")
    if not address:
        raise ValueError("no cluster given. Hint: pass --cluster http://HEAD:8265 or export SCISCALE_CLUSTER")
    return address


def _client(args):
    return job_client(_cluster(args))


def _job_info(client, job_id: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        raise ValueError(f"no job {job_id!r} on the cluster ({exc}). Hint: `sciscale ls --cluster ...`") from None


def cmd_status(args) -> int:
    if args.cluster or os.environ.get("SCISCALE_CLUSTER"):
        client = _client(args)
        info = _job_info(client, args.target)
        meta = info.metadata or {}
        print(f"job {args.target}: {info.status.value}")
        if info.message:
            print(f"  message: {info.message}")
        for key in ("sciscale_run_id", "mlflow_run_id", "tracking_uri"):
            if key in meta:
                print(f"  {key}: {meta[key]}")
        if meta.get("mlflow_run_id") and meta.get("tracking_uri"):
            _print_events(mlflow_client(meta["tracking_uri"]).get_run(meta["mlflow_run_id"]).data.tags)
        return 0
    record = read_record(absolute_root(args.runs_root), args.target)
    if record is None:
        raise ValueError(f"no run {args.target!r} in runs root {absolute_root(args.runs_root)}. Hint: "
                         "`sciscale ls` lists runs; pass --cluster for a job id")
    run = mlflow_client(record.tracking_uri).get_run(record.mlflow_run_id)
    if record.kind == "sweep":
        return _sweep_status(record, run)
    print(f"run {record.run_id}: {run.info.status} (attempt {record.attempts + 1})")
    print(f"  mlflow run: {record.mlflow_run_id} at {record.tracking_uri}")
    latest = {k: v for k, v in run.data.metrics.items() if k.startswith(("train/loss", "val/"))}
    for key, value in sorted(latest.items()):
        print(f"  {key}: {value:.5g}")
    if record.job_id:
        print(f"  job: {record.job_id} on {record.cluster}")
    _print_events(run.data.tags)
    _print_failure(record.run_id, run)
    return 0


def _sweep_status(record, run) -> int:
    """A sweep: its parent run, the trial table and the best trial (orchestrator/sweep_report.py)."""
    from orchestrator.sweep import read_base
    from orchestrator.sweep_report import table_lines, trials

    sweep = read_base(record)["sweep"]
    params, metric, mode = list(sweep["parameters"]), sweep.get("metric", "val/loss"), sweep.get("mode", "min")
    print(f"sweep {record.run_id}: {run.info.status} ({sweep.get('method', 'grid')}, attempt {record.attempts + 1})")
    print(f"  mlflow parent run: {record.mlflow_run_id} at {record.tracking_uri}")
    rows = trials(record, params, metric, mode)
    print(f"  trials: {len(rows)} ({sum(r['status'] == 'FINISHED' for r in rows)} finished)")
    for line in table_lines(rows, params, metric):
        print("    " + line)
    if "sciscale.best_run_id" in run.data.tags:
        print(f"  best: {run.data.tags['sciscale.best_run_id']} ({run.data.tags.get('sciscale.best_params', '')})")
    return 0


def _print_failure(run_id: str, run) -> None:
    """A FAILED run's cause: type, message, rank, step and where the logs are (the tag `sciscale.error`)."""
    import json

    text = run.data.tags.get("sciscale.error")
    if run.info.status != "FAILED" or not text and "sciscale.end_reason" not in run.data.tags:
        return
    error = json.loads(text) if text else {"type": "error", "message": run.data.tags["sciscale.end_reason"]}
    print("\n".join("  " + line for line in failure_lines(run_id, error)))


def _print_events(tags: dict[str, str]) -> None:
    timeline = events(tags)
    if timeline:
        print("  events (UTC):")
        for when, what in timeline:
            print(f"    {when}  {what}")


def events(tags: dict[str, str]) -> list[tuple[str, str]]:
    """Worker-group starts (restarts, resizes) and worker failures from a run's tags, oldest first."""
    out = []
    for key, value in tags.items():
        if key.startswith("sciscale.group_start."):
            when, _, rest = value.partition(" ")
            out.append((when, f"group start: {rest}"))
        elif key.startswith("sciscale.failure."):
            out.append((key[len("sciscale.failure."):], f"failure: {value}"))
    return sorted(out)


def cmd_logs(args) -> int:
    if not (args.cluster or os.environ.get("SCISCALE_CLUSTER")):
        return _run_logs(args)
    args.job_id = args.target
    client = _client(args)
    _job_info(client, args.job_id)
    if not args.follow:
        sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(args.job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    return 0


def _run_logs(args) -> int:
    """The driver and worker logs a run keeps under RUNS_ROOT/RUN_ID/sciscale/logs/ (every attempt appends)."""
    from orchestrator.runs import runs_fs

    root = absolute_root(args.runs_root)
    if read_record(root, args.target) is None:
        raise ValueError(f"no run {args.target!r} in runs root {root}. Hint: `sciscale ls` lists runs; pass "
                         "--cluster ADDRESS for the logs of a cluster job")
    fs, base = runs_fs(root)
    logs = f"{base}/{args.target}/sciscale/logs"
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{logs}/*.log"))
    names = [n for n in names if args.rank is None or n == f"worker-rank{args.rank}.log"]
    if not names:
        raise ValueError(f"run {args.target} has no logs{' of rank ' + str(args.rank) if args.rank is not None else ''}"
                         f" in {logs}. Hint: runs launched before sciscale kept logs there have none")
    for name in names:
        print(f"==> {logs}/{name} <==")
        with fs.open(f"{logs}/{name}", "r") as f:
            sys.stdout.write(f.read())
    if args.follow:
        if "://" in root:
            raise ValueError(f"--follow needs a local runs root; {root} is remote (run `sciscale logs` again)")
        _follow_local([f"{logs}/{n}" for n in names])
    return 0


def _follow_local(paths: list[str]) -> None:
    """tail -f for local log files (Ctrl-C to stop)."""
    files = [open(p) for p in paths]
    for f in files:
        f.seek(0, os.SEEK_END)
    while True:
        quiet = True
        for path, f in zip(paths, files):
            text = f.read()
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
                quiet = False
        if quiet:
            time.sleep(0.5)


def cmd_stop(args) -> int:
    """Stop a cluster job and mark its MLflow run KILLED once the job has ended."""
    client = _client(args)
    info = _job_info(client, args.job_id)
    client.stop_job(args.job_id)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        status = client.get_job_status(args.job_id)
        if status.is_terminal():
            break
        time.sleep(1)
    meta = info.metadata or {}
    if "sciscale_run_id" in meta:
        record = read_record(meta["runs_root"], meta["sciscale_run_id"])
        if record is not None:
            finish_run(record, RunState.KILLED, f"sciscale stop {args.job_id}")
    print(f"job {args.job_id}: {client.get_job_status(args.job_id).value}; MLflow run "
          f"{meta.get('mlflow_run_id', '?')} KILLED")
    return 0


def cmd_ls(args) -> int:
    if args.models:
        from orchestrator.registry import handle_ls_models

        return handle_ls_models(args)
    if args.cluster or os.environ.get("SCISCALE_CLUSTER"):
        for job in _client(args).list_jobs():
            meta = job.metadata or {}
            print(f"{job.submission_id or job.job_id}\t{job.status.value}\t{meta.get('sciscale_run_id', '-')}")
        return 0
    root = absolute_root(args.runs_root)
    records = list_runs(root)
    if not records:
        print(f"no runs in {root}")
    for rec in records:
        try:
            status = mlflow_client(rec.tracking_uri).get_run(rec.mlflow_run_id).info.status
        except Exception as exc:  # noqa: BLE001 - an unreachable tracking server should not hide the list
            status = f"unknown ({type(exc).__name__})"
        kind = "\tsweep" if rec.kind == "sweep" else ""
        print(f"{rec.run_id}\t{status}{kind}\tattempts={rec.attempts + 1}\tmlflow={rec.mlflow_run_id}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("status", help="state of a run (runs root) or of a cluster job (--cluster)")
    p.add_argument("target", help="run id, or job id with --cluster")
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--cluster", metavar="ADDRESS")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="a run's driver and worker logs (runs root), or a cluster job's (--cluster)")
    p.add_argument("target", help="run id, or job id with --cluster")
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--rank", type=int, default=None, help="only this worker's log (runs root)")
    p.add_argument("--cluster", metavar="ADDRESS")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as the logs grow (Ctrl-C to stop)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a cluster job; its MLflow run ends KILLED")
    p.add_argument("job_id")
    p.add_argument("--cluster", metavar="ADDRESS")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the job to end")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("ls", help="runs in a runs root, or jobs on a cluster (--cluster)")
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--cluster", metavar="ADDRESS")
    p.add_argument("--models", action="store_true", help="registered models: versions, aliases, eval scores")
    p.set_defaults(func=cmd_ls)
