"""Stored window -> example: normalisation, lead selection, climatology at the valid time, errors."""

import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from data.converters.weatherbench2 import encode_climatology
from data.format import FieldSpec
from models.weather.config import WeatherModelSpec
from models.weather.transform import collate, make_transform

STORED = ["geopotential_500", "2m_temperature", "u_component_of_wind_500"]


def _manifest(**over):
    clim = np.stack([np.full((3, 2, 4), 10.0 * k) for k in range(4)])  # slot k holds 10 k everywhere
    attrs = {"variables": STORED, "lat": [45.0, -45.0], "lon": [0.0, 90.0, 180.0, 270.0], "history": 2,
             "lead_hours": [6, 12, 24], "mean": [1.0, 2.0, 3.0], "std": [2.0, 4.0, 5.0],
             "climatology": encode_climatology(clim, np.array([0, 6, 12, 18]))}
    fields = {"inputs": FieldSpec(dtype="float32", shape=(2, 3, 2, 4)),
              "targets": FieldSpec(dtype="float32", shape=(3, 3, 2, 4)), "time": FieldSpec(dtype="int64", shape=())}
    return SimpleNamespace(attrs={**attrs, **over}, fields=fields)


def _sample(init_hour=18):
    inputs = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 2, 4)
    targets = np.stack([np.full((3, 2, 4), 100.0 * (k + 1), np.float32) for k in range(3)])
    return {"inputs": inputs, "targets": targets, "time": np.array([24 * 1000 + init_hour])}


def _spec(**kw):
    return WeatherModelSpec(variables=STORED[::-1], grid=(2, 4), patch_size=2, **kw)


def test_selects_normalises_and_picks_the_lead():
    spec = _spec(in_variables=["2m_temperature", "geopotential_500"], out_variables=["2m_temperature"],
                 lead_hours=12)
    ex = make_transform(spec, _manifest())(_sample(), np.random.default_rng(0))
    assert ex["inputs"].shape == (1, 2, 2, 4)  # history 1 of the 2 stored steps, the newest
    np.testing.assert_allclose(ex["inputs"][0, 1], (_sample()["inputs"][1, 0] - 1.0) / 2.0)
    np.testing.assert_allclose(ex["targets"][0, 0], (200.0 - 2.0) / 4.0)  # lead 12 h is stored second
    np.testing.assert_allclose(ex["std"], [4.0])


def test_climatology_is_taken_at_each_valid_time():
    spec = _spec(lead_hours=6, rollout_steps=3)  # init 18 UTC: valid at 00, 06, 12 UTC
    ex = make_transform(spec, _manifest(lead_hours=[6, 12, 18]))(_sample(18), np.random.default_rng(0))
    raw_clim = [0.0, 10.0, 20.0]
    for k, value in enumerate(raw_clim):
        np.testing.assert_allclose(ex["clim"][k, 2], (value - 1.0) / 2.0)  # geopotential is the 3rd output


def test_transform_is_picklable_and_collates():
    transform = make_transform(_spec(), _manifest())
    clone = pickle.loads(pickle.dumps(transform))
    batch = collate([clone(_sample(), np.random.default_rng(i)) for i in range(2)])
    assert batch["inputs"].shape == (2, 1, 3, 2, 4) and batch["lat_weights"].shape == (2, 2)


@pytest.mark.parametrize("spec_kw, attrs, match", [
    ({"lead_hours": 48}, {}, "missing \\[48\\] h"),
    ({"history": 3}, {}, "model.history=3 does not fit the data: the dataset has 2 input step"),
    ({}, {"lon": [0.0, 180.0]}, "set model.grid: \\[2, 2\\]"),
    ({}, {"variables": STORED[:2]}, "model.variables="),
])
def test_mismatches_between_spec_and_dataset_are_explained(spec_kw, attrs, match):
    with pytest.raises(ValueError, match=match):
        make_transform(_spec(**spec_kw), _manifest(**attrs))
