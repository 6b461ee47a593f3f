"""ClimaX and SFNO: spec rules, shapes, persistence start, variable subsets, sizes, checkpointing."""

import pickle

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.weather import FAMILY, build_model
from models.weather.config import WeatherModelSpec

VARS = ["geopotential_500", "u_component_of_wind_500", "v_component_of_wind_500", "2m_temperature"]


def _spec(**kw):
    return WeatherModelSpec(variables=VARS, grid=(8, 16), **kw)


def _batch(spec, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = spec.grid
    return {"inputs": torch.randn(b, spec.history, len(spec.model_inputs), h, w, generator=g),
            "lead_hours": torch.full((b,), float(spec.lead_hours))}


def test_spec_rejects_unknown_subset_and_names_both_fields():
    with pytest.raises(ValidationError, match="model.in_variables.*model.variables"):
        _spec(in_variables=["geopotential_500", "vorticity_500"])
    with pytest.raises(ValidationError, match="model.out_variables"):
        _spec(in_variables=["geopotential_500"], out_variables=["2m_temperature"])


def test_spec_accepts_patch_that_does_not_divide_grid():
    assert _spec(patch_size=3).patch == 3  # ClimaX pads to a multiple (test_weather_pole_grids.py)
    with pytest.raises(ValidationError, match="exceeds the smaller side of model.grid"):
        _spec(patch_size=9)


def test_spec_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="extra"):
        WeatherModelSpec(variables=VARS, depth=3)


def test_climax_starts_as_persistence_and_predicts_the_output_variables():
    spec = _spec(history=2, patch_size=2)
    batch = _batch(spec)
    out = build_model(spec)(batch)
    assert out.shape == (2, 4, 8, 16)
    torch.testing.assert_close(out, batch["inputs"][:, -1])


def test_climax_without_residual_depends_on_lead_time():
    spec = _spec(residual=False)
    model = build_model(spec)
    batch = _batch(spec)
    later = dict(batch, lead_hours=batch["lead_hours"] * 4)
    assert not torch.allclose(model(batch), model(later))


def test_climax_fine_tunes_on_a_subset_with_the_pretrained_weights():
    full, sub = _spec(residual=False), _spec(residual=False, in_variables=VARS[1:3], out_variables=[VARS[2]])
    pretrained = build_model(full)
    model = build_model(sub)
    model.load_state_dict(pretrained.state_dict())  # same parameter shapes: the vocabulary fixes them
    out = model(_batch(sub))
    assert out.shape == (2, 1, 8, 16)
    # the subset model reads variable 1 and 2 with the pretrained per-variable patch weights
    assert model.in_ids.tolist() == [1, 2] and model.out_ids.tolist() == [2]


def test_activation_checkpointing_gives_the_same_gradients():
    spec = _spec(residual=False)
    model = build_model(spec)
    batch = _batch(spec)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.activation_checkpointing = flag
        model(batch).square().mean().backward()
        grads.append(model.blocks[0].qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("size, low, high", [("B", 100e6, 115e6), ("H", 2.3e9, 2.7e9)])
def test_named_climax_sizes_match_the_paper_and_the_large_config(size, low, high):
    variables = [f"v{i}" for i in range(48)]  # the paper pretrains on 48 variables at 32x64
    with torch.device("meta"):
        model = build_model(WeatherModelSpec(variables=variables, size=size))
    count = sum(p.numel() for p in model.parameters())
    assert low < count < high


def test_sfno_baseline_starts_as_persistence_and_builds_on_meta():
    spec = WeatherModelSpec(variables=VARS, grid=(16, 32), arch="sfno")
    batch = _batch(spec, b=1)
    out = build_model(spec)(batch)
    torch.testing.assert_close(out, batch["inputs"][:, -1])
    with torch.device("meta"):
        assert next(build_model(spec).parameters()).device.type == "meta"


def test_sfno_has_only_real_parameters_for_deepspeed():
    model = build_model(WeatherModelSpec(variables=VARS, grid=(16, 32), arch="sfno"))
    assert not any(p.is_complex() for p in model.parameters())
    assert any(n.endswith("weight_imag") for n, _ in model.named_parameters())  # spectral weights kept, as pairs
    pickle.loads(pickle.dumps(model))  # MLflow exports the module by pickle


def test_family_loss_metrics_and_example_batch_fit_together():
    spec = _spec(rollout_steps=2)
    batch = FAMILY.example_batch(spec, 3)
    out = build_model(spec)(batch)
    assert FAMILY.loss(out, batch, spec).ndim == 0
    metrics = FAMILY.metrics(out, batch, spec)
    assert all(v.shape == (3,) for v in metrics.values())
    # the residual model starts as persistence, so their scores agree at the spec's lead
    torch.testing.assert_close(metrics["wmse/2m_temperature/24h"], metrics["wmse_persistence/2m_temperature/24h"])
    assert "wmse_climatology/2m_temperature/48h" in metrics
    assert np.isfinite(float(metrics["acc/geopotential_500/24h"].mean()))
