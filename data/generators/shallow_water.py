"""Global weather-like fields from the shallow-water equations on the rotating sphere.

The spectral solver is torch-harmonics' ``ShallowWaterSolver`` (the field's reference implementation).
Each trajectory starts from a random balanced flow or a Galewsky-type barotropically unstable jet with
random parameters, is spun up, and is then sampled every 6 hours. Fields are evaluated spectrally on a
WeatherBench2-style equiangular grid without poles (64x32 by default) and written as a Zarr store in the
WeatherBench2 / ARCO-ERA5 schema: dims (time, level, latitude, longitude), WeatherBench2 variable names,
CF attributes. Trajectories are separated by a gap in the time axis so no forecast window spans two.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import torch
import xarray as xr

_G = 9.80616
_RD = 287.05  # dry-air gas constant, for the hypsometric temperature of the layer
_LEVEL_HPA = 500  # the single layer stands for the equivalent-barotropic level
_STEP_HOURS = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sciscale data generate shallow-water``."""
    parser.add_argument("--out", required=True, help="Zarr store to write: local path or s3://bucket/prefix")
    parser.add_argument("--trajectories", type=int, default=12, help="independent initial conditions")
    parser.add_argument("--days", type=float, default=20.0, help="days recorded per trajectory (6-hourly)")
    parser.add_argument("--nlat", type=int, default=32, help="output latitudes (no poles)")
    parser.add_argument("--nlon", type=int, default=64, help="output longitudes")
    parser.add_argument("--galewsky-fraction", type=float, default=0.25, help="share of Galewsky-type jets")
    parser.add_argument("--spinup-hours", type=float, default=48.0, help="integration before recording")
    parser.add_argument("--latitude-order", choices=("ascending", "descending"), default="ascending")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", default="2020-01-01", help="first time stamp (UTC)")


def run(args: argparse.Namespace) -> int:
    """CLI entry point; returns the process exit code."""
    ds = generate(
        args.out,
        trajectories=args.trajectories,
        days=args.days,
        nlat=args.nlat,
        nlon=args.nlon,
        galewsky_fraction=args.galewsky_fraction,
        spinup_hours=args.spinup_hours,
        latitude_order=args.latitude_order,
        seed=args.seed,
        start=args.start,
    )
    print(f"wrote {ds.sizes['time']} times x {len(ds.data_vars)} variables on {args.nlat}x{args.nlon} to {args.out}")
    return 0


