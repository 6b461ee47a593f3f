"""Writes real DeepSpeed checkpoints the way workers do (trainers/ds.py + trainers/checkpoint.py), on CPU.

One process per rank: ``python ds_checkpoint_writer.py ROOT WORLD RANK PORT STAGES [PRECISION]``. For each ZeRO
stage in STAGES (e.g. 0123) it builds the debug scOT of ``SPEC``, takes two optimizer steps, saves to a local
directory of its own and copies the files into the run directory ROOT/zeroS/checkpoint_000000/, its commit
file last (as trainers/worker.py uploads). Rank 0 also writes the run's resolved spec
(ROOT/zeroS/sciscale/spec.yaml) and the engine's own gathered fp32 weights (ROOT/zeroS/expected.safetensors):
what the consolidated checkpoint must equal.
"""

from __future__ import annotations

import os
import shutil
import sys

SPEC = {
    "name": "ckpt-test",
    "model": {"family": "pde", "arch": "scot", "size": "debug", "in_channels": 2, "resolution": 32},
    "data": {"train": [{"url": "/nonexistent/train"}], "canonical_streams": 2},
    "train": {"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 10},
    "distributed": {"workers": 1},
}
STEP = 2


def job_spec(world: int, stage: int, precision: str = "fp32"):
    from orchestrator.specload import validate_spec

    return validate_spec({**SPEC, "train": {**SPEC["train"], "precision": precision},
                          "distributed": {"workers": world, "zero_stage": stage}})


def main(root: str, world: int, rank: int, port: int, stages: str, precision: str = "fp32") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for stage in stages:
        _one_stage(os.path.join(root, f"zero{stage}"), world, rank, int(stage), precision)
    dist.destroy_process_group()


def _one_stage(run_dir: str, world: int, rank: int, stage: int, precision: str) -> None:
    import torch
    from safetensors.torch import save_file

    from models import load_family
    from orchestrator.specload import dump_spec
    from trainers import checkpoint, ds, weights

    spec = job_spec(world, stage, precision)
    family = load_family("pde")
    torch.manual_seed(0)
    engine, _, _ = ds.initialize(family.build_model(spec.model), spec.train, spec.optim, spec.distributed, world)
    torch.manual_seed(1 + rank)
    for _ in range(STEP * ds.grad_accumulation(spec.train, world)):
        batch = family.example_batch(spec.model, spec.train.micro_batch_size)
        if precision == "bf16":
            batch = {k: v.bfloat16() if v.is_floating_point() else v for k, v in batch.items()}
        engine.backward(family.loss(engine(batch), batch, spec.model))
        engine.step()
    local = os.path.join(run_dir, f"local-rank{rank}")
    checkpoint.save(engine, local, STEP, rank, world, stage, None)
    _upload(local, os.path.join(run_dir, "checkpoint_000000"))
    state = weights.gather_fp32_state(engine, stage, rank)  # a collective under ZeRO-3
    if rank == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(run_dir, "expected.safetensors"))
        os.makedirs(os.path.join(run_dir, "sciscale"), exist_ok=True)
        with open(os.path.join(run_dir, "sciscale", "spec.yaml"), "w") as f:
            f.write(dump_spec(spec))


def _upload(local: str, target: str) -> None:
    from trainers.checkpoint import COMMIT_PREFIX

    names = [os.path.relpath(os.path.join(base, n), local) for base, _, files in os.walk(local) for n in files]
    for rel in sorted(names, key=lambda n: n.startswith(COMMIT_PREFIX)):  # commit file last
        os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(local, rel), os.path.join(target, rel))
    shutil.rmtree(local)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], *sys.argv[6:])
