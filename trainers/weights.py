"""Weights in and out of a run: init_from and freezing, the fp32 gather, and the model files of a sciscale model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from orchestrator.registry import WEIGHTS_FILE

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def resolve_weights(uri: str, tracking_uri: str | None = None) -> Path:
    """A local weights file for ``uri``: a .safetensors file, a directory holding one, a sciscale model URI
    (models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-..., runs:/MLFLOW_RUN_ID/model; its
    weights.safetensors) or another MLflow artifact URI."""
    path = Path(uri.removeprefix("file://"))
    if uri.startswith(("models:/", "runs:/")):
        from orchestrator.registry import fetch_weights

        path = Path(fetch_weights(uri, tracking_uri))
    elif ":/" in uri and not uri.startswith("file://"):
        import mlflow

        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    if path.is_dir():
        for candidate in (path / WEIGHTS_FILE, path / "data" / WEIGHTS_FILE):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"train.init_from: no {WEIGHTS_FILE} in {uri} (looked in {path})")
    if not path.exists():
        raise FileNotFoundError(f"train.init_from: {uri} not found")
    return path


MUP_KEY = "sciscale.mup"  # weights.safetensors metadata: the model.mup the weights were trained with


def _mup(model_spec) -> str:
    mup = getattr(model_spec, "mup", None)
    return json.dumps(mup.model_dump() if mup is not None else None)


def load_initial(model: torch.nn.Module, uri: str, tracking_uri: str | None = None,
                 model_spec=None) -> dict[str, list[str]]:
    """Load tensors whose name and shape match; report the rest (they keep their fresh initialisation). Weights
    trained under muP load only into a model with the same ``model.mup`` (its readout multiplier is part of
    the function they compute)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = str(resolve_weights(uri, tracking_uri))
    with safe_open(path, "pt") as f:
        trained = (f.metadata() or {}).get(MUP_KEY, "null")
    if model_spec is not None and trained != _mup(model_spec) and json.loads(trained) is not None:
        raise ValueError(f"train.init_from {uri} was trained with model.mup {json.loads(trained)} and this spec has "
                         f"model.mup {json.loads(_mup(model_spec))}. Hint: set model.mup: {json.loads(trained)}")
    source = load_file(path)
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    report = {
        "loaded": sorted(matched),
        "shape_mismatch": sorted(f"{k}: checkpoint {tuple(source[k].shape)} vs model {tuple(own[k].shape)}"
                                 for k in source if k in own and own[k].shape != source[k].shape),
        "not_in_checkpoint": sorted(k for k in own if k not in source),
        "not_in_model": sorted(k for k in source if k not in own),
    }
    model.load_state_dict(matched, strict=False)
    return report


def freeze(model: torch.nn.Module, prefixes: list[str]) -> list[str]:
    """Stop training parameters whose name starts with one of ``prefixes``; fail if a prefix matches none."""
    frozen = []
    for prefix in prefixes:
        hits = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
        if not hits:
            raise ValueError(f"train.freeze: prefix {prefix!r} matches no parameter; parameter names start with "
                             f"{sorted({n.split('.')[0] + '.' for n, _ in model.named_parameters()})}")
        frozen.extend(hits)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return frozen


def gather_fp32_state(engine, zero_stage: int, rank: int) -> dict[str, torch.Tensor] | None:
    """The full fp32 state dict on rank 0 (a collective under ZeRO-3: every rank must call it)."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        state = {}
        for name, param in module.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if rank == 0:
                    state[name] = param.detach().float().cpu().clone()
        if rank != 0:
            return None
        for name, buf in module.named_buffers():
            state[name] = buf.detach().cpu().clone()
        return state
    if rank != 0:
        return None
    return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in module.state_dict().items() if torch.is_tensor(v)}  # some libraries add metadata


def write_model(state: dict[str, torch.Tensor], build_model, model_spec, directory: str, mlflow_model=None,
                pip_requirements: list[str] | None = None) -> None:
    """The model files of a sciscale model into ``directory`` (which must not exist): ``MLmodel`` and the
    mlflow.pytorch files, self-contained (code_paths ships the models package), and ``weights.safetensors``
    (the fp32 state dict). ``pip_requirements``: None infers them (a subprocess that loads the model)."""
    import mlflow.pytorch
    from safetensors.torch import save_file

    model = build_model(model_spec)
    model.load_state_dict(state)
    model.eval()
    # pickle (not pt2): forward takes a dict batch
    mlflow.pytorch.save_model(model, directory, code_paths=[str(MODELS_DIR)], serialization_format="pickle",
                              mlflow_model=mlflow_model, pip_requirements=pip_requirements)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(directory, WEIGHTS_FILE),
              metadata={MUP_KEY: _mup(model_spec)})
