"""muP (Tensor Programs V, Yang et al. 2022) from a model's base shapes: the best learning rate stops moving with width.

The base model is the same spec at ``model.mup.base_width``, built on the meta device (no memory, no time). Each
layer's weight is compared with its base twin: the dimensions whose sizes differ are the ones that grow with width.

| layer (fan-in, fan-out) | init | AdamW learning rate | Muon learning rate | forward |
|---|---|---|---|---|
| hidden (both grow) | std x (fan_in0 / fan_in)^0.5 | x fan_in0 / fan_in | x 1 | - |
| readout (fan-in grows) | unchanged | x 1 | (AdamW half) | input x fan_in0 / fan_in |
| input, embedding (fan-out grows), vectors, norms | unchanged | x 1 | (AdamW half) | - |

Muon's orthogonalised update is already scaled to the matrix's shape (DeepSpeed multiplies it by
sqrt(max(1, fan_out / fan_in)), constant when both dimensions grow together), so its matrices keep the base
rate: the spectral condition of Muon under muP. Attention logits need no 1/d rescaling in scOT: its attention is
cosine attention (normalised queries and keys with a learnt temperature), bounded whatever the head width.

Nothing but ``model.mup`` is stored beside the weights (weights.safetensors names it in its metadata, so a
fine-tune from them without the same ``model.mup`` is refused): the multipliers follow from the spec's
``model.mup`` (which a checkpoint, a resume and a logged model carry) every time the model is built, so a
resume, an elastic restart and a load of the logged model reapply them. This is why the ``mup`` package is not used: its base shapes live on the
parameters (``infshape``) and are lost on save.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

LR_ATTR = "mup_lr"  # a parameter's AdamW learning-rate multiplier (trainers/optimizers.py reads it)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _fans(module: nn.Module) -> tuple[int, int]:
    """(fan-in, fan-out) dimensions of a layer's weight (a transposed convolution stores [in, out, ...])."""
    return (0, 1) if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else (1, 0)


def roles(model: nn.Module, base: nn.Module) -> dict[str, tuple[str, float]]:
    """Layer name -> (hidden | readout | input, fan-in multiplier) for each layer whose shape differs from the
    base model's; layers of equal shape are left out."""
    base_layers = dict(base.named_modules())
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS) or name not in base_layers:
            continue
        fi, fo = _fans(module)
        shape, base_shape = module.weight.shape, base_layers[name].weight.shape
        grows_in, grows_out = shape[fi] != base_shape[fi], shape[fo] != base_shape[fo]
        if grows_in or grows_out:
            role = "hidden" if grows_in and grows_out else "readout" if grows_in else "input"
            found[name] = (role, shape[fi] / base_shape[fi])
    return found


class _ScaleInput:
    """A readout's forward pre-hook: its input times ``factor`` (a class, so a pickled model keeps it)."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, module, args):
        return (args[0] * self.factor, *args[1:])


def parametrize(model: nn.Module, spec, build: Callable[[object], nn.Module]) -> nn.Module:
    """Apply muP to ``model`` (built from ``spec``) against the same spec at ``spec.mup.base_width``."""
    with torch.device("meta"):
        base = build(spec.model_copy(update={"width": spec.mup.base_width, "mup": None}))
    modules = dict(model.named_modules())
    for name, (role, mult) in roles(model, base).items():
        module = modules[name]
        if role == "hidden":
            with torch.no_grad():
                module.weight.mul_(mult ** -0.5)
            setattr(module.weight, LR_ATTR, 1.0 / mult)
        elif role == "readout":
            module.register_forward_pre_hook(_ScaleInput(1.0 / mult))
    return model


def lr_multiplier(p: torch.Tensor) -> float:
    return getattr(p, LR_ATTR, 1.0)
