"""Failure handling inside a worker: attempt records, rolled-back batches, preemption notices."""

from __future__ import annotations

import json
import time


class RollBack(RuntimeError):
    """Raised on every rank to restart the worker group from the last checkpoint (train.nonfinite=rollback)."""


def _skip_file(run: dict):
    from orchestrator.runs import runs_fs

    fs, root = runs_fs(run["runs_root"], run.get("storage"))
    return fs, f"{root}/{run['run_id']}/sciscale/skip_steps.json"


def read_skip_steps(run: dict) -> set[int]:
    """Steps whose batch is skipped because a non-finite loss rolled the run back there."""
    fs, path = _skip_file(run)
    if not fs.exists(path):
        return set()
    with fs.open(path, "r") as f:
        return set(json.load(f))


def add_skip_step(run: dict, step: int) -> None:
    fs, path = _skip_file(run)
    steps = sorted(read_skip_steps(run) | {step})
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(steps, f)


def preemption_notice():
    """Ray Train's preemption info (a barrier over workers), or None when Ray offers none."""
    try:
        import ray.train

        return ray.train.get_preemption_info()
    except (AttributeError, RuntimeError):  # outside a Ray Train worker (tests, benchmarks)
        return None


def utc_stamp() -> str:
    """Now as 2026-11-25T10:00:00.123Z: the time format of the event tags `sciscale status` sorts."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def _sciscale_path(run: dict, name: str):
    from orchestrator.runs import runs_fs

    fs, root = runs_fs(run["runs_root"], run.get("storage"))
    return fs, f"{root}/{run['run_id']}/sciscale/{name}"


def request_checkpoint(run: dict, reason: str) -> None:
    """Ask the workers for a checkpoint at their next preemption check (the driver got SIGTERM)."""
    fs, path = _sciscale_path(run, "checkpoint_request.json")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump({"time": time.time(), "reason": reason}, f)


def checkpoint_request(run: dict) -> dict | None:
    fs, path = _sciscale_path(run, "checkpoint_request.json")
    try:
        with fs.open(path, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def clear_checkpoint_request(run: dict) -> None:
    for name in ("checkpoint_request.json", "checkpoint_request_done.json"):
        fs, path = _sciscale_path(run, name)
        if fs.exists(path):
            fs.rm(path)


def acknowledge_checkpoint_request(run: dict, step: int) -> None:
    fs, path = _sciscale_path(run, "checkpoint_request_done.json")
    with fs.open(path, "w") as f:
        json.dump({"step": step, "time": time.time()}, f)


def committed_step(run: dict) -> int | None:
    """The step of the latest checkpoint Ray Train has registered (its checkpoint manager snapshot), or None."""
    from orchestrator.runs import runs_fs

    fs, root = runs_fs(run["runs_root"], run.get("storage"))
    try:
        with fs.open(f"{root}/{run['run_id']}/checkpoint_manager_snapshot.json", "r") as f:
            return int(json.load(f)["latest_checkpoint_result"]["metrics"]["step"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def requested_checkpoint_committed(run: dict) -> int | None:
    """The step of the requested checkpoint once Ray Train has registered it (else None)."""
    fs, done = _sciscale_path(run, "checkpoint_request_done.json")
    if not fs.exists(done):
        return None
    with fs.open(done, "r") as f:
        step = json.load(f)["step"]
    latest = committed_step(run)
    return step if latest is not None and latest >= step else None


def record_attempt(logger, step: int, world: int, saved_world: int) -> None:
    """One tag per worker-group start: when, from which step, at which world size (restarts, resizes)."""
    client, run_id = logger.client, logger.run_id
    tags = client.get_run(run_id).data.tags
    starts = sorted(k for k in tags if k.startswith("sciscale.group_start."))
    n = len(starts)
    cause = "first start" if n == 0 and step == 0 else ("resized" if saved_world != world else "restart")
    client.set_tag(run_id, f"sciscale.group_start.{n:03d}",
                   f"{utc_stamp()} step={step} world_size={world} cause={cause}")
    client.set_tag(run_id, "sciscale.group_starts", str(n + 1))
    logger.skip_through(step)


def write_audit(run: dict, lines: list[dict]) -> None:
    """Append audit lines as a new object (object stores have no append): samples/steps-FIRST-LAST.jsonl."""
    from orchestrator.runs import runs_fs

    fs, root = runs_fs(run["runs_root"], run.get("storage"))
    base = f"{root}/{run['run_id']}/sciscale/samples"
    fs.makedirs(base, exist_ok=True)
    name = f"{base}/steps-{lines[0]['step']:09d}-{lines[-1]['step']:09d}-{int(time.time() * 1000)}.jsonl"
    with fs.open(name, "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))


def batch_digest(ids) -> str:
    """The audit's record of one global batch: a hash of its sorted sample ids (the same for every world size)."""
    import hashlib

    import numpy as np

    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()[:16]


def read_audit(runs_root: str, run_id: str, storage=None) -> dict[int, str]:
    """step -> sample-id hash; a replayed step keeps its latest record."""
    from orchestrator.runs import runs_fs

    fs, root = runs_fs(runs_root, storage)
    out: dict[int, str] = {}
    for path in sorted(fs.glob(f"{root}/{run_id}/sciscale/samples/*.jsonl"), key=lambda p: p.rsplit("-", 1)[-1]):
        with fs.open(path, "r") as f:
            for line in f:
                record = json.loads(line)
                out[record["step"]] = record["ids"]
    return out


def describe_failure(rank: int, exc: BaseException) -> str:
    """One line for the failure timeline; a worker's WorkerFailure (inside Ray's traceback wrapper) names its
    original type and step."""
    exc = getattr(exc, "_base_exc", exc)
    name, text = getattr(exc, "type_name", type(exc).__name__), getattr(exc, "message", str(exc))
    step = f" at step {exc.step}" if getattr(exc, "step", None) is not None else ""
    first = (text.strip().splitlines() or [""])[0]
    return f"rank {rank}{step}: {name}: {first[:300]}"


def record_failure(run: dict, worker_exceptions: dict) -> None:
    """A worker-group failure as an MLflow tag ``sciscale.failure.<time>``, without blocking the caller (the
    Train controller) when the tracking server is down; it is also printed to the job log."""
    import threading

    stamp = utc_stamp()
    text = "; ".join(describe_failure(rank, exc) for rank, exc in sorted(worker_exceptions.items()))
    print(f"worker failure at {stamp}: {text}", flush=True)
    from trainers.progress import ProgressSender

    ProgressSender(run.get("run_id"))("note", text=f"worker failure: {text}")
    if not run.get("mlflow_run_id"):
        return

    def send() -> None:
        try:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=run["tracking_uri"]).set_tag(run["mlflow_run_id"], f"sciscale.failure.{stamp}",
                                                                   text[:5000])
        except Exception as exc:  # noqa: BLE001 - tracking is best effort here; the job log has the line
            print(f"could not record the failure in MLflow: {exc}", flush=True)

    threading.Thread(target=send, name="sciscale-failure-tag", daemon=True).start()
