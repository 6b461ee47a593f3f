"""Rollout, RMSE against lead, and the MLflow figures."""

import matplotlib
import numpy as np
import pytest
import torch

from models.weather import build_model, plots
from models.weather.config import WeatherModelSpec
from models.weather.plots import rmse_by_lead, rollout
from models.weather.transform import example_batch

matplotlib.use("Agg")
VARS = ["geopotential_500", "2m_temperature"]


def _setup(**kw):
    spec = WeatherModelSpec(variables=VARS, grid=(8, 16), rollout_steps=3, **kw)
    batch = example_batch(spec, 2)
    batch["std"] = torch.tensor([[2.0, 3.0], [2.0, 3.0]])
    return spec, build_model(spec), batch


def test_untrained_residual_model_rolls_out_as_persistence_and_scores_like_it():
    spec, model, batch = _setup()
    forecast = rollout(model, batch, spec)
    assert forecast.shape == (2, 3, 2, 8, 16)
    torch.testing.assert_close(forecast[:, 2], batch["inputs"][:, -1])
    rmse = rmse_by_lead(forecast, batch, spec)
    np.testing.assert_allclose(rmse["model"], rmse["persistence"], rtol=1e-6)


def test_rmse_by_lead_is_in_physical_units():
    spec, _, batch = _setup()
    batch["targets"] = torch.zeros_like(batch["targets"])
    forecast = torch.ones_like(batch["targets"])  # normalised error 1 everywhere -> RMSE = std
    np.testing.assert_allclose(rmse_by_lead(forecast, batch, spec)["model"], [[2.0, 3.0]] * 3, rtol=1e-6)


def test_rollout_refuses_outputs_that_cannot_be_fed_back():
    spec, model, batch = _setup(out_variables=["2m_temperature"])
    with pytest.raises(ValueError, match="must equal model.in_variables"):
        rollout(model, batch, spec)


def test_plots_returns_maps_and_rmse_against_lead():
    spec, model, batch = _setup()
    figures = plots(model, batch, None, spec)
    assert set(figures) == {"maps_0", "maps_1", "rmse_vs_lead"}
    lines = figures["rmse_vs_lead"].axes[0].get_lines()
    assert len(lines) == 3 and list(lines[0].get_xdata()) == [24, 48, 72]
