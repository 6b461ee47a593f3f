"""Converters on small files written in each project's published layout: Poseidon NetCDF (netCDF4), The Well
HDF5 (docs/data_format.md of PolymathicAI/the_well) and PDEBench HDF5 (pdebench/data_gen, Data_Merge.py)."""

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


def _netcdf(path, arrays: dict):
    """A NetCDF-4 file as Poseidon ships them: one variable per array, float32."""
    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as ds:
        for name, shape in arrays.items():
            dims = tuple(f"{name}_d{i}" for i in range(len(shape)))
            for d, n in zip(dims, shape):
                ds.createDimension(d, n)
            ds.createVariable(name, "f4", dims)[:] = rng.normal(size=shape).astype(np.float32)
    with netCDF4.Dataset(path) as ds:
        return {name: np.array(ds[name][:]) for name in arrays}


def test_poseidon_ns_velocity_with_tracer_and_split(tmp_path):
    path = str(tmp_path / "NS-PwC.nc")
    velocity = _netcdf(path, {"velocity": (5, 21, 3, 8, 8)})["velocity"]  # u, v, tracer as in Poseidon
    poseidon.convert(path, str(tmp_path / "out"), n_val=2, progress=False)
    train, samples = _samples(str(tmp_path / "out" / "train"))
    val, val_samples = _samples(str(tmp_path / "out" / "val"))
    assert (train.num_samples, val.num_samples) == (3, 2)
    assert train.attrs["channel_names"] == ["u", "v", "tracer"] and train.attrs["variables"] == ["velocity"]
    np.testing.assert_array_equal(samples[1]["u"], velocity[1])
    np.testing.assert_array_equal(val_samples[0]["u"], velocity[3])
    np.testing.assert_allclose(samples[0]["t"], np.arange(21) / 20, rtol=1e-6)
    # statistics: from the training trajectories only, stored in both splits
    expected = velocity[:3].transpose(2, 0, 1, 3, 4).reshape(3, -1)
    np.testing.assert_allclose(train.attrs["channel_mean"], expected.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(val.attrs["channel_std"], expected.std(1), rtol=1e-5)


def test_poseidon_compressible_data_channels_and_transpose(tmp_path):
    path = str(tmp_path / "CE-Gauss.nc")
    data = _netcdf(path, {"data": (2, 21, 4, 8, 8)})["data"]
    out = poseidon.convert(path, str(tmp_path / "o"), channels=[0, 3], transpose=True, progress=False)
    assert out["train"].attrs["channel_names"] == ["rho", "p"]
    _, samples = _samples(str(tmp_path / "o" / "train"))
    np.testing.assert_array_equal(samples[1]["u"], np.swapaxes(data[1][:, [0, 3]], -1, -2))
    with pytest.raises(ValueError, match="the file has 4 channels"):
        poseidon.convert(path, str(tmp_path / "o4"), channels=[4], progress=False)
    with pytest.raises(ValueError, match=r"variables \['velocity'\] not in the file"):
        poseidon.convert(path, str(tmp_path / "o2"), ["velocity"], progress=False)


def test_poseidon_wave_solution_gets_its_wave_speed_as_a_constant_channel(tmp_path):
    path = str(tmp_path / "Wave-Layer.nc")
    arrays = _netcdf(path, {"solution": (3, 15, 8, 8), "c": (3, 8, 8)})
    out = poseidon.convert(path, str(tmp_path / "o"), progress=False)
    assert out["train"].attrs["channel_names"] == ["solution", "c"] and out["train"].fields["u"].shape == (15, 2, 8, 8)
    _, samples = _samples(str(tmp_path / "o" / "train"))
    np.testing.assert_array_equal(samples[2]["u"][:, 0], arrays["solution"][2])
    np.testing.assert_array_equal(samples[2]["u"][7, 1], arrays["c"][2])


def test_poseidon_time_independent_sets_are_refused(tmp_path):
    path = str(tmp_path / "Poisson-Gauss.nc")
    _netcdf(path, {"source": (2, 8, 8), "solution": (2, 8, 8)})
    with pytest.raises(ValueError, match="time-independent set"):
        poseidon.convert(path, str(tmp_path / "o"), progress=False)


def test_poseidon_reads_from_an_object_store_url(tmp_path):
    velocity = _netcdf(str(tmp_path / "b.nc"), {"velocity": (2, 21, 2, 8, 8)})["velocity"]
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/poseidon/b.nc", (tmp_path / "b.nc").read_bytes())
    poseidon.convert("memory://bucket/poseidon/b.nc", str(tmp_path / "o"), progress=False)
    _, samples = _samples(str(tmp_path / "o" / "train"))
    np.testing.assert_array_equal(samples[1]["u"], velocity[1])


def _flags(ds, sample, time, dims=(True, True)):
    ds.attrs.update({"sample_varying": sample, "time_varying": time, "dim_varying": np.array(dims)})


def _well_file(path, n=3, t=6, x=8, y=8):
    """The Well's layout (docs/data_format.md): root attributes, dimensions/, boundary_conditions/, scalars/,
    t0/t1/t2_fields/ with field_names and the sample/time/dim_varying flags on every field."""
    rng = np.random.default_rng(1)
    arrays = {"density": rng.normal(size=(n, t, x, y)), "mask": (rng.random((x, y)) > 0.5) * 1.0,
              "profile": rng.normal(size=(n, t, x)), "velocity": rng.normal(size=(n, t, x, y, 2)),
              "D": rng.normal(size=(n, t, x, y, 2, 2))}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    with h5py.File(path, "w") as f:
        f.attrs.update({"dataset_name": "toy_flow", "grid_type": "cartesian", "n_spatial_dims": 2,
                        "n_trajectories": n, "simulation_parameters": ["Re"], "Re": 100.0})
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        dims["time"], dims["x"], dims["y"] = np.linspace(0, 2.5, t), np.arange(x) / x, np.arange(y) / y
        dims["time"].attrs["sample_varying"] = False
        for d in ("x", "y"):
            dims[d].attrs.update({"sample_varying": False, "time_varying": False})
        bc = f.create_group("boundary_conditions").create_group("x_periodic")
        bc.attrs.update({"associated_dims": ["x"], "associated_fields": [], "bc_type": "periodic",
                         "sample_varying": False, "time_varying": False})
        bc["mask"], bc["values"] = np.ones(x, bool), np.zeros(0, np.float32)
        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = ["Re"]
        scalars["Re"] = np.array([100.0], np.float32)
        scalars["Re"].attrs.update({"sample_varying": False, "time_varying": False})
        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["density", "mask", "profile"]
        for name, flags in (("density", (True, True, (True, True))), ("mask", (False, False, (True, True))),
                            ("profile", (True, True, (True, False)))):
            t0[name] = arrays[name]
            _flags(t0[name], *flags)
        for group, name in (("t1_fields", "velocity"), ("t2_fields", "D")):
            g = f.create_group(group)
            g.attrs["field_names"] = [name]
            g[name] = arrays[name]
            _flags(g[name], True, True)
        f["t2_fields/D"].attrs.update({"symmetric": False, "antisymmetric": False})
    return arrays


def test_the_well_layout_broadcasts_and_names_channels_as_the_well(tmp_path):
    a = _well_file(tmp_path / "toy.hdf5")
    the_well.convert(str(tmp_path / "toy.hdf5"), str(tmp_path / "o"), n_val=1, time_stride=2, progress=False)
    train, samples = _samples(str(tmp_path / "o" / "train"))
    assert train.attrs["channel_names"] == ["density", "mask", "profile", "velocity_x", "velocity_y",
                                            "D_xx", "D_xy", "D_yx", "D_yy"]
    assert train.attrs["equation"] == "the_well:toy_flow" and train.attrs["params"] == {"Re": 100.0}
    assert train.attrs["scalars"] == {"Re": [100.0]}
    assert train.attrs["boundary_conditions"] == {"x_periodic": "periodic"}
    u = samples[1]["u"]
    assert u.shape == (3, 9, 8, 8)
    np.testing.assert_array_equal(u[:, 0], a["density"][1, ::2])
    np.testing.assert_array_equal(u[2, 1], a["mask"])  # neither sample- nor time-varying
    np.testing.assert_array_equal(u[:, 2], np.repeat(a["profile"][1, ::2, :, None], 8, axis=-1))  # no y axis
    np.testing.assert_array_equal(u[:, 4], a["velocity"][1, ::2, :, :, 1])
    np.testing.assert_array_equal(u[:, 6], a["D"][1, ::2, :, :, 0, 1])
    np.testing.assert_allclose(samples[0]["t"], [0.0, 1.0, 2.0])
    assert read_manifest(str(tmp_path / "o" / "val")).num_samples == 1


def test_the_well_rejects_3d(tmp_path):
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f.attrs["n_spatial_dims"] = 3
    with pytest.raises(ValueError, match="only 2D"):
        the_well.convert(str(tmp_path / "x.hdf5"), str(tmp_path / "o"), progress=False)


def test_pdebench_1d_tensor_with_edge_times(tmp_path):
    tensor = np.random.default_rng(2).normal(size=(4, 5, 16)).astype(np.float32)
    with h5py.File(tmp_path / "1D_Advection_Sols_beta0.1.hdf5", "w") as f:
        f.create_dataset("tensor", data=tensor)
        f.create_dataset("x-coordinate", data=np.linspace(0, 1, 16))
        f.create_dataset("t-coordinate", data=np.linspace(0, 2, 6))  # T + 1 entries
        f.attrs["beta"] = 0.1
    out = pdebench.convert(str(tmp_path / "1D_Advection_Sols_beta0.1.hdf5"), str(tmp_path / "o"), n_val=1,
                           progress=False)
    train, samples = _samples(str(tmp_path / "o" / "train"))
    assert train.fields["u"].shape == (5, 1, 1, 16) and train.num_samples == 3
    assert out["train"].attrs["params"] == {"beta": 0.1} and out["train"].attrs["layout"] == "arrays"
    np.testing.assert_array_equal(samples[2]["u"][:, 0, 0], tensor[2])
    np.testing.assert_allclose(samples[0]["t"], np.linspace(0, 2, 6)[:5])


def test_pdebench_2d_cfd_found_without_naming_variables(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {k: rng.normal(size=(2, 3, 8, 8)).astype(np.float32) for k in ("density", "pressure", "Vx", "Vy")}
    with h5py.File(tmp_path / "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_Train.hdf5", "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for c in ("x", "y"):
            f.create_dataset(f"{c}-coordinate", data=np.linspace(0, 1, 8))
        f.create_dataset("t-coordinate", data=np.linspace(0, 1, 4))
        f.attrs.update({"eta": 0.01, "zeta": 0.01, "M": 0.1})
    out = pdebench.convert(str(tmp_path / "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_Train.hdf5"),
                           str(tmp_path / "o"), progress=False)
    assert out["train"].attrs["channel_names"] == ["density", "pressure", "Vx", "Vy"]
    _, samples = _samples(str(tmp_path / "o" / "train"))
    np.testing.assert_array_equal(samples[1]["u"][:, 1], arrays["pressure"][1])


def test_pdebench_darcy_stacks_the_coefficient_first(tmp_path):
    rng = np.random.default_rng(5)
    tensor, nu = rng.normal(size=(3, 1, 8, 8)).astype(np.float32), rng.random((3, 8, 8)).astype(np.float32)
    with h5py.File(tmp_path / "2D_DarcyFlow_beta1.0_Train.hdf5", "w") as f:
        f.create_dataset("tensor", data=tensor)
        f.create_dataset("nu", data=nu)
        f.create_dataset("x-coordinate", data=np.linspace(0, 1, 8))
        f.create_dataset("y-coordinate", data=np.linspace(0, 1, 8))
        f.attrs["beta"] = 1.0
    out = pdebench.convert(str(tmp_path / "2D_DarcyFlow_beta1.0_Train.hdf5"), str(tmp_path / "o"), progress=False)
    assert out["train"].attrs["channel_names"] == ["nu", "tensor"] and out["train"].fields["u"].shape == (1, 2, 8, 8)
    _, samples = _samples(str(tmp_path / "o" / "train"))
    np.testing.assert_array_equal(samples[2]["u"][0, 0], nu[2])
    np.testing.assert_array_equal(samples[2]["u"][0, 1], tensor[2, 0])


def test_pdebench_incompressible_ns(tmp_path):
    rng = np.random.default_rng(6)
    arrays = {"velocity": (2, 4, 8, 8, 2), "particles": (2, 4, 8, 8, 1), "force": (2, 8, 8, 2)}
    arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in arrays.items()}
    with h5py.File(tmp_path / "ns_incom_inhom_2d_512-0.h5", "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        f.create_dataset("t", data=np.tile(np.linspace(0, 0.3, 4), (2, 1)).astype(np.float32))
        f.attrs["config"] = "sim_name: ns_incom_inhom_2d_512"
    out = pdebench.convert(str(tmp_path / "ns_incom_inhom_2d_512-0.h5"), str(tmp_path / "o"), progress=False)
    assert out["train"].attrs["channel_names"] == ["Vx", "Vy", "particles", "force_x", "force_y"]
    _, samples = _samples(str(tmp_path / "o" / "train"))
    np.testing.assert_array_equal(samples[1]["u"][:, 1], arrays["velocity"][1, ..., 1])
    np.testing.assert_array_equal(samples[1]["u"][3, 4], arrays["force"][1, ..., 1])
    np.testing.assert_allclose(samples[1]["t"], np.linspace(0, 0.3, 4), rtol=1e-6)


def test_pdebench_seed_groups(tmp_path):
    rng = np.random.default_rng(4)
    data = [rng.normal(size=(4, 8, 8, 2)).astype(np.float32) for _ in range(3)]
    with h5py.File(tmp_path / "2D_diff-react_NA_NA.h5", "w") as f:
        for i, d in enumerate(data):
            f.create_dataset(f"{i:04d}/data", data=d, dtype="float32", compression="lzf")
            for c, n in (("x", 8), ("y", 8), ("t", 4)):
                f.create_dataset(f"{i:04d}/grid/{c}", data=np.linspace(0, 5 if c == "t" else 1, n), dtype="float32")
            f[f"{i:04d}"].attrs["config"] = "sim: {seed: %d}" % i
    out = pdebench.convert(str(tmp_path / "2D_diff-react_NA_NA.h5"), str(tmp_path / "o"), n_val=1, progress=False)
    _, samples = _samples(str(tmp_path / "o" / "val"))
    np.testing.assert_array_equal(samples[0]["u"], np.moveaxis(data[2], -1, 1))
    assert out["train"].attrs["layout"] == "seed-groups" and out["train"].attrs["time_span"] == 5.0


def test_pdebench_unknown_and_3d_layouts_are_explained(tmp_path):
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f["something"] = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="--variables"):
        pdebench.convert(str(tmp_path / "odd.h5"), str(tmp_path / "o"), progress=False)
    with h5py.File(tmp_path / "3D_CFD.hdf5", "w") as f:
        for k in ("density", "pressure", "Vx", "Vy", "Vz"):
            f[k] = np.zeros((1, 2, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="3D compressible-NS"):
        pdebench.convert(str(tmp_path / "3D_CFD.hdf5"), str(tmp_path / "o"), progress=False)
