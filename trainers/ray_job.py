"""Build and run the Ray Train v2 TorchTrainer for a spec (driver side; imports torch through Ray)."""

from __future__ import annotations

import os

from orchestrator.runs import RunRecord
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
    """(storage_path, storage_filesystem) for Ray Train; s3:// roots get a pyarrow S3 filesystem."""
    root = record.runs_root
    if not root.startswith("s3://"):
        return root, None
    from pyarrow import fs as pafs

    endpoint = spec.storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs = {"endpoint_override": host, "scheme": scheme}
    # Ray Train persists its own state (checkpoint registry) here from the controller: a 3 s request timeout
    # and 3 attempts (pyarrow's defaults) turn a short object-store outage into a failed run
    filesystem = pafs.S3FileSystem(access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                   secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                   region=os.environ.get("AWS_REGION", "us-east-1"), request_timeout=60,
                                   connect_timeout=10, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=10),
                                   **kwargs)
    return root[len("s3://"):], filesystem


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


def fit(spec: JobSpec, record: RunRecord) -> dict:
    """Run training to the end; returns the last reported metrics."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainers.worker import train_loop

    storage_path, filesystem = storage(record, spec)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "run": record.__dict__.copy()},
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
            callbacks=[FailureRecorder(record.__dict__.copy())],
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return dict(result.metrics or {})


def _worker_env(spec: JobSpec) -> dict[str, str]:
    from trainers.faults import ENV_VARS

    env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}  # fault injection for chaos tests
    if not spec.distributed.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
        threads = spec.distributed.resources_per_worker.get("CPU", 1)
        env.setdefault("OMP_NUM_THREADS", str(max(1, int(threads))))
    return env
