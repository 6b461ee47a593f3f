"""Everything DeepSpeed: config from the spec, optimizer and schedule, ``deepspeed.initialize``."""

from __future__ import annotations

import math

import torch

from orchestrator.spec import DistributedSpec, OptimSpec, TrainSpec


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
    return {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": grad_accumulation(train, world_size),
        "gradient_clipping": optim.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_optimizer(model: torch.nn.Module, optim: OptimSpec, offload: bool) -> torch.optim.Optimizer:
    """Weight decay on matrices only; DeepSpeedCPUAdam when the optimizer state is offloaded."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=optim.lr, betas=optim.betas, adamw_mode=optim.name == "adamw")
    cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=optim.lr, betas=optim.betas)


def lr_lambda(optim: OptimSpec, max_steps: int):
    """Multiplier of the peak lr at optimizer step ``s``: linear warmup, then constant/cosine/linear decay."""
    sched = optim.schedule
    warm = sched.warmup_steps
    floor = sched.min_lr_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if sched.kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, max_steps - warm))
        if sched.kind == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return factor


def initialize(model, train: TrainSpec, optim: OptimSpec, dist: DistributedSpec, world_size: int):
    """Wrap the model with ``deepspeed.initialize``; returns (engine, optimizer, scheduler)."""
    import deepspeed

    optimizer = build_optimizer(model, optim, dist.offload_optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, train.max_steps))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=ds_config(train, optim, dist, world_size))
    return engine, optimizer, scheduler
