"""The WeatherBench2 grids (64x32 without poles, 240x121 and 1440x721 with poles) in the layouts they ship in."""

import numpy as np
import pytest

from data.converters.weatherbench2 import convert, open_store, select_fields
from data.format import open_shard, read_manifest
from models.weather.metrics import lat_weights


def _lat(n, poles, descending=False):
    step = 180.0 / (n - 1 if poles else n)
    lat = np.linspace(-90, 90, n) if poles else -90 + step / 2 + step * np.arange(n)
    return lat[::-1] if descending else lat


def _lon(n, signed=False):
    lon = np.arange(n) * 360.0 / n
    return np.where(lon >= 180, lon - 360, lon) if signed else lon


def _first_sample(url):
    manifest = read_manifest(url)
    view = open_shard(f"{url}/{manifest.shards[0].key}", manifest.fields)
    return manifest, {k: np.array(v) for k, v in view.sample(0).items()}


@pytest.mark.parametrize("nlat, nlon, poles, descending, signed, lon_first", [
    (32, 64, False, False, False, True),   # WB2 64x32: ascending, (time, level, longitude, latitude)
    (121, 240, True, False, True, False),  # a 240x121-style store with -180..180 longitudes
    (33, 64, True, True, False, False),    # ERA5 order (north first) at 5.625 degrees with poles
])
def test_grids_convert_to_north_first_and_0_360(tmp_path, wb2_store, wb2_field, nlat, nlon, poles, descending, signed,
                                                lon_first):
    lat, lon = _lat(nlat, poles, descending), _lon(nlon, signed)
    src = wb2_store(str(tmp_path / "s.zarr"), lat, lon, times=4, lon_first=lon_first)
    convert(src, str(tmp_path / "out"), variables=["geopotential_500", "temperature_850", "2m_temperature"],
            splits={"train": ("2020-01-01", "2020-01-01T18")}, leads=[6])
    manifest, sample = _first_sample(str(tmp_path / "out" / "train"))
    out_lat, out_lon = np.array(manifest.attrs["lat"]), np.array(manifest.attrs["lon"])
    assert out_lat[0] == pytest.approx(90.0 if poles else 87.1875) and np.all(np.diff(out_lat) < 0)
    assert out_lon[0] == 0.0 and np.all(np.diff(out_lon) > 0) and out_lon[-1] < 360
    assert sample["inputs"].shape == (1, 3, nlat, nlon)
    hours = [int(sample["time"]) - int(np.datetime64("2020-01-01T00", "h").astype(np.int64))]
    expected = [wb2_field(out_lat, out_lon, hours, offset)[0] for offset in (500.0, 100.0 + 850, 200.0)]
    np.testing.assert_allclose(sample["inputs"][0], np.stack(expected), rtol=1e-6, atol=1e-4)


def test_1440x721_ascending_with_poles_opens_north_first(tmp_path, wb2_store, wb2_field):
    lat, lon = _lat(721, True), _lon(1440)
    src = wb2_store(str(tmp_path / "big.zarr"), lat, lon, times=1, variables=("2m_temperature",))
    ds = open_store(src, None)
    field = select_fields(ds, ["2m_temperature"])[0]
    assert field.dims == ("time", "latitude", "longitude") and field.shape == (1, 721, 1440)
    assert ds.latitude.values[0] == 90.0 and ds.latitude.values[-1] == -90.0
    np.testing.assert_allclose(field.values[0], wb2_field(ds.latitude.values, ds.longitude.values, [0], 0)[0],
                               atol=1e-4)


def _wb2_lat_weights(lat_deg):
    """WeatherBench2's weatherbench2.metrics.get_lat_weights (cell areas between midpoints and the poles,
    normalised to mean 1), for ascending latitudes as it requires."""
    lat = np.deg2rad(lat_deg)
    bounds = np.concatenate([[-np.pi / 2], (lat[:-1] + lat[1:]) / 2, [np.pi / 2]])
    area = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    return area / area.mean()


@pytest.mark.parametrize("n, poles", [(32, False), (33, True), (121, True), (721, True)])
def test_lat_weights_match_weatherbench2(n, poles):
    lat = _lat(n, poles)
    np.testing.assert_allclose(lat_weights(lat), _wb2_lat_weights(lat), rtol=1e-5)
    np.testing.assert_allclose(lat_weights(lat[::-1]), _wb2_lat_weights(lat)[::-1], rtol=1e-5)
    if poles:  # a pole point holds its polar cap: a quarter-step band, not zero
        step = np.deg2rad(180 / (n - 1))
        assert lat_weights(lat)[0] == pytest.approx((1 - np.cos(step / 2)) / (2 / n), rel=1e-4)
