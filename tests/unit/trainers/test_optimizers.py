"""The optimizer table, the families' Muon rules, and a guard per DeepSpeed Muon defect (issue 15).

Each defect test runs DeepSpeed's own engine in-process (1 rank, gloo, CPU) and fails where the defect would bite:
- #8441 ZeRO-0 trains Muon's matrices with plain SGD: one step on a rank-1 gradient must give a full-rank,
  orthogonalised update (SGD's would be rank 1), at every ZeRO stage;
- #8438 ZeRO-3 with zero.Init reports every parameter as 1-D and switches Muon off: the family rule reads the
  layer's shape (ds_shape) and still tags the matrices;
- #8443 Newton-Schulz per micro-batch under gradient accumulation: 2 micro-batches of 1 must give the step of
  1 micro-batch of 2;
- #8433/#8483 bf16 resume dtype mismatch (DeepSpeed's `bf16` section, which sciscale no longer uses: its bf16 is
  the `torch_autocast` section): a bf16 Muon engine saved and loaded keeps training;
- #8608 universal-checkpoint conversion KeyError 'exp_avg' (an elastic resize): a Muon checkpoint converts and
  loads with its momentum intact;
- found here: under ZeRO 1-3 DeepSpeed's gradient clipping clips Muon's orthogonalised update (not the gradient),
  so the step shrinks at those stages and not at stage 0: Muon specs take no grad_clip, and a clipped engine is
  shown to differ (the check that the refusal guards).
"""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from orchestrator.spec import SCHEDULES, TAGGED, DistributedSpec, MuonSpec, TrainSpec
from orchestrator.specload import SpecError, validate_spec
from trainers import checkpoint, ds, optimizers, universal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_spec_and_builder_tables_agree():
    assert set(TAGGED["name"]) == set(optimizers.OPTIMIZERS)
    assert {c.model_fields["kind"].annotation.__args__[0] for c in SCHEDULES} == set(optimizers.SCHEDULES)


@pytest.mark.parametrize("optim,message", [
    ({"name": "sgd", "betas": [0.9, 0.99]}, "betas is a field of name adamw, adam, muon"),
    ({"name": "muon", "momentm": 0.9}, "did you mean 'momentum'"),
    ({"name": "adamx"}, "unknown optimizer (did you mean 'adam'?)"),
    ({"schedule": {"kind": "constant", "min_lr_ratio": 0.1}}, "min_lr_ratio is a field of kind cosine, linear"),
])
def test_fields_of_another_optimizer_are_named(optim, message):
    raw = yaml.safe_load(open(os.path.join(ROOT, "examples/pde/ns_debug_scot.yaml")))
    raw["optim"] = optim
    with pytest.raises(SpecError) as err:
        validate_spec(raw)
    assert message in str(err.value)


@pytest.mark.parametrize("example,distributed,message", [
    ("examples/pde/ns_debug_fno.yaml", {}, "model.arch fno has no 2-D weight matrix"),
    ("examples/weather/sfno_debug.yaml", {}, "model.arch sfno has no 2-D weight matrix"),
    ("examples/pde/ns_debug_scot.yaml", {"zero_stage": 2, "offload_optimizer": True},
     "does not run with distributed.offload_optimizer"),
    ("examples/pde/ns_debug_scot.yaml", {"clip": 1.0}, "clips Muon's orthogonalised update"),
])
def test_muon_refused_where_it_cannot_run(example, distributed, message):
    raw = yaml.safe_load(open(os.path.join(ROOT, example)))
    raw["optim"] = {"name": "muon", **({"grad_clip": distributed.pop("clip")} if "clip" in distributed else {})}
    raw.setdefault("distributed", {}).update(distributed)
    with pytest.raises(SpecError, match=message):
        validate_spec(raw)


def _family_model(example: str):
    from models import load_family

    spec = validate_spec(yaml.safe_load(open(os.path.join(ROOT, example))))
    family = load_family(spec.model.family)
    return family, family.build_model(spec.model)


# example -> (a parameter that must take Muon, parameters that must take AdamW)
FAMILY_RULES = {
    "examples/pde/ns_debug_scot.yaml": ("encoder.0.layers.0.attn.qkv.weight",
                                        ["embed.weight", "encoder.0.layers.0.attn.cpb.0.weight",
                                         "encoder.0.layers.0.norm1.weight.weight", "recovery.weight"]),
    "examples/weather/climax_debug.yaml": ("blocks.0.qkv.weight", ["var_embed", "lead_embed.weight",
                                                                   "head.0.weight", "patch_weight"]),
    "examples/atoms/emt_debug_escaip.yaml": ("blocks.0.qkv.weight", ["embed_node.weight", "edge_in.0.weight",
                                                                     "energy_head.1.0.weight"]),
    "examples/atoms/emt_debug_mace.yaml": ("mace.interactions.0.conv_tp_weights.layer1.weight",
                                           ["mace.interactions.0.conv_tp_weights.layer0.weight",
                                            "mace.interactions.0.linear.weight"]),
}


