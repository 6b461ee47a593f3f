"""SeaweedFS (real S3) on loopback for the weather converter tests."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from orchestrator.services import create_bucket, s3_env, start_seaweedfs


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    service = start_seaweedfs(tmp_path_factory.mktemp("weed"))
    try:
        create_bucket(service.endpoint, "weather")
        yield service.endpoint
    finally:
        service.stop()


@pytest.fixture
def s3_options(seaweed):
    env = s3_env(seaweed)
    return {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": seaweed, "region_name": env["AWS_REGION"]}}


@pytest.fixture
def era5_dataset() -> xr.Dataset:
    """ERA5 layout: descending latitude, longitudes 0-359.x, a level dim; 6-hourly with one missing day."""
    times = pd.date_range("2021-01-01", periods=8, freq="6h").append(pd.date_range("2021-01-04", periods=8, freq="6h"))
    lat, lon, levels = np.array([67.5, 22.5, -22.5, -67.5]), np.arange(8) * 45.0, np.array([500, 850])
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"geopotential": (("time", "level", "latitude", "longitude"),
                          rng.normal(5e4, 1e3, (16, 2, 4, 8)).astype(np.float32)),
         "2m_temperature": (("time", "latitude", "longitude"), rng.normal(280, 5, (16, 4, 8)).astype(np.float32))},
        coords={"time": times, "level": levels, "latitude": lat, "longitude": lon},
    )
