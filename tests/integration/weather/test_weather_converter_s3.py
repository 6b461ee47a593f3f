"""The WeatherBench2 converter reading an ERA5-layout Zarr from SeaweedFS over S3 and writing shards there."""

import numpy as np
import pytest

from data.converters.weatherbench2 import convert
from data.format import ShardView, read_manifest
from data.storage import filesystem

pytestmark = pytest.mark.integration

ARGS = dict(variables=["geopotential_500", "2m_temperature"], history=2, leads=[6, 12],
            splits={"train": ("2021-01-01", "2021-01-02T18"), "val": ("2021-01-04", "2021-01-05T18")})


def _samples(url, options):
    manifest = read_manifest(url, options)
    fs, root = filesystem(url, options)
    out = []
    for shard in manifest.shards:
        view = ShardView(fs.cat(f"{root}/{shard.key}"), manifest.fields, shard.key)
        out += [{k: np.array(v) for k, v in view.sample(i).items()} for i in range(view.num_samples)]
    return manifest, out


def test_s3_source_and_output_match_a_local_conversion(tmp_path, s3_options, era5_dataset):
    ds = era5_dataset
    ds.to_zarr("s3://weather/era5.zarr", storage_options=s3_options, zarr_format=2, consolidated=True, mode="w")
    ds.to_zarr(str(tmp_path / "era5.zarr"), zarr_format=2, consolidated=True)
    convert("s3://weather/era5.zarr", "s3://weather/shards", src_options=s3_options, out_options=s3_options, **ARGS)
    convert(str(tmp_path / "era5.zarr"), str(tmp_path / "shards"), **ARGS)
    for split in ("train", "val"):
        remote, rs = _samples(f"s3://weather/shards/{split}", s3_options)
        local, ls = _samples(str(tmp_path / "shards" / split), {})
        assert remote.num_samples == local.num_samples == 5
        assert remote.attrs["mean"] == local.attrs["mean"] and remote.attrs["lat"][0] == 67.5
        for a, b in zip(rs, ls, strict=True):
            np.testing.assert_array_equal(a["inputs"], b["inputs"])
            np.testing.assert_array_equal(a["targets"], b["targets"])
    z = ds.geopotential.sel(level=500).values
    np.testing.assert_array_equal(ls[0]["inputs"][1, 0], z[9])  # val block starts at index 8; window at 9
