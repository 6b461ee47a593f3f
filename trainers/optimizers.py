"""The optimizer and schedule tables: one builder per ``optim.name``, one factor per ``optim.schedule.kind``.

Adding an optimizer is one spec class in orchestrator/spec.py (``OPTIMIZERS``) and one entry in
:data:`OPTIMIZERS` here; tests/unit/trainers/test_optimizers.py checks that the two tables agree.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

# Parameter-name keywords that take AdamW under Muon in every family (a family adds its own, Family.muon_adamw)
MUON_ADAMW = ("embed", "norm", "head")
ADAM_EPS = 1e-8  # torch's default; under muP each group's is this times its learning-rate multiplier


def _ndim(p: torch.Tensor) -> int:
    """A parameter's dimensions; under ``deepspeed.zero.Init`` its data is a flat placeholder and the layer's
    shape is ``ds_shape``."""
    return len(getattr(p, "ds_shape", None) or p.shape)


def _decay_groups(model: torch.nn.Module, weight_decay: float, lr: float, params=None) -> list[dict]:
    """Weight decay on matrices only (not on biases and norms); one group per muP learning-rate multiplier
    (models/mup.py; 1 for every parameter without muP), its ``lr`` the peak rate times the multiplier, and so
    its Adam epsilon: muP shrinks hidden gradients with width, and a fixed epsilon then outweighs them and
    stalls the widest layers (scOT debug's last stage: mean |gradient| 1e-7 at 1x, 7e-10 at 8x width)."""
    from models.mup import lr_multiplier

    named = params if params is not None else [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: dict[tuple[bool, float], list] = {}
    for name, p in named:  # a bias shaped [C, 1, 1] to broadcast over a grid (FNO's spectral convolutions) is a bias
        groups.setdefault((_ndim(p) >= 2 and not name.endswith("bias"), lr_multiplier(p)), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * mult, "eps": ADAM_EPS * mult}
            for (decay, mult), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


def _adam(optim, model, offload: bool, adamw: bool, **_) -> torch.optim.Optimizer:
    groups = _decay_groups(model, optim.weight_decay, optim.lr)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=optim.lr, betas=optim.betas, adamw_mode=adamw)
    return (torch.optim.AdamW if adamw else torch.optim.Adam)(groups, lr=optim.lr, betas=optim.betas)


def _sgd(optim, model, **_) -> torch.optim.Optimizer:
    return torch.optim.SGD(_decay_groups(model, optim.weight_decay, optim.lr), lr=optim.lr, momentum=optim.momentum)


def muon_split(model: torch.nn.Module, adamw_keywords: tuple[str, ...]) -> tuple[list, list]:
    """(Muon, AdamW) lists of (name, parameter): Muon takes the 2-D matrices whose name has none of
    ``adamw_keywords``; vectors, conv kernels (3-D and 4-D; DeepSpeed's Muon orthogonalises a 3-D kernel as a
    batch of columns), FNO/SFNO spectral weights (3-D and up, real pairs or real/imaginary halves) and the
    named embeddings, norms and heads take AdamW. Every parameter is tagged ``use_muon`` as DeepSpeed's ZeRO
    optimizers read it."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        takes = _ndim(p) == 2 and not any(k in name.lower() for k in adamw_keywords)
        p.use_muon = takes
        if p.requires_grad:
            (muon if takes else adamw).append((name, p))
    return muon, adamw


def _muon(optim, model, muon_adamw: tuple[str, ...] = (), **_) -> torch.optim.Optimizer:
    """DeepSpeed's MuonWithAuxAdam, built here rather than from DeepSpeed's config so the family's rule (not
    DeepSpeed's embed/lm_head name test) decides which parameters take Muon."""
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam

    muon, adamw = muon_split(model, MUON_ADAMW + tuple(muon_adamw))
    if not muon:
        raise ValueError("optim.name=muon: no parameter of this model takes Muon (no hidden 2-D matrix); "
                         "use adamw")
    groups = [{"params": [p for _, p in muon], "use_muon": True, "lr": optim.lr, "momentum": optim.momentum,
               "weight_decay": optim.weight_decay}]
    for group in _decay_groups(model, optim.weight_decay, optim.adam_lr, adamw):
        groups.append({**group, "use_muon": False, "betas": optim.betas})
    return MuonWithAuxAdam(groups)


# name -> builder(optim spec, model, offload=..., muon_adamw=...) -> optimizer; offload only reaches Adam(W)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda optim, model, **kw: _adam(optim, model, adamw=True, **kw),
    "adam": lambda optim, model, **kw: _adam(optim, model, adamw=False, **kw),
    "sgd": _sgd,
    "muon": _muon,
}


def build_optimizer(model: torch.nn.Module, optim, offload: bool = False,
                    muon_adamw: tuple[str, ...] = ()) -> torch.optim.Optimizer:
    return OPTIMIZERS[optim.name](optim, model, offload=offload, muon_adamw=muon_adamw)


def _constant(progress: float, floor: float) -> float:
    return 1.0


def _cosine(progress: float, floor: float) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _linear(progress: float, floor: float) -> float:
    return floor + (1 - floor) * (1 - progress)


# kind -> decay factor(progress in [0, 1] after warmup, floor) -> multiplier of the peak lr
SCHEDULES: dict[str, Callable[[float, float], float]] = {"constant": _constant, "cosine": _cosine,
                                                         "linear": _linear}


def lr_lambda(optim, max_steps: int) -> Callable[[int], float]:
    """Multiplier of every group's peak lr at optimizer step ``s``: linear warmup, then the schedule's decay.
    A multiplier (LambdaLR), never an overwrite, so per-group learning rates keep their ratios."""
    sched = optim.schedule
    warm, floor, decay = sched.warmup_steps, getattr(sched, "min_lr_ratio", 0.0), SCHEDULES[sched.kind]

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return decay(min(1.0, (step - warm) / max(1, max_steps - warm)), floor)

    return factor
