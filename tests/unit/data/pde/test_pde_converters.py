"""Converters on small files written here in each format: Poseidon NetCDF, The Well HDF5, PDEBench HDF5."""

import fsspec
import h5py
import netCDF4
import numpy as np
import pytest

from data.converters import pdebench, poseidon, the_well
from data.format import open_shard, read_manifest


def _samples(url):
    m = read_manifest(url)
    out = []
    for shard in m.shards:
        view = open_shard(f"{url}/{shard.key}", m.fields)
        out += [view.sample(i) for i in range(shard.num_samples)]
    return m, out


def _poseidon_file(path, n=5, t=4, h=8):
    rng = np.random.default_rng(0)
    velocity = rng.normal(size=(n, t, 2, h, h)).astype(np.float32)
    tracer = rng.normal(size=(n, t, h, h)).astype(np.float32)
    with netCDF4.Dataset(path, "w") as ds:
        for name, size in (("member", n), ("time", t), ("channel", 2), ("x", h), ("y", h)):
            ds.createDimension(name, size)
        ds.createVariable("velocity", "f4", ("member", "time", "channel", "x", "y"))[:] = velocity
        ds.createVariable("tracer", "f4", ("member", "time", "x", "y"))[:] = tracer
    return velocity, tracer


def test_poseidon_netcdf_with_extra_variable_and_split(tmp_path):
    velocity, tracer = _poseidon_file(tmp_path / "NS-Tracer.nc")
    poseidon.convert(str(tmp_path / "NS-Tracer.nc"), str(tmp_path / "out"), ["velocity", "tracer"], n_val=2,
                     progress=False)
    train, samples = _samples(str(tmp_path / "out" / "train"))
    val, val_samples = _samples(str(tmp_path / "out" / "val"))
    assert (train.num_samples, val.num_samples) == (3, 2)
    np.testing.assert_array_equal(samples[1]["u"][:, :2], velocity[1])
    np.testing.assert_array_equal(samples[1]["u"][:, 2], tracer[1])
    np.testing.assert_array_equal(val_samples[0]["u"][:, :2], velocity[3])
    np.testing.assert_allclose(samples[0]["t"], [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
    # statistics: from the training trajectories only, stored in both splits
    expected = np.concatenate([velocity[:3], tracer[:3, :, None]], 2).transpose(2, 0, 1, 3, 4).reshape(3, -1)
    np.testing.assert_allclose(train.attrs["channel_mean"], expected.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(val.attrs["channel_std"], expected.std(1), rtol=1e-5)
    assert train.attrs["channel_names"] == ["velocity[0]", "velocity[1]", "tracer"]


def test_poseidon_default_variable_and_missing_variable(tmp_path):
    _poseidon_file(tmp_path / "a.nc")
    out = poseidon.convert(str(tmp_path / "a.nc"), str(tmp_path / "o"), progress=False)
    assert out["train"].fields["u"].shape == (4, 2, 8, 8)  # "velocity" picked by default
    sub = poseidon.convert(str(tmp_path / "a.nc"), str(tmp_path / "o3"), channels=[1], progress=False)
    assert sub["train"].attrs["channel_names"] == ["velocity[1]"] and sub["train"].fields["u"].shape[1] == 1
    with pytest.raises(ValueError, match="the file has 2 channels"):
        poseidon.convert(str(tmp_path / "a.nc"), str(tmp_path / "o4"), channels=[2], progress=False)
    with pytest.raises(ValueError, match=r"variables \['density'\] not in the file"):
        poseidon.convert(str(tmp_path / "a.nc"), str(tmp_path / "o2"), ["density"], progress=False)


def test_poseidon_reads_from_an_object_store_url(tmp_path):
    velocity, _ = _poseidon_file(tmp_path / "b.nc", n=2)
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/poseidon/b.nc", (tmp_path / "b.nc").read_bytes())
    poseidon.convert("memory://bucket/poseidon/b.nc", str(tmp_path / "o"), progress=False)
    _, samples = _samples(str(tmp_path / "o" / "train"))
    np.testing.assert_array_equal(samples[1]["u"], velocity[1])


def _well_file(path, n=3, t=6, x=8, y=8):
    rng = np.random.default_rng(1)
    density = rng.normal(size=(n, t, x, y)).astype(np.float32)
    velocity = rng.normal(size=(n, t, x, y, 2)).astype(np.float32)
    mask = (rng.random((x, y)) > 0.5).astype(np.float32)  # neither sample- nor time-varying
    with h5py.File(path, "w") as f:
        f.attrs.update({"dataset_name": "toy_flow", "n_spatial_dims": 2, "n_trajectories": n})
        dims = f.create_group("dimensions")
        dims["time"], dims["x"], dims["y"] = np.linspace(0, 2.5, t), np.arange(x), np.arange(y)
        f.create_group("boundary_conditions")
        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["density", "mask"]
        t0["density"] = density
        t0["mask"] = mask
        t0["mask"].attrs.update({"sample_varying": False, "time_varying": False})
        t0["density"].attrs.update({"sample_varying": True, "time_varying": True})
        f.create_group("t1_fields")["velocity"] = velocity
        f.create_group("t2_fields")
    return density, velocity, mask


def test_the_well_fields_broadcast_and_time_stride(tmp_path):
    density, velocity, mask = _well_file(tmp_path / "toy.hdf5")
    the_well.convert(str(tmp_path / "toy.hdf5"), str(tmp_path / "o"), n_val=1, time_stride=2, progress=False)
    train, samples = _samples(str(tmp_path / "o" / "train"))
    assert train.attrs["channel_names"] == ["density", "mask", "velocity[0]", "velocity[1]"]
    u = samples[1]["u"]
    assert u.shape == (3, 4, 8, 8)
    np.testing.assert_array_equal(u[:, 0], density[1, ::2])
    np.testing.assert_array_equal(u[2, 1], mask)
    np.testing.assert_array_equal(u[:, 3], velocity[1, ::2, :, :, 1])
    np.testing.assert_allclose(samples[0]["t"], [0.0, 1.0, 2.0])
    assert read_manifest(str(tmp_path / "o" / "val")).num_samples == 1


def test_the_well_rejects_3d(tmp_path):
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f.attrs["n_spatial_dims"] = 3
    with pytest.raises(ValueError, match="only 2D"):
        the_well.convert(str(tmp_path / "x.hdf5"), str(tmp_path / "o"), progress=False)


def test_pdebench_tensor_layout_1d_with_edge_times(tmp_path):
    rng = np.random.default_rng(2)
    tensor = rng.normal(size=(4, 5, 16)).astype(np.float32)
    with h5py.File(tmp_path / "1D_Advection.hdf5", "w") as f:
        f["tensor"], f["x-coordinate"], f["t-coordinate"] = tensor, np.linspace(0, 1, 16), np.linspace(0, 2, 6)
    pdebench.convert(str(tmp_path / "1D_Advection.hdf5"), str(tmp_path / "o"), n_val=1, progress=False)
    train, samples = _samples(str(tmp_path / "o" / "train"))
    assert train.fields["u"].shape == (5, 1, 1, 16) and train.num_samples == 3
    np.testing.assert_array_equal(samples[2]["u"][:, 0, 0], tensor[2])
    np.testing.assert_allclose(samples[0]["t"], np.linspace(0, 2, 6)[:5])


def test_pdebench_named_variables_2d(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {k: rng.normal(size=(2, 3, 8, 8)).astype(np.float32) for k in ("density", "Vx", "Vy", "pressure")}
    with h5py.File(tmp_path / "2D_CFD.hdf5", "w") as f:
        for k, v in arrays.items():
            f[k] = v
        f["t-coordinate"] = np.linspace(0, 1, 4)
    pdebench.convert(str(tmp_path / "2D_CFD.hdf5"), str(tmp_path / "o"), ["density", "Vx", "Vy", "pressure"],
                     progress=False)
    _, samples = _samples(str(tmp_path / "o" / "train"))
    np.testing.assert_array_equal(samples[1]["u"][:, 3], arrays["pressure"][1])


def test_pdebench_seed_groups(tmp_path):
    rng = np.random.default_rng(4)
    data = [rng.normal(size=(4, 8, 8, 2)).astype(np.float32) for _ in range(3)]
    with h5py.File(tmp_path / "2D_diff-react.h5", "w") as f:
        for i, d in enumerate(data):
            g = f.create_group(f"{i:04d}")
            g["data"] = d
            g.create_group("grid")["t"] = np.linspace(0, 5, 4)
    out = pdebench.convert(str(tmp_path / "2D_diff-react.h5"), str(tmp_path / "o"), n_val=1, progress=False)
    _, samples = _samples(str(tmp_path / "o" / "val"))
    np.testing.assert_array_equal(samples[0]["u"], np.moveaxis(data[2], -1, 1))
    assert out["train"].attrs["layout"] == "seed-groups" and out["train"].attrs["time_span"] == 5.0


def test_pdebench_missing_tensor_is_explained(tmp_path):
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f["something"] = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="--variables"):
        pdebench.convert(str(tmp_path / "odd.h5"), str(tmp_path / "o"), progress=False)