@pytest.mark.parametrize("example", sorted(FAMILY_RULES))
def test_family_muon_rule(example):
    family, model = _family_model(example)
    muon, adamw = optimizers.muon_split(model, optimizers.MUON_ADAMW + family.muon_adamw)
    names = {n for n, _ in muon}
    takes, refuses = FAMILY_RULES[example]
    assert takes in names
    assert all(p.ndim == 2 for _, p in muon)
    assert not names & set(refuses), names & set(refuses)
    adamw_names = {n for n, _ in adamw}
    assert set(refuses) <= adamw_names | {n for n, _ in model.named_parameters() if not n.endswith("weight")}
    assert len(names) + len(adamw_names) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("example", ["examples/pde/ns_debug_fno.yaml", "examples/weather/sfno_debug.yaml"])
def test_spectral_and_conv_weights_take_adamw(example):
    family, model = _family_model(example)
    muon, _ = optimizers.muon_split(model, optimizers.MUON_ADAMW + family.muon_adamw)
    assert muon == []


# --- DeepSpeed engine checks, one rank -------------------------------------------------------------------

class _Net(torch.nn.Module):
    """A hidden 16x16 matrix (Muon) between an input and an output projection named as AdamW takes them."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.hidden = torch.nn.Linear(16, 16, bias=False)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.hidden(torch.tanh(self.embed(x)))))


def _engine(stage: int, micro: int, accum: int, precision: str = "fp32", lr: float = 0.02):
    torch.manual_seed(0)
    train = TrainSpec(global_batch_size=micro * accum, micro_batch_size=micro, max_steps=100, precision=precision)
    optim = MuonSpec(name="muon", lr=lr, adam_lr=1e-3, schedule={"kind": "constant"})  # no clip: the default
    engine, optimizer, _ = ds.initialize(_Net(), train, optim, DistributedSpec(zero_stage=stage), 1)
    return engine


def _hidden(engine) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_fp32_param

    p = engine.module.hidden.weight
    full = safe_get_full_fp32_param(p)
    return (full if full is not None else p).detach().float().clone()


def _step(engine, x, y, micro: int):
    for i in range(0, len(x), micro):
        loss = torch.nn.functional.mse_loss(engine(x[i:i + micro].to(engine.module.hidden.weight.dtype)).float(),
                                            y[i:i + micro])
        engine.backward(loss)
        engine.step()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_muon_orthogonalises_at_every_stage(stage, process_group):
    """#8441 (ZeRO-0 falls back to SGD) and #8438 (ZeRO-3 loses the Muon tags). A batch of 4 gives the hidden
    matrix a rank-4 gradient whose singular values spread widely; SGD's update keeps that spread, Muon's first
    step orthogonalises it: 4 singular values of about lr (Newton-Schulz's quintic lands in 0.7-1.2)."""
    torch.manual_seed(1)
    x, y = torch.randn(4, 8), torch.randn(4, 4) * torch.tensor([[2.0], [1.0], [0.5], [0.25]])
    torch.manual_seed(0)
    reference = _Net()  # the engine's initial weights: the gradient SGD would step along
    torch.nn.functional.mse_loss(reference(x), y).backward()
    g = torch.linalg.svdvals(reference.hidden.weight.grad)[:4]
    assert g[0] / g[3] > 3, g  # the check below could not tell SGD from Muon otherwise
    engine = _engine(stage, micro=4, accum=1)
    before = _hidden(engine)
    _step(engine, x, y, micro=4)
    s = torch.linalg.svdvals(_hidden(engine) - before)[:4]
    assert s[0] / s[3] < 2, s
    assert 0.5 * 0.02 < s[3] and s[0] < 1.3 * 0.02, s


def test_muon_rule_reads_the_layer_shape_under_zero_init(process_group):
    """#8438: under deepspeed.zero.Init every parameter's data is a flat placeholder; the rule must read the
    layer's shape and still send the hidden matrix to Muon."""
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path={"train_batch_size": 1, "zero_optimization": {"stage": 3}}):
        net = _Net()
    assert net.hidden.weight.ndim == 1  # the placeholder the defect tripped on
    muon, _ = optimizers.muon_split(net, optimizers.MUON_ADAMW)
    assert [n for n, _ in muon] == ["hidden.weight"]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_newton_schulz_once_per_step_under_accumulation(stage, process_group):
    """#8443: 2 micro-batches of 1 (accumulated) make one optimizer step equal to 1 micro-batch of 2. Newton-Schulz
    per micro-batch would orthogonalise each half and advance the momentum twice."""
    torch.manual_seed(1)
    x, y = torch.randn(2, 8), torch.randn(2, 4)
    deltas = []
    for micro, accum in ((2, 1), (1, 2)):
        engine = _engine(stage, micro=micro, accum=accum)
        before = _hidden(engine)
        _step(engine, x, y, micro=micro)
        assert engine.global_steps == 1
        deltas.append(_hidden(engine) - before)
    torch.testing.assert_close(deltas[1], deltas[0], rtol=1e-3, atol=1e-5)


