"""The Ray Train worker function (kept light: torch and the runner load inside the worker)."""

from __future__ import annotations


def train_loop(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    from orchestrator.spec import JobSpec
    from trainers.runner import Runner

    ctx = ray.train.get_context()

    def report(metrics: dict, checkpoint_dir: str | None = None) -> None:
        checkpoint = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    spec = JobSpec.model_validate(config["spec"])
    runner = Runner(spec, config["run"], rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                    report=report, get_checkpoint=ray.train.get_checkpoint)
    runner.run()
