"""An ERA5-layout Zarr store written by the tests: descending latitude, longitudes 0-359.x, a level dim."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

LAT = np.array([67.5, 22.5, -22.5, -67.5])  # ERA5 order: north first
LON = np.array([0.0, 90.0, 180.0, 270.0])
LEVELS = np.array([500, 850])


def era5_like(times: pd.DatetimeIndex) -> xr.Dataset:
    """Values encode (time index, level, lat index, lon index) so tests can tell every frame apart."""
    t = np.arange(len(times))[:, None, None, None]
    lev = LEVELS[None, :, None, None]
    ilat, ilon = np.arange(4)[None, None, :, None], np.arange(4)[None, None, None, :]
    z = (t * 1000 + lev + ilat * 10 + ilon).astype(np.float32)
    t2m = (t[:, 0] * 100 + ilat[:, 0] * 10 + ilon[:, 0]).astype(np.float32)
    return xr.Dataset(
        {"geopotential": (("time", "level", "latitude", "longitude"), z, {"units": "m**2 s**-2"}),
         "2m_temperature": (("time", "latitude", "longitude"), t2m, {"units": "K"})},
        coords={"time": times, "level": LEVELS, "latitude": LAT, "longitude": LON},
    )


def era5_times() -> pd.DatetimeIndex:
    """Two 2-day blocks, 6-hourly, with a gap of one missing day between them."""
    first = pd.date_range("2021-01-01", periods=8, freq="6h")
    return first.append(pd.date_range("2021-01-04", periods=8, freq="6h"))


@pytest.fixture
def era5_store(tmp_path):
    ds = era5_like(era5_times())
    path = str(tmp_path / "era5.zarr")
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path, ds