def test_clipping_would_shrink_muon_steps_under_zero(process_group):
    """Why optim.grad_clip is refused with Muon: the same step clipped at 1.0 is smaller under ZeRO-2 than under
    ZeRO-0, where DeepSpeed clips the raw gradient before Newton-Schulz."""
    torch.manual_seed(1)
    x, y = torch.randn(4, 8), torch.randn(4, 4)
    norms = {}
    for stage in (0, 2):
        engine = _engine(stage, micro=4, accum=1)
        engine._config.gradient_clipping = 1.0  # what a spec's grad_clip would set
        if hasattr(engine.optimizer, "clip_grad"):
            engine.optimizer.clip_grad = 1.0
        before = _hidden(engine)
        _step(engine, x, y, micro=4)
        norms[stage] = torch.linalg.vector_norm(_hidden(engine) - before).item()
    assert norms[2] < 0.8 * norms[0], norms


def _momentum(engine) -> torch.Tensor:
    bufs = [s["momentum_buffer"].float().flatten() for s in _base_optimizer(engine).state.values()
            if "momentum_buffer" in s]
    assert bufs, "no Muon momentum in the optimizer state"
    return torch.cat(bufs)


def _base_optimizer(engine):
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bf16_muon_resumes(stage, process_group, tmp_path):
    """#8433/#8483: a bf16 Muon engine saved and loaded into a fresh one keeps its momentum and keeps
    training (the defect raised a dtype mismatch on load or on the next step under DeepSpeed's `bf16` section;
    sciscale's bf16 is autocast over fp32 weights, and this runs that)."""
    torch.manual_seed(1)
    x, y = torch.randn(4, 8), torch.randn(4, 4)
    engine = _engine(stage, micro=1, accum=1, precision="bf16")
    _step(engine, x[:2], y[:2], micro=1)
    engine.save_checkpoint(str(tmp_path), tag="s2")
    saved = _momentum(engine)
    fresh = _engine(stage, micro=1, accum=1, precision="bf16")
    fresh.load_checkpoint(str(tmp_path), tag="s2")
    torch.testing.assert_close(_momentum(fresh), saved)
    before = _hidden(fresh)
    _step(fresh, x[2:], y[2:], micro=1)
    assert fresh.global_steps == 4 and not torch.equal(_hidden(fresh), before)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_muon_checkpoint_converts_to_universal(stage, process_group, tmp_path):
    """#8608: DeepSpeed's universal-checkpoint conversion (the path of an elastic resize) raised KeyError
    'exp_avg' on Muon's state. The converted checkpoint must load with the weights and the Muon momentum."""
    torch.manual_seed(1)
    x, y = torch.randn(2, 8), torch.randn(2, 4)
    engine = _engine(stage, micro=1, accum=1)
    _step(engine, x, y, micro=1)
    engine.save_checkpoint(str(tmp_path / "ds"), tag="step2")
    weights, momentum = _hidden(engine), _momentum(engine)
    checkpoint._to_universal(str(tmp_path / "ds" / "step2"), str(tmp_path / "uni" / "step2"))
    fresh = _engine(stage, micro=1, accum=1)
    fresh._config.load_universal_checkpoint = True
    fresh.load_checkpoint(str(tmp_path / "uni"), tag="step2")
    universal.restore_muon_momentum(fresh, str(tmp_path / "uni" / "step2"))
    torch.testing.assert_close(_hidden(fresh), weights)
    torch.testing.assert_close(_momentum(fresh), momentum)
