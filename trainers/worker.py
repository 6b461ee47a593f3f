"""The Ray Train worker function (kept light: torch and the runner load inside the worker)."""

from __future__ import annotations

import os
import random
import time

UPLOAD_RETRY_S = 300.0  # an object store may be down this long before a checkpoint upload fails the attempt


def train_loop(config: dict) -> None:
    """Train on this worker. Its output goes to the run's log file (RUNS_ROOT/RUN_ID/sciscale/logs/); any error
    leaves as a WorkerFailure naming the rank and step and whether a restart could cure it."""
    from orchestrator import startup

    startup.mark("worker setup (Ray actor, torch, gloo rendezvous)")
    import ray.train

    from orchestrator.runs import RunLog
    from trainers.failures import WorkerFailure
    from trainers.tracking import BackgroundMonitor

    rank, run = ray.train.get_context().get_world_rank(), config["run"]
    log = RunLog(run, f"worker-rank{rank}.log", capture=not run.get("verbose"))
    monitor = BackgroundMonitor(run, rank, config["spec"]["tracking"]["system_metrics_every_s"])
    runner = None
    try:
        runner = _build_runner(config, rank)
        runner.run()
    except Exception as exc:  # noqa: BLE001 - every error leaves as a WorkerFailure
        import traceback

        traceback.print_exc()
        raise WorkerFailure.of(exc, rank, runner.step if runner else 0, log.where) from exc
    finally:
        monitor.stop()
        log.close()


def _build_runner(config: dict, rank: int):
    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode

    from orchestrator import startup
    from orchestrator.spec import JobSpec
    from trainers.progress import ProgressSender
    from trainers.runner import Runner

    startup.mark("imports (DeepSpeed, MLflow, model code)")
    ctx = ray.train.get_context()

    def report(metrics: dict, checkpoint_dir: str | None = None, background: bool = False) -> None:
        if checkpoint_dir is None:
            ray.train.report(metrics)
            return
        mode = CheckpointUploadMode.ASYNC if background else CheckpointUploadMode.SYNC
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir), checkpoint_upload_mode=mode,
                         delete_local_checkpoint_after_upload=True,
                         checkpoint_upload_fn=lambda ckpt, name: upload(ckpt, name, rank, int(metrics["step"])))

    spec = JobSpec.model_validate(config["spec"])
    if rank == 0:
        remove_uncommitted(ray.train.get_context().get_storage())
    progress = ProgressSender(config["run"].get("run_id")) if rank == 0 else None
    return Runner(spec, config["run"], rank=rank, world_size=ctx.get_world_size(), report=report,
                  get_checkpoint=ray.train.get_checkpoint, progress=progress)


def upload(checkpoint, dir_name: str, rank: int, step: int):
    """Copy this rank's files into the run's checkpoint directory, its commit file last; retry outages."""
    import ray.train
    from pyarrow import fs as pafs
    from ray.train import Checkpoint

    from trainers import faults
    from trainers.checkpoint import COMMIT_PREFIX

    storage = ray.train.get_context().get_storage()
    target_fs, target = storage.storage_filesystem, storage.build_checkpoint_path_from_name(dir_name)
    local = pafs.LocalFileSystem()
    files, commits = [], []
    for base, _, names in os.walk(checkpoint.path):
        for name in names:
            rel = os.path.relpath(os.path.join(base, name), checkpoint.path)
            (commits if rel.startswith(COMMIT_PREFIX) else files).append(rel)
    for rel in files:
        _copy(local, os.path.join(checkpoint.path, rel), target_fs, f"{target}/{rel}")
    faults.hold("upload", step, rank)
    for rel in commits:
        _copy(local, os.path.join(checkpoint.path, rel), target_fs, f"{target}/{rel}")
    return Checkpoint(target, target_fs)


def _copy(source_fs, source: str, target_fs, target: str) -> None:
    from pyarrow import fs as pafs

    deadline, attempt = time.monotonic() + UPLOAD_RETRY_S, 0
    while True:
        try:
            target_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(source, target, source_filesystem=source_fs, destination_filesystem=target_fs)
            return
        except OSError as exc:
            delay = random.uniform(0, min(10.0, 0.5 * 2 ** attempt))
            if time.monotonic() + delay > deadline:
                raise OSError(f"checkpoint upload of {source} to {target} failed for {UPLOAD_RETRY_S:.0f} s: "
                              f"{exc}. Hint: is the object store at the runs root reachable?") from exc
            print(f"checkpoint upload of {os.path.basename(source)} failed ({exc}); retrying in {delay:.1f} s",
                  flush=True)
            attempt += 1
            time.sleep(delay)


def remove_uncommitted(storage) -> None:
    """At a worker-group start no upload is in flight: delete checkpoint directories an earlier group left
    half-uploaded (no trainer state or a missing commit file). Ray Train never registered them."""
    import json

    from pyarrow import fs as pafs

    from trainers.checkpoint import STATE_FILE, commit_names

    fs, root = storage.storage_filesystem, storage.experiment_fs_path
    entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for entry in entries:
        if entry.type != pafs.FileType.Directory or not entry.base_name.startswith("checkpoint_"):
            continue
        names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(entry.path, allow_not_found=True))}
        complete = STATE_FILE in names
        if complete:
            with fs.open_input_stream(f"{entry.path}/{STATE_FILE}") as f:
                world = int(json.loads(f.read())["world_size"])
            complete = commit_names(world) <= names
        if not complete:
            print(f"removing {entry.path}: a checkpoint upload that never completed", flush=True)
            _delete_dir(fs, entry.path)


def _delete_dir(fs, path: str) -> None:
    """Delete ``path``; clean-up must never fail a worker group's start.

    SeaweedFS (and other filer-backed stores) can keep an empty prefix after its objects are gone: a listing
    shows it as a directory, yet pyarrow's ``delete_dir`` finds no object under it and raises
    FileNotFoundError. Such a prefix holds nothing; Ray Train never registered it, so it is left alone."""
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        print(f"{path} holds no objects (an empty prefix the store still lists); nothing to remove", flush=True)
    except OSError as exc:
        print(f"could not remove {path} ({exc}); it is unregistered, so training goes on", flush=True)
