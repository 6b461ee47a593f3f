"""Driver for test_infra_two_node.py: a 2-worker Ray Train (v2) TorchTrainer job on an existing cluster.

Run as ``python two_node_driver.py RAY_ADDRESS WORKDIR STEPS``. Each step is a real DDP (gloo) step of a
small model; rank 0 appends {step, world, nodes} to WORKDIR/progress.jsonl so the test can see where the
workers landed and when to kill a node. The worker count is elastic (1..2) with one restart allowed, so
losing a node lets the run continue from its last checkpoint with the workers that still fit. Prints one
JSON line: {"error": ..., "metrics": ...}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def train_fn(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"))
        model.module.load_state_dict(state["model"]) if hasattr(model, "module") else model.load_state_dict(
            state["model"])
        start = state["step"]
    node = ray.get_runtime_context().get_node_id()
    nodes = [None] * ctx.get_world_size()
    dist.all_gather_object(nodes, node)
    for step in range(start + 1, config["steps"] + 1):
        x = torch.randn(16, 8)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(config["step_s"])  # room for the test to kill a node mid-run
        metrics = {"step": step, "loss": float(loss), "world": ctx.get_world_size()}
        if ctx.get_world_rank() == 0:
            with open(os.path.join(config["workdir"], "progress.jsonl"), "a") as f:
                f.write(json.dumps({**metrics, "nodes": nodes}) + "\n")
            with tempfile.TemporaryDirectory() as d:
                inner = model.module if hasattr(model, "module") else model
                torch.save({"model": inner.state_dict(), "step": step}, os.path.join(d, "state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def main(address: str, workdir: str, steps: int) -> None:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    trainer = TorchTrainer(
        train_fn, train_loop_config={"steps": steps, "step_s": 1.0, "workdir": workdir},
        # one "slot" per node pins one worker to each node while both are alive
        scaling_config=ScalingConfig(num_workers=(1, 2), resources_per_worker={"CPU": 1, "slot": 1},
                                     elastic_resize_monitor_interval_s=5.0),
        run_config=RunConfig(name="two-node", storage_path=os.path.join(workdir, "storage"),
                             failure_config=FailureConfig(max_failures=1),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    try:
        result = trainer.fit()
        out = {"error": None if result.error is None else repr(result.error), "metrics": result.metrics}
    except Exception as exc:  # noqa: BLE001 - the test asserts on the message
        out = {"error": f"{type(exc).__name__}: {exc}", "metrics": None}
    print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
