"""Everything DeepSpeed: config from the spec, optimizer and schedule, ``deepspeed.initialize``."""

from __future__ import annotations

import torch

from orchestrator.spec import DistributedSpec, OptimSpec, TrainSpec
from trainers import optimizers


def grad_accumulation(train: TrainSpec, world_size: int) -> int:
    """global batch = micro batch x accumulation x world size (validated at spec time)."""
    per_step = train.micro_batch_size * world_size
    if train.global_batch_size % per_step:
        raise ValueError(f"global batch {train.global_batch_size} is not a multiple of micro batch "
                         f"{train.micro_batch_size} x world size {world_size}")
    return train.global_batch_size // per_step


def ds_config(train: TrainSpec, optim: OptimSpec, dist: DistributedSpec, world_size: int) -> dict:
    zero: dict = {"stage": dist.zero_stage}
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": dist.use_gpu}
    if dist.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": dist.use_gpu}
    if dist.zero_stage == 3:
        # keep gathered parameters of small models resident; the defaults target billion-parameter models
        zero["stage3_param_persistence_threshold"] = 1e5
        if optim.name == "muon":  # DeepSpeed's ZeRO-3 Muon orthogonalises full gradients, not scattered shards
            zero["reduce_scatter"] = False
    config = {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": grad_accumulation(train, world_size),
        "gradient_clipping": optim.grad_clip or 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train.precision == "bf16":
        # torch.autocast inside the engine's forward: fp32 weights, bf16 matmuls and convolutions, gradients of
        # Linear/Conv layers reduced in bf16 (the convention of Poseidon, ClimaX and fairchem). Not DeepSpeed's
        # `bf16` section: it casts the weights to bf16 while the batch stays fp32, so the first forward failed,
        # and casting the batch would put atom positions, whose gradient is the force, in bf16.
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return config


def initialize(model, train: TrainSpec, optim: OptimSpec, dist: DistributedSpec, world_size: int,
               muon_adamw: tuple[str, ...] = ()):
    """Wrap the model with ``deepspeed.initialize``; returns (engine, optimizer, scheduler). The optimizer
    comes from the table in trainers/optimizers.py; ``muon_adamw`` is the family's list of parameter-name
    keywords that take AdamW under Muon."""
    import deepspeed

    optimizer = optimizers.build_optimizer(model, optim, dist.offload_optimizer, muon_adamw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, optimizers.lr_lambda(optim, train.max_steps))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=ds_config(train, optim, dist, world_size))
    return engine, optimizer, scheduler
