"""muP (Tensor Programs V, Yang et al. 2022) from a model's base shapes: the best learning rate stops moving with width.

The base model is the same spec at ``model.mup.base_width``, built once more (on CPU, narrow, so small and quick;
on the meta device when the model itself is on it). Each layer's weight is compared with its base twin: the
dimensions whose sizes differ are the ones that grow with width, and the base's initial spread sets the hidden
weights' (so the rule holds whatever initialiser the model uses).

| layer (fan-in, fan-out) | init | AdamW learning rate | Muon learning rate | forward |
|---|---|---|---|---|
| hidden (both grow) | base model's std x (fan_in0 / fan_in)^0.5 | x fan_in0 / fan_in | x 1 | - |
| readout (fan-in grows) | unchanged | x 1 | (AdamW half) | input x fan_in0 / fan_in |
| input, embedding (fan-out grows), vectors, norms | unchanged | x 1 | (AdamW half) | - |

Muon's orthogonalised update is already scaled to the matrix's shape (DeepSpeed multiplies it by
sqrt(max(1, fan_out / fan_in)), constant when both dimensions grow together), so its matrices keep the base
rate: the spectral condition of Muon under muP. Attention logits are the model's own: ClimaX scales them by
1/d_head (times sqrt of the base head width, so the base model is standard) under muP; scOT needs no rescaling,
its attention being cosine attention (normalised queries and keys with a learnt temperature), bounded whatever
the head width.

Nothing but ``model.mup`` is stored beside the weights (weights.safetensors names it in its metadata, so a
fine-tune from them without the same ``model.mup`` is refused): the multipliers follow from the spec's
``model.mup`` (which a checkpoint, a resume and a logged model carry) every time the model is built, so a
resume, an elastic restart and a load of the logged model reapply them. This is why the ``mup`` package is not
used: its base shapes live on the parameters (``infshape``) and are lost on save.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

LR_ATTR = "mup_lr"  # a parameter's AdamW learning-rate multiplier (trainers/optimizers.py reads it)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _matrices(model: nn.Module):
    """(module name, weight attribute, fan-in dim, fan-out dim) of each layer weight: the layers above, and the
    packed query-key-value projection of an attention module (``in_proj_weight``, [3 out, in]). A transposed
    convolution stores [in, out, ...]."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            yield name, "weight", 0, 1
        elif isinstance(module, _LAYERS):
            yield name, "weight", 1, 0
        elif isinstance(getattr(module, "in_proj_weight", None), nn.Parameter):
            yield name, "in_proj_weight", 1, 0


def roles(model: nn.Module, base: nn.Module) -> dict[str, tuple[str, float]]:
    """Weight name -> (hidden | readout | input, fan-in multiplier) for each layer weight whose shape differs
    from the base model's; weights of equal shape are left out."""
    base_params = dict(base.named_parameters())
    found = {}
    for name, attr, fi, fo in _matrices(model):
        key = f"{name}.{attr}" if name else attr
        if key not in base_params:
            continue
        shape, base_shape = getattr(model.get_submodule(name), attr).shape, base_params[key].shape
        grows_in, grows_out = shape[fi] != base_shape[fi], shape[fo] != base_shape[fo]
        if grows_in or grows_out:
            role = "hidden" if grows_in and grows_out else "readout" if grows_in else "input"
            found[key] = (role, shape[fi] / base_shape[fi])
    return found


class _ScaleInput:
    """A readout's forward pre-hook: its input times ``factor`` (a class, so a pickled model keeps it)."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, module, args):
        return (args[0] * self.factor, *args[1:])


def parametrize(model: nn.Module, spec, build: Callable[[object], nn.Module]) -> nn.Module:
    """Apply muP to ``model`` (built from ``spec``) against the same spec at ``spec.mup.base_width``."""
    real = any(not p.is_meta for p in model.parameters())
    with torch.random.fork_rng(devices=[]), torch.device("cpu" if real else "meta"):  # leaves the RNG as it was
        base = build(spec.model_copy(update={"width": spec.mup.base_width, "mup": None}))
    base_params = dict(base.named_parameters())
    for key, (role, mult) in roles(model, base).items():
        name, _, attr = key.rpartition(".")
        module = model.get_submodule(name)
        weight = getattr(module, attr)
        if role == "hidden":
            if real:
                _rescale(weight, base_params[key].std() * mult ** -0.5)
            setattr(weight, LR_ATTR, 1.0 / mult)
        elif role == "readout":
            module.register_forward_pre_hook(_ScaleInput(1.0 / mult))
    return model


@torch.no_grad()
def _rescale(weight: torch.Tensor, std: torch.Tensor) -> None:
    """A hidden weight to the base model's initial spread times (fan_in0 / fan_in)^0.5, whatever the model's own
    initialiser did with the width (a constant std stays constant, Xavier's already shrinks): either way the
    hidden layers' outputs keep their size at every width."""
    current = weight.std()
    if current > 0:
        weight.mul_(std.to(weight.device) / current)


def lr_multiplier(p: torch.Tensor) -> float:
    return getattr(p, LR_ATTR, 1.0)
