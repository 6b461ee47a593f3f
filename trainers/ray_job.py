"""Build and run the Ray Train v2 TorchTrainer for a spec (driver side; imports torch through Ray)."""

from __future__ import annotations

import contextlib
import os

from orchestrator.runs import RunRecord, run_context
from orchestrator.spec import JobSpec


def scaling_config(spec: JobSpec):
    from ray.train import ScalingConfig

    d = spec.distributed
    workers = d.workers if isinstance(d.workers, int) else (d.workers.min, d.workers.max)
    resources = dict(d.resources_per_worker)
    if d.use_gpu:
        resources.setdefault("GPU", 1)
    return ScalingConfig(num_workers=workers, use_gpu=d.use_gpu, resources_per_worker=resources,
                         elastic_resize_monitor_interval_s=d.resize_check_s)


def storage(record: RunRecord, spec: JobSpec):
    """(storage_path, storage_filesystem) for Ray Train, from the one storage layer."""
    from data.storage import arrow_filesystem

    filesystem, path = arrow_filesystem(record.runs_root, spec.storage)
    return path, filesystem


def _failure_recorder_class():
    from ray.train import UserCallback

    class FailureRecorder(UserCallback):
        """Runs in the Train controller: records every worker failure as an MLflow tag (see `sciscale status`)."""

        def __init__(self, run: dict):
            self.run = run

        def after_exception(self, run_context, worker_exceptions: dict) -> None:
            from trainers.resilience import record_failure

            record_failure(self.run, worker_exceptions)

    return FailureRecorder


def FailureRecorder(run: dict):  # noqa: N802 - builds the callback without importing Ray at module import
    return _failure_recorder_class()(run)


def fit(spec: JobSpec, record: RunRecord, run: dict | None = None, callbacks: list | None = None) -> dict:
    """Run training to the end; returns the last reported metrics. ``run`` is the context the workers get
    (orchestrator.runs.run_context); ``callbacks`` are more Train callbacks (a sweep's TuneReportCallback)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainers.worker import train_loop

    from orchestrator import startup

    storage_path, filesystem = storage(record, spec)
    run = {**(run or run_context(record, spec)), "startup": startup.marks()}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "run": run},
        torch_config=TorchConfig(backend="nccl" if spec.distributed.use_gpu else "gloo",
                                 timeout_s=spec.distributed.timeout_s),
        scaling_config=scaling_config(spec),
        run_config=RunConfig(
            name=record.run_id,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=spec.distributed.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.train.keep_checkpoints),
            worker_runtime_env={"env_vars": _worker_env(spec)},
            callbacks=[FailureRecorder(run), *(callbacks or [])],
        ),
    )
    with _sciscale_failure_policy():
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    return dict(result.metrics or {})


@contextlib.contextmanager
def _sciscale_failure_policy():
    """Ray Train v2 builds its failure policy with ``create_failure_policy(failure_config)`` inside
    ``DataParallelTrainer.fit`` and offers no setting for it: swap in trainers/failure_policy.py for the call
    (tests/unit/trainers/test_trainer_failures.py checks that this hook still exists in the pinned Ray)."""
    from ray.train.v2.api import data_parallel_trainer

    from trainers.failure_policy import SciscaleFailurePolicy

    original = data_parallel_trainer.create_failure_policy
    data_parallel_trainer.create_failure_policy = SciscaleFailurePolicy
    try:
        yield
    finally:
        data_parallel_trainer.create_failure_policy = original


def _worker_env(spec: JobSpec) -> dict[str, str]:
    from trainers.faults import ENV_VARS

    env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}  # fault injection for chaos tests
    # Ray Train copies every print() of a worker to its console logger too: each line would appear twice
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
    if not spec.distributed.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
        threads = spec.distributed.resources_per_worker.get("CPU", 1)
        env.setdefault("OMP_NUM_THREADS", str(max(1, int(threads))))
    return env