def generate(
    out: str,
    *,
    trajectories: int = 12,
    days: float = 20.0,
    nlat: int = 32,
    nlon: int = 64,
    galewsky_fraction: float = 0.25,
    spinup_hours: float = 48.0,
    latitude_order: str = "ascending",
    seed: int = 0,
    start: str = "2020-01-01",
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Integrate ``trajectories`` flows and write them to the Zarr store ``out``; returns the store, opened lazily."""
    _check_sizes(trajectories, days, nlat, nlon)
    solver = _Solver(nlat, nlon)
    rng = np.random.default_rng(seed)
    steps = int(round(days * 24 / _STEP_HOURS))
    t0 = pd.Timestamp(start)
    from tqdm import tqdm

    for k in tqdm(range(trajectories), desc=f"integrate {out}", unit="trajectory", disable=None):  # off without a tty
        galewsky = rng.random() < galewsky_fraction
        fields = solver.trajectory(rng, galewsky, steps, spinup_hours)
        # one missing 6-hour stamp (or more) between trajectories marks the discontinuity
        first = t0 + pd.Timedelta(hours=k * (steps + 4) * _STEP_HOURS)
        ds = _to_dataset(fields, solver, first, latitude_order)
        _write(ds, out, append=k > 0, storage_options=storage_options)
    return xr.open_zarr(out, storage_options=storage_options)


def _check_sizes(trajectories: int, days: float, nlat: int, nlon: int) -> None:
    if trajectories < 1 or days * 24 < _STEP_HOURS:
        raise ValueError(f"shallow-water: need >= 1 trajectory and >= 0.25 days, got {trajectories}, {days}")
    if nlat < 4 or nlon < 8 or nlon % 2:
        raise ValueError(f"shallow-water: grid {nlat}x{nlon} is too small or has an odd longitude count")


class _Solver:
    """ShallowWaterSolver on a grid with poles plus transforms that evaluate on the pole-free output grid."""

    def __init__(self, nlat: int, nlon: int):
        import torch_harmonics as th
        from torch_harmonics.examples import ShallowWaterSolver

        # T(nlat*2/3)-ish truncation on the solver grid keeps the explicit scheme stable at a 10-minute step
        lmax = max(4, (2 * (nlat + 1)) // 3)
        self.dt = 600.0 * 32 / nlat
        self.sw = ShallowWaterSolver(nlat + 1, nlon, self.dt, lmax=lmax, mmax=lmax, grid="equiangular")
        # the solver grid's odd latitudes on a twice-finer equiangular grid are the cell centres without poles
        fine = (2 * nlat + 1, 2 * nlon)
        self.isht = th.InverseRealSHT(*fine, lmax=lmax, mmax=lmax, grid="equiangular", csphase=False).double()
        self.ivsht = th.InverseRealVectorSHT(*fine, lmax=lmax, mmax=lmax, grid="equiangular", csphase=False).double()
        self.lat = 90.0 - (np.arange(nlat) + 0.5) * 180.0 / nlat
        self.lon = np.arange(nlon) * 360.0 / nlon

    def trajectory(self, rng: np.random.Generator, galewsky: bool, steps: int, spinup_hours: float) -> dict:
        torch.manual_seed(int(rng.integers(2**31)))
        uspec = _galewsky(self.sw, rng) if galewsky else _random_flow(self.sw, rng)
        per_step = int(round(_STEP_HOURS * 3600 / self.dt))
        with torch.no_grad():
            uspec = self.sw.timestep(uspec, int(round(spinup_hours * 3600 / self.dt)))
            frames = []
            for _ in range(steps):
                frames.append(self._grid_fields(uspec))
                uspec = self.sw.timestep(uspec, per_step)
        return {name: np.stack([f[name] for f in frames]) for name in frames[0]}

    def _grid_fields(self, uspec: torch.Tensor) -> dict[str, np.ndarray]:
        sub = (slice(1, None, 2), slice(None, None, 2))
        phi = self.isht(uspec[0])[sub].numpy()
        vrt = self.isht(uspec[1])[sub].numpy()
        uv = self.ivsht(self.sw.invlap * uspec[1:] / self.sw.radius)[(slice(None), *sub)].numpy()
        havg = float(self.sw.havg)
        return {
            "geopotential": phi,
            "u_component_of_wind": uv[0],
            "v_component_of_wind": uv[1],
            "vorticity": vrt,
            # hypsometric layer-mean temperature anomaly from the thickness anomaly, on a 288 K base
            "2m_temperature": 288.0 + (phi / _G - havg) * _G / (_RD * math.log(2.0)) / 10.0,
            "10m_wind_speed": np.hypot(uv[0], uv[1]) * 0.3,
        }


def _balanced(sw, ugrid: torch.Tensor, bump: torch.Tensor) -> torch.Tensor:
    """Spectral state (phi, vorticity, divergence) with phi in nonlinear balance with the wind ``ugrid``."""
    vrtdivspec = sw.vrtdivspec(ugrid)
    vrtdivgrid = sw.spec2grid(vrtdivspec)
    tmpspec = sw.vrtdivspec(ugrid * (vrtdivgrid + sw.coriolis))
    kinetic = sw.grid2spec(0.5 * torch.sum(ugrid**2, dim=0))
    phispec = sw.invlap * tmpspec[0] - kinetic + sw.grid2spec(sw.gravity * (sw.havg + bump))
    uspec = torch.zeros(3, sw.lmax, sw.mmax, dtype=vrtdivspec.dtype)
    uspec[0], uspec[1:] = phispec, vrtdivspec
    return torch.tril(uspec)


def _galewsky(sw, rng: np.random.Generator) -> torch.Tensor:
    """A Galewsky (2004) jet with random strength, latitude, hemisphere and perturbation position."""
    lats, lons = torch.meshgrid(sw.lats, sw.lons, indexing="ij")
    hemi = 1.0 if rng.random() < 0.5 else -1.0
    phi0 = math.pi / 7 + rng.uniform(-0.12, 0.12)
    phi1 = math.pi / 2 - phi0
    umax = rng.uniform(60.0, 90.0)
    en = math.exp(-4.0 / (phi1 - phi0) ** 2)
    lat_h = hemi * lats
    inside = (lat_h > phi0) & (lat_h < phi1)
    u = torch.where(inside, (umax / en) * torch.exp(1.0 / ((lat_h - phi0) * (lat_h - phi1)).clamp(max=-1e-9)), 0.0)
    lon0, lat_b = rng.uniform(0, 2 * math.pi), (phi0 + phi1) / 2
    dlon = torch.remainder(lons - lon0 + math.pi, 2 * math.pi) - math.pi
    shape = torch.exp(-(dlon * 3.0) ** 2) * torch.exp(-((lat_b - lat_h) ** 2) * 15.0)
    bump = rng.uniform(60, 180) * torch.cos(lats) * shape
    return _balanced(sw, torch.stack((u, torch.zeros_like(u))), bump)


def _random_flow(sw, rng: np.random.Generator) -> torch.Tensor:
    """A random balanced flow: a westerly background plus eddies with a red spectrum peaking near l = 6."""
    lats, _ = torch.meshgrid(sw.lats, sw.lons, indexing="ij")
    ell = torch.arange(sw.lmax, dtype=torch.float64)[:, None].expand(sw.lmax, sw.mmax)
    envelope = (ell / 6.0) * torch.exp(-ell / 6.0) * (ell > 0)
    coef = torch.from_numpy(rng.standard_normal((2, sw.lmax, sw.mmax))).to(torch.float64)
    vrt_spec = torch.tril(torch.complex(coef[0], coef[1]) * envelope)
    vrt = sw.spec2grid(vrt_spec)
    eddy_uv = sw.getuv(torch.stack((sw.grid2spec(vrt), torch.zeros_like(vrt_spec))))
    eddy_uv = eddy_uv * (rng.uniform(12.0, 25.0) / eddy_uv.square().sum(0).mean().sqrt())
    background = rng.uniform(5.0, 20.0) * torch.cos(lats) * torch.cos(lats)
    ugrid = eddy_uv + torch.stack((background, torch.zeros_like(background)))
    return _balanced(sw, ugrid, torch.zeros_like(lats))


_ATTRS = {
    "geopotential": ("m**2 s**-2", "geopotential", "Geopotential"),
    "u_component_of_wind": ("m s**-1", "eastward_wind", "U component of wind"),
    "v_component_of_wind": ("m s**-1", "northward_wind", "V component of wind"),
    "vorticity": ("s**-1", "atmosphere_relative_vorticity", "Vorticity (relative)"),
    "2m_temperature": ("K", "air_temperature", "2 metre temperature (hypsometric, from layer thickness)"),
    "10m_wind_speed": ("m s**-1", "wind_speed", "10 metre wind speed (scaled layer wind speed)"),
}


def _to_dataset(fields: dict, solver: _Solver, first: pd.Timestamp, latitude_order: str) -> xr.Dataset:
    n = fields["geopotential"].shape[0]
    times = pd.date_range(first, periods=n, freq=f"{_STEP_HOURS}h")
    flip = latitude_order == "ascending"
    lat = solver.lat[::-1] if flip else solver.lat
    data = {}
    for name, values in fields.items():
        values = values[:, ::-1] if flip else values
        units, standard, long = _ATTRS[name]
        attrs = {"units": units, "standard_name": standard, "long_name": long}
        if name.startswith(("2m_", "10m_")):
            data[name] = (("time", "latitude", "longitude"), values.astype(np.float32), attrs)
        else:
            data[name] = (("time", "level", "latitude", "longitude"), values[:, None].astype(np.float32), attrs)
    coords = {
        "time": ("time", times, {"long_name": "time", "standard_name": "time"}),
        "level": ("level", np.array([_LEVEL_HPA], dtype=np.int64),
                  {"units": "millibars", "long_name": "pressure_level"}),
        "latitude": ("latitude", lat.astype(np.float32),
                     {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"}),
        "longitude": ("longitude", solver.lon.astype(np.float32),
                      {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}),
    }
    attrs = {"Conventions": "CF-1.8", "title": "sciscale shallow-water reanalysis-like fields",
             "source": "torch-harmonics ShallowWaterSolver (spectral, rotating sphere), sampled 6-hourly"}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _write(ds: xr.Dataset, out: str, *, append: bool, storage_options: dict | None) -> None:
    encoding = None if append else {v: {"chunks": (8,) + ds[v].shape[1:]} for v in ds.data_vars}
    if not append:
        encoding["time"] = {"units": "hours since 1900-01-01", "dtype": "int64"}
    ds.to_zarr(
        out, mode="a" if append else "w", append_dim="time" if append else None, encoding=encoding,
        storage_options=storage_options, zarr_format=2, consolidated=True,
    )
