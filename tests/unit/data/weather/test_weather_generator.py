"""Shallow-water generator: WeatherBench2 schema, CF attributes, 6-hourly stamps, physical ranges."""

import numpy as np
import pytest
import xarray as xr

from data.generators.shallow_water import generate


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sw") / "sw.zarr")
    generate(path, trajectories=2, days=0.5, nlat=8, nlon=16, spinup_hours=6, galewsky_fraction=0.5, seed=3)
    return xr.open_zarr(path)


def test_schema_follows_weatherbench2(store):
    assert set(store.dims) == {"time", "level", "latitude", "longitude"}
    assert store.sizes["latitude"] == 8 and store.sizes["longitude"] == 16
    assert store.geopotential.dims == ("time", "level", "latitude", "longitude")
    assert store["2m_temperature"].dims == ("time", "latitude", "longitude")
    assert {"u_component_of_wind", "v_component_of_wind", "vorticity", "10m_wind_speed"} <= set(store.data_vars)
    assert store.level.values.tolist() == [500]


def test_cf_attributes(store):
    assert store.attrs["Conventions"].startswith("CF-")
    assert store.latitude.attrs["units"] == "degrees_north" and store.longitude.attrs["units"] == "degrees_east"
    assert store.u_component_of_wind.attrs["standard_name"] == "eastward_wind"
    assert store.geopotential.attrs["units"] == "m**2 s**-2"


def test_grid_is_equiangular_without_poles(store):
    lat = store.latitude.values
    np.testing.assert_allclose(np.diff(lat), 22.5)
    assert lat[0] == pytest.approx(-78.75) and lat[-1] == pytest.approx(78.75)
    np.testing.assert_allclose(store.longitude.values, np.arange(16) * 22.5)


def test_six_hourly_stamps_with_a_gap_between_trajectories(store):
    steps = np.diff(store.time.values).astype("timedelta64[h]").astype(int)
    assert steps.tolist() == [6, 30, 6]  # 2 x 2 stamps; the jump marks a new initial condition


def test_fields_are_finite_and_physical(store):
    for name in store.data_vars:
        assert np.isfinite(store[name].values).all(), name
    phi = store.geopotential.values
    assert 0.8 * 9.81e4 < phi.mean() < 1.05 * 9.81e4  # mean depth near the solver's 10 km
    assert np.abs(store.u_component_of_wind.values).max() < 150.0
    assert (store["10m_wind_speed"].values >= 0).all()
