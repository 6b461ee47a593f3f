"""Grids with poles (odd latitude counts): ClimaX pads across the poles, SFNO uses the equiangular grid, and
an ERA5-layout store trains both without any edit to the data."""

import numpy as np
import pytest
import torch

from data.converters.weatherbench2 import convert
from models.weather import build_model
from models.weather.climax import pad_to_multiple
from models.weather.config import WeatherModelSpec
from models.weather.sfno import sht_grid

VARS = ["geopotential_500", "temperature_850", "2m_temperature", "mean_sea_level_pressure"]


def _sphere_field(lat_deg, lon_deg):
    """A smooth function of the 3D position, so it is defined for latitudes beyond the poles too."""
    la, lo = np.deg2rad(lat_deg)[:, None], np.deg2rad(lon_deg)[None, :]
    x, y, z = np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la) + 0 * lo
    return torch.tensor(x + 2 * y + 3 * z + x * z, dtype=torch.float64)


@pytest.mark.parametrize("poles", [True, False])
def test_latitude_padding_continues_the_field_across_the_poles(poles):
    h, w = (9, 8) if poles else (8, 8)
    step = 180.0 / (h - 1 if poles else h)
    north = 90.0 if poles else 90.0 - step / 2
    lat, lon = north - step * np.arange(h), np.arange(w) * 360.0 / w
    padded = pad_to_multiple(_sphere_field(lat, lon), (h + 3, w + 2), poles)
    beyond = north - step * np.arange(-1, h + 2)  # one row past the north end, two past the south end
    expected = _sphere_field(beyond, lon)
    torch.testing.assert_close(padded[:, :w], expected)
    torch.testing.assert_close(padded[:, w:], expected[:, :2])  # longitude wraps


def test_climax_on_a_grid_with_poles_keeps_the_data_grid():
    spec = WeatherModelSpec(variables=VARS, grid=(33, 64))  # debug: patch 4, so 33 rows are padded to 36
    model = build_model(spec)
    assert model.padded == (36, 64) and model.poles and model.pos_embed.shape[1] == 9 * 16
    inputs = torch.randn(2, 1, 4, 33, 64)
    out = model({"inputs": inputs, "lead_hours": torch.full((2,), 24.0)})
    torch.testing.assert_close(out, inputs[:, -1])  # residual start: persistence, exactly, on the real grid
    odd = build_model(WeatherModelSpec(variables=VARS, grid=(8, 15), patch_size=3, residual=False))
    assert odd({"inputs": torch.randn(1, 1, 4, 8, 15), "lead_hours": torch.ones(1)}).shape == (1, 4, 8, 15)


def test_spec_refuses_only_a_patch_larger_than_the_grid():
    with pytest.raises(ValueError, match="model.patch_size 9 exceeds the smaller side of model.grid"):
        WeatherModelSpec(variables=VARS, grid=(8, 16), patch_size=9)


@pytest.mark.parametrize("grid, lat_grid, expected", [((33, 64), "auto", "equiangular"),
                                                      ((121, 240), "auto", "equiangular"),
                                                      ((32, 64), "auto", "legendre-gauss"),
                                                      ((32, 64), "equiangular", "equiangular"),
                                                      ((33, 64), "legendre-gauss", "legendre-gauss")])
def test_sfno_grid_follows_the_latitudes(grid, lat_grid, expected):
    spec = WeatherModelSpec(variables=VARS, grid=grid, arch="sfno", lat_grid=lat_grid)
    assert sht_grid(spec) == expected and spec.has_poles == (expected == "equiangular")


def test_sfno_builds_an_equiangular_transform_for_33_latitudes():
    model = build_model(WeatherModelSpec(variables=VARS, grid=(33, 64), arch="sfno"))
    assert model.net.grid == "equiangular" and model.net.trans_down.nlat == 33


def _convert(tmp_path, wb2_store):
    """ERA5 layout: 33 latitudes 90..-90 (descending, poles included) at 5.625 degrees, longitudes 0..354.375,
    geopotential and temperature on a level axis."""
    lat, lon = np.linspace(90, -90, 33), np.arange(64) * 5.625
    src = wb2_store(str(tmp_path / "era5.zarr"), lat, lon, times=12)
    convert(src, str(tmp_path / "ds"), variables=VARS, splits={"train": ("2020-01-01", "2020-01-03T18")},
            leads=[6])
    return str(tmp_path / "ds" / "train")


@pytest.mark.parametrize("arch", ["climax", "sfno"])
def test_era5_store_with_poles_trains_without_touching_the_data(tmp_path, wb2_store, train_steps, arch):
    url = _convert(tmp_path, wb2_store)
    spec = WeatherModelSpec(variables=VARS, grid=(33, 64), arch=arch, lead_hours=6)
    losses = train_steps("weather", spec, url)
    assert all(np.isfinite(losses))
