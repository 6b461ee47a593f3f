"""DeepSpeed setup from the spec: batch decomposition, schedule, config; one real engine per ZeRO stage."""

from __future__ import annotations

import math
import os

import pytest
import torch
import yaml

from orchestrator.spec import (AdamWSpec, ConstantSchedule, CosineSchedule, DistributedSpec, LinearSchedule,
                               SGDSpec, TrainSpec)
from orchestrator.specload import SpecError, validate_spec
from trainers import ds, optimizers

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                        "examples")


def _bf16_example(example: str) -> dict:
    raw = yaml.safe_load(open(os.path.join(EXAMPLES, example)))
    raw["train"]["precision"] = "bf16"
    return raw


def _train(**kw) -> TrainSpec:
    return TrainSpec(**{"global_batch_size": 16, "micro_batch_size": 2, "max_steps": 100, **kw})


@pytest.mark.parametrize("world,accum", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_grad_accumulation_keeps_global_batch(world, accum):
    assert ds.grad_accumulation(_train(), world) == accum
    cfg = ds.ds_config(_train(), AdamWSpec(), DistributedSpec(), world)
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * world


def test_grad_accumulation_rejects_impossible_world():
    with pytest.raises(ValueError, match="not a multiple"):
        ds.grad_accumulation(_train(), 3)


def test_warmup_then_cosine_to_floor():
    f = optimizers.lr_lambda(AdamWSpec(schedule=CosineSchedule(warmup_steps=10, min_lr_ratio=0.1)), 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)


def test_linear_and_constant():
    lin = optimizers.lr_lambda(AdamWSpec(schedule=LinearSchedule(kind="linear")), 100)
    assert lin(0) == pytest.approx(1.0) and lin(50) == pytest.approx(0.5) and lin(100) == pytest.approx(0.0)
    const = optimizers.lr_lambda(AdamWSpec(schedule=ConstantSchedule(kind="constant", warmup_steps=4)), 100)
    assert const(1) == pytest.approx(0.5) and const(50) == 1.0


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    for optim in (AdamWSpec(weight_decay=0.1), SGDSpec(name="sgd", weight_decay=0.1)):
        opt = optimizers.build_optimizer(model, optim)
        decays = {len(g["params"]): g["weight_decay"] for g in opt.param_groups}
        assert decays == {1: 0.1, 3: 0.0}


def test_weight_decay_leaves_out_biases_shaped_to_broadcast():
    from models.pde.config import PdeModelSpec
    from models.pde.fno import PdeFNO

    model = PdeFNO(PdeModelSpec(family="pde", arch="fno", size="debug", in_channels=2, resolution=32))
    opt = optimizers.build_optimizer(model, AdamWSpec(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "operator.fno_blocks.convs.0.weight_ri" in names
    assert not any(n.endswith("bias") for n in names)
    assert model.operator.fno_blocks.convs[0].bias.shape[1:] == (1, 1)  # the case: 3 dimensions, still a bias


def test_offload_and_zero3_config():
    cfg = ds.ds_config(_train(precision="bf16"), AdamWSpec(grad_clip=None),
                       DistributedSpec(zero_stage=3, offload_optimizer=True, offload_params=True), 2)
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in cfg
    assert cfg["gradient_clipping"] == 0.0


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_engine_learns_at_every_stage(stage, process_group):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    engine, _, sched = ds.initialize(model, _train(global_batch_size=4, micro_batch_size=2, max_steps=30),
                                     AdamWSpec(lr=1e-2), DistributedSpec(zero_stage=stage), 1)
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    losses = []
    for step in range(30):
        for micro in range(2):
            idx = slice((step * 4 + micro * 2) % 64, (step * 4 + micro * 2) % 64 + 2)
            loss = torch.nn.functional.mse_loss(engine(x[idx]), y[idx])
            engine.backward(loss)
            engine.step()
        losses.append(torch.nn.functional.mse_loss(engine(x), y).item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert engine.global_steps == 30


@pytest.mark.parametrize("example", ["pde/ns_debug_scot.yaml", "pde/ns_debug_fno.yaml", "weather/climax_debug.yaml",
                                     "weather/sfno_debug.yaml", "atoms/emt_debug_escaip.yaml"])
def test_bf16_trains_each_family(example, process_group):
    """`train.precision: bf16` as the runner runs it: fp32 batch into the engine, the family's loss, two steps.
    Under DeepSpeed's `bf16` section the first forward failed (bf16 weights, fp32 batch)."""
    engine, losses = _two_steps(validate_spec(_bf16_example(example)))
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())  # fp32 weights, bf16 compute
    assert engine.global_steps == 2 and losses[0] != losses[1]


def _two_steps(spec):
    """Two steps of the spec's model on its family's example batch of 2, as the runner runs them."""
    from models import load_family

    train = spec.train.model_copy(update={"micro_batch_size": 2, "global_batch_size": 2})
    family = load_family(spec.model.family)
    torch.manual_seed(0)
    engine, _, _ = ds.initialize(family.build_model(spec.model), train, spec.optim, spec.distributed, 1)
    batch = family.example_batch(spec.model, 2)
    losses = []
    for _ in range(2):
        loss = family.loss(engine(batch), batch, spec.model)
        assert torch.isfinite(loss), loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return engine, losses


def test_bf16_refused_for_mace():
    with pytest.raises(SpecError, match="train.precision=bf16 cannot train this model: model.arch mace"):
        validate_spec(_bf16_example("atoms/emt_debug_mace.yaml"))


@pytest.mark.parametrize("example", ["atoms/emt_debug_escaip.yaml", "atoms/emt_debug_mace.yaml"])
def test_zero3_refused_for_conservative_forces(example):
    """Conservative forces under ZeRO-3 failed at the first backward ('mat2 must be a matrix'): refused at
    validation. The 1B EScAIP example is ZeRO-3 with direct forces, which train (next test)."""
    raw = yaml.safe_load(open(os.path.join(EXAMPLES, example)))
    raw["distributed"]["zero_stage"] = 3
    with pytest.raises(SpecError, match="zero_stage=3 cannot train this model: model.forces conservative"):
        validate_spec(raw)


def test_zero3_trains_escaip_with_direct_forces(process_group):
    raw = yaml.safe_load(open(os.path.join(EXAMPLES, "atoms/emt_debug_escaip.yaml")))
    raw["distributed"]["zero_stage"], raw["model"]["forces"] = 3, "direct"
    engine, losses = _two_steps(validate_spec(raw))
    assert engine.global_steps == 2 and losses[1] < losses[0]
