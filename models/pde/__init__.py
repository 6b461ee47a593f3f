"""PDE operator family: scOT (Poseidon's U-shaped Swin V2 operator) and an FNO baseline."""

from __future__ import annotations

from torch import nn

from models.family import EvalSuite, Family
from models.pde import evaluate
from models.pde.config import PdeModelSpec
from models.pde.loss import MEDIAN_METRICS, loss, metrics
from models.pde.transform import collate, example_batch, make_transform


def build_model(spec: PdeModelSpec) -> nn.Module:
    """Single-device model; works under ``torch.device("meta")``."""
    if spec.arch == "fno":
        from models.pde.fno import PdeFNO

        return PdeFNO(spec)
    from models.pde.scot import ScOT

    if spec.mup is not None:
        from models.mup import parametrize

        return parametrize(ScOT(spec), spec, ScOT)
    return ScOT(spec)


def _plots(model, batch, outputs, spec):
    from models.pde.plots import plots  # matplotlib only where figures are made

    return plots(model, batch, outputs, spec)


FAMILY = Family(
    name="pde",
    build_model=build_model,
    make_transform=make_transform,
    collate=collate,
    loss=loss,
    metrics=metrics,
    example_batch=example_batch,
    median_metrics=MEDIAN_METRICS,
    plots=_plots,
    eval_suite=EvalSuite(make_transform=evaluate.make_transform, evaluate=evaluate.evaluate),
    # WindowAttention reads qkv.weight directly, so its SwinLayer is loaded whole; FNO's spectral
    # convolutions are leaves called through forward and split freely
    # Muon: scOT's continuous position-bias MLP maps 2 coordinates to per-head biases (an embedding);
    # FNO has no 2-D matrix (1x1 conv kernels and spectral weights), so Muon is refused for it at validation
    muon_adamw=("cpb",),
    no_split=("SwinLayer", "ConvNeXtBlock", "PatchMerge", "PatchUnmerge"),
)
