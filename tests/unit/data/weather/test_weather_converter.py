"""WeatherBench2 converter against a Zarr store written in the ERA5 layout (local path)."""

import numpy as np
import pytest

from data.converters.weatherbench2 import convert, decode_climatology, window_starts
from data.format import open_shard, read_manifest

VARS = ["geopotential_500", "2m_temperature"]
SPLITS = {"train": ("2021-01-01", "2021-01-02T18"), "val": ("2021-01-04", "2021-01-05T18")}


def read_all(url):
    manifest = read_manifest(url, {})
    samples = []
    for shard in manifest.shards:
        view = open_shard(f"{url}/{shard.key}", manifest.fields)
        samples += [{k: np.array(v) for k, v in view.sample(i).items()} for i in range(view.num_samples)]
    return manifest, samples


def _convert(src, out, **kw):
    args = dict(variables=VARS, splits=SPLITS, history=2, leads=[6, 12], shard_bytes=1200)  # ~2 samples per shard
    return convert(src, out, **{**args, **kw})


def test_windows_hold_the_right_frames_in_north_first_order(era5_store, tmp_path):
    path, ds = era5_store
    _convert(path, str(tmp_path / "out"))
    manifest, samples = read_all(str(tmp_path / "out" / "train"))
    # 8 stamps per block, a window needs 1 step back and 2 ahead: 5 windows, all in the first block
    assert len(samples) == 5 and len(manifest.shards) > 1
    assert manifest.attrs["lat"] == [67.5, 22.5, -22.5, -67.5]
    hours = (ds.time.values.astype("datetime64[h]").astype(np.int64))
    for s in samples:
        i = int(np.searchsorted(hours, int(s["time"].reshape(-1)[0])))
        frames = [i - 1, i, i + 1, i + 2]
        z = ds.geopotential.sel(level=500).values[frames]
        t2m = ds["2m_temperature"].values[frames]
        np.testing.assert_array_equal(s["inputs"][:, 0], z[:2])
        np.testing.assert_array_equal(s["targets"][:, 1], t2m[2:])


def test_ascending_latitude_and_signed_longitude_give_identical_shards(era5_store, tmp_path):
    path, ds = era5_store
    flipped = ds.isel(latitude=slice(None, None, -1))
    flipped = flipped.assign_coords(longitude=[0.0, 90.0, -180.0, -90.0]).sortby("longitude")
    alt = str(tmp_path / "alt.zarr")
    flipped.to_zarr(alt, zarr_format=2, consolidated=True)
    _convert(path, str(tmp_path / "a"))
    _convert(alt, str(tmp_path / "b"))
    (ma, sa), (mb, sb) = read_all(str(tmp_path / "a" / "val")), read_all(str(tmp_path / "b" / "val"))
    assert mb.attrs["lat"] == ma.attrs["lat"] and mb.attrs["lon"] == [0.0, 90.0, 180.0, 270.0]
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


def test_statistics_and_climatology_come_from_the_train_range(era5_store, tmp_path):
    path, ds = era5_store
    manifests = _convert(path, str(tmp_path / "out"))
    train = ds.sel(time=slice(*SPLITS["train"]))
    z = train.geopotential.sel(level=500).values.astype(np.float64)
    attrs = manifests["val"].attrs  # every split carries the train statistics
    assert attrs["mean"][0] == pytest.approx(z.mean()) and attrs["std"][0] == pytest.approx(z.std())
    hours, clim = decode_climatology(attrs)
    assert hours.tolist() == [0, 6, 12, 18] and clim.shape == (4, 2, 4, 4)
    np.testing.assert_allclose(clim[1, 0], z[1::4].mean(axis=0), rtol=1e-6)  # 06 UTC of both train days


def test_windows_never_span_missing_times_or_leave_their_split():
    hours = np.array([0, 6, 12, 18, 42, 48, 54, 60])  # a gap between 18 and 42
    offsets = np.array([-6, 0, 6])
    np.testing.assert_array_equal(window_starts(hours, offsets, (0, 100)), [1, 2, 5, 6])
    np.testing.assert_array_equal(window_starts(hours, offsets, (0, 54)), [1, 2, 5])


@pytest.mark.parametrize("names, match", [(["vorticity_500"], "unknown variable 'vorticity_500'"),
                                          (["geopotential_300"], "level 300 hPa not stored; available levels"),
                                          (["geopotential"], "add one as suffix")])
def test_bad_variable_names_are_explained(era5_store, tmp_path, names, match):
    with pytest.raises(ValueError, match=match):
        _convert(era5_store[0], str(tmp_path / "out"), variables=names)


def test_a_split_without_complete_windows_is_an_error(era5_store, tmp_path):
    with pytest.raises(ValueError, match="split val .* holds no complete window"):
        _convert(era5_store[0], str(tmp_path / "out"), splits={**SPLITS, "val": ("2021-01-03", "2021-01-03T12")})
