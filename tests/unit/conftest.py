"""Shared unit-test helpers: a few optimiser steps of a model family on a converted dataset."""

from __future__ import annotations

import pytest


def few_training_steps(family_name: str, spec, url: str, *, steps: int = 3, batch: int = 4,
                       lr: float = 1e-3) -> list[float]:
    """Train ``steps`` AdamW steps of the family's model on the dataset at ``url`` through the real path:
    ``load_family``, ``prepare_model``, ``build_loader`` with the family's transform and collate, the family
    loss. Asserts that every loss is finite and that every step has finite, non-zero gradients; returns the
    losses."""
    import torch

    from data.format import read_manifest
    from data.loader import build_loader
    from data.spec import DataSpec
    from models import load_family

    family = load_family(family_name)
    manifest = read_manifest(url)
    torch.manual_seed(0)
    model = family.build_model(spec)
    if family.prepare_model is not None:
        family.prepare_model(model, spec, manifest)
    data = DataSpec(train=[{"url": url}], canonical_streams=1, shuffle_window=1, prefetch=1, num_workers=0)
    loader = build_loader(data, data.train, split="train", rank=0, world_size=1, global_batch=batch,
                          micro_batch=batch, seed=0, transform=family.make_transform(spec, manifest),
                          collate=family.collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # two intra-op threads on a shared 2-core machine run up to 10x slower
    try:
        for _, micro_batches in zip(range(steps), loader):
            losses.append(_step(family, model, optimizer, micro_batches[0], spec))
    finally:
        torch.set_num_threads(threads)
        loader.close()
    assert len(losses) == steps
    return losses


def _step(family, model, optimizer, batch: dict, spec) -> float:
    import torch

    optimizer.zero_grad()
    loss = family.loss(model(batch), batch, spec)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss), f"loss {float(loss)} is not finite"
    assert grads and all(torch.isfinite(g).all() for g in grads), "non-finite gradients"
    assert any(g.abs().sum() > 0 for g in grads), "all gradients are zero"
    optimizer.step()
    return float(loss.detach())


@pytest.fixture
def train_steps():
    """:func:`few_training_steps`, as a fixture so that tests in every subfolder can use it."""
    return few_training_steps


def mup_coordinates(family_name: str, spec, watched: tuple[str, ...], *, steps: int = 3,
                    lr: float = 1e-2) -> dict[str, float]:
    """muP's coordinate check for one width: the output RMS of each ``watched`` layer after ``steps`` AdamW
    steps (the project's optimizer builder, so muP's learning-rate multipliers apply) on one synthetic batch,
    and the RMS change of the model's output (an interatomic potential's: its energy) over those steps."""
    import torch

    from models import load_family
    from orchestrator.spec import AdamWSpec
    from trainers.optimizers import build_optimizer

    family = load_family(family_name)
    torch.manual_seed(0)
    model = family.build_model(spec)
    opt = build_optimizer(model, AdamWSpec(lr=lr))
    torch.manual_seed(1)  # the same batch at every width
    batch = family.example_batch(spec, 4)
    rms: dict[str, float] = {}
    for name, module in model.named_modules():
        if name in watched:
            module.register_forward_hook(
                lambda m, i, o, n=name: rms.__setitem__(n, o.float().pow(2).mean().sqrt().item()))
    with torch.no_grad():
        start = model(batch)
    for _ in range(steps):
        loss = family.loss(model(batch), batch, spec)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = model(batch)
    if isinstance(end, dict):
        start, end = start["energy"], end["energy"]
    assert set(rms) == set(watched), f"layers {set(watched) - set(rms)} not found"
    return {**rms, "output change": (end - start).pow(2).mean().sqrt().item()}


def coordinate_tables(family_name: str, spec_of, widths: list[int], watched: tuple[str, ...],
                      lr: float = 1e-2) -> tuple[dict, dict]:
    """:func:`mup_coordinates` at each width, standard (``spec_of(width, False)``) and muP (``spec_of(width,
    True)``): two tables width -> coordinates, printed for the test log."""
    tables = tuple({w: mup_coordinates(family_name, spec_of(w, mup), watched, lr=lr) for w in widths}
                   for mup in (False, True))
    for table in tables:
        print({w: {k: round(v, 4) for k, v in c.items()} for w, c in table.items()})
    return tables


@pytest.fixture
def coordinates():
    """:func:`coordinate_tables`, as a fixture."""
    return coordinate_tables


def smooth_field(lat, lon, hours, offset: float) -> "np.ndarray":
    """[T, H, W] values that are a function of the coordinates alone (periodic in longitude), so a test can
    check any orientation of a converted grid against the coordinates it was given."""
    import numpy as np

    la, lo = np.deg2rad(np.asarray(lat, float))[None, :, None], np.deg2rad(np.asarray(lon, float))[None, None, :]
    t = np.asarray(hours, float)[:, None, None] / 24.0
    return (offset + 10 * np.sin(la) + 3 * np.cos(la) * np.cos(lo + t) + np.cos(2 * lo)).astype(np.float32)


def write_wb2_store(path: str, lat, lon, *, times: int = 8, lon_first: bool = False,
                    variables: tuple[str, ...] = ("geopotential", "temperature", "2m_temperature",
                                                  "mean_sea_level_pressure")) -> str:
    """A Zarr store in WeatherBench2 naming (dims time, level, latitude, longitude; ``lon_first`` puts
    longitude before latitude, as WeatherBench2's regridded stores do), written by ``xarray.to_zarr``."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    stamps = pd.date_range("2020-01-01", periods=times, freq="6h")
    hours = np.arange(times) * 6
    levels = np.array([500, 850])
    order = ("longitude", "latitude") if lon_first else ("latitude", "longitude")
    data = {}
    for k, name in enumerate(variables):
        field = smooth_field(lat, lon, hours, 100.0 * k)
        if name in ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"):
            stacked = np.stack([field + lev for lev in levels], axis=1)
            dims = ("time", "level", "latitude", "longitude")
            data[name] = xr.DataArray(stacked, dims=dims).transpose("time", "level", *order)
        else:
            data[name] = xr.DataArray(field, dims=("time", "latitude", "longitude")).transpose("time", *order)
    ds = xr.Dataset(data, coords={"time": stamps, "level": levels, "latitude": np.asarray(lat, float),
                                  "longitude": np.asarray(lon, float)})
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path


@pytest.fixture
def wb2_store():
    """:func:`write_wb2_store` as a fixture."""
    return write_wb2_store


@pytest.fixture
def wb2_field():
    """:func:`smooth_field` as a fixture: the values :func:`write_wb2_store` writes."""
    return smooth_field
