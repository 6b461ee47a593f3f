"""The weather family: ClimaX and an SFNO baseline, scored by WeatherBench2's RMSE and ACC."""

from __future__ import annotations

import torch

from models.family import EvalSuite, Family
from models.weather import evaluate
from models.weather.config import WeatherModelSpec
from models.weather.metrics import weighted_acc, weighted_mse, weighted_mse_loss
from models.weather.plots import plots
from models.weather.transform import collate, example_batch, make_transform


def build_model(spec: WeatherModelSpec) -> torch.nn.Module:
    """ClimaX or the SFNO baseline, single-device."""
    if spec.arch == "sfno":
        from models.weather.sfno import build_sfno

        return build_sfno(spec)
    from models.weather.climax import build_climax

    return build_climax(spec)


def loss(outputs: torch.Tensor, batch: dict, spec: WeatherModelSpec) -> torch.Tensor:
    """Latitude-weighted MSE of the normalised fields at the spec's lead."""
    return weighted_mse_loss(outputs, batch["targets"][:, 0], batch["lat_weights"])


def metrics(outputs: torch.Tensor, batch: dict, spec: WeatherModelSpec) -> dict[str, torch.Tensor]:
    """Per-example area-weighted MSE (physical units) and ACC per variable, beside the baselines.

    The trainer averages each value over the eval set, so ``val/wmse/<var>/<lead>h`` is WeatherBench2's
    time-mean MSE and its square root is WeatherBench2's RMSE; ACC is per time, then averaged, as in
    WeatherBench2. Persistence and climatology are scored at every rollout lead (they need no model).
    """
    w, scale = batch["lat_weights"], batch["std"].square()
    names, out = spec.model_outputs, {}
    lead = spec.lead_hours
    persistence = batch["inputs"][:, -1, _out_positions(spec)]
    _add(out, "", lead, names, weighted_mse(outputs, batch["targets"][:, 0], w) * scale,
         weighted_acc(outputs, batch["targets"][:, 0], batch["clim"][:, 0], w))
    for k, hours in enumerate(spec.rollout_leads):
        truth, clim = batch["targets"][:, k], batch["clim"][:, k]
        _add(out, "_persistence", hours, names, weighted_mse(persistence, truth, w) * scale,
             weighted_acc(persistence, truth, clim, w))
        _add(out, "_climatology", hours, names, weighted_mse(clim, truth, w) * scale, None)
    return out


def derived_metrics(means: dict[str, float]) -> dict[str, float]:
    """WeatherBench2's RMSE: the square root of the time-mean area-weighted MSE, per variable and lead."""
    return {"rmse" + k[len("wmse"):]: v ** 0.5 for k, v in means.items() if k.startswith("wmse")}


def _out_positions(spec: WeatherModelSpec) -> list[int]:
    inputs = spec.model_inputs
    return [inputs.index(v) for v in spec.model_outputs]


def _add(out: dict, suffix: str, hours: int, names: list[str], mse: torch.Tensor, acc: torch.Tensor | None) -> None:
    for i, name in enumerate(names):
        out[f"wmse{suffix}/{name}/{hours}h"] = mse[:, i]
        if acc is not None:
            out[f"acc{suffix}/{name}/{hours}h"] = acc[:, i]


FAMILY = Family(
    name="weather",
    build_model=build_model,
    make_transform=make_transform,
    collate=collate,
    loss=loss,
    metrics=metrics,
    example_batch=example_batch,
    plots=plots,
    derived_metrics=derived_metrics,
    eval_suite=EvalSuite(make_transform=evaluate.make_transform, evaluate=evaluate.evaluate),
    # Muon: ClimaX's patch, variable and lead-time embeddings and its head match the shared keywords; SFNO has
    # no 2-D matrix (1x1 conv kernels and spectral weights), so Muon is refused for it at validation
    muon_adamw=(),
    no_split=("Block", "VariablePool", "SphericalFourierNeuralOperatorBlock"),
)
