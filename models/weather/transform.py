"""Stored forecast windows -> normalised training examples, collation and synthetic batches."""

from __future__ import annotations

import numpy as np
import torch

from data.converters.weatherbench2 import decode_climatology
from models.weather.config import WeatherModelSpec
from models.family import raise_mismatches
from models.weather.metrics import lat_weights
from models.weather.preflight import check


class WeatherTransform:
    """One stored window (``inputs``, ``targets`` and meta ``time``) -> normalised example; picklable.

    Example keys: ``inputs`` [T, V_in, H, W]; ``targets`` [K, V_out, H, W] at leads lead_hours * 1..K;
    ``clim`` [K, V_out, H, W] (climatology at each target's valid time); ``lead_hours``; ``std`` [V_out]
    (to report errors in physical units); ``lat_weights`` [H]; ``time`` (init, hours since 1970).

    ``leads`` (hours, each one the dataset holds) replaces ``spec.rollout_leads`` as the target leads: the
    eval suite asks for every stored multiple of ``lead_hours``, which may skip some (6, 12, 24, 48 h).
    """

    def __init__(self, spec: WeatherModelSpec, manifest, leads: list[int] | None = None):
        raise_mismatches(check(spec, "train", manifest))  # the driver's preflight ran the same check
        attrs = manifest.attrs
        stored = list(attrs["variables"])
        self.in_idx = [stored.index(n) for n in spec.model_inputs]
        self.out_idx = [stored.index(n) for n in spec.model_outputs]
        leads = list(spec.rollout_leads if leads is None else leads)
        self.lead_idx = [_stored_lead(attrs, h) for h in leads]
        self.history, self.lead = spec.history, float(spec.lead_hours)
        self.mean = np.asarray(attrs["mean"], dtype=np.float32)[:, None, None]
        self.std = np.asarray(attrs["std"], dtype=np.float32)[:, None, None]
        hours, clim = decode_climatology(attrs)
        self.clim_hours, self.clim = hours, (clim - self.mean) / self.std
        self.valid_offsets = np.asarray(leads, dtype=np.int64)
        self.weights = lat_weights(np.asarray(attrs["lat"]))

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        inputs = (sample["inputs"][-self.history:] - self.mean) / self.std
        targets = (sample["targets"][self.lead_idx] - self.mean) / self.std
        init = int(np.asarray(sample["time"]).reshape(-1)[0])
        slots = np.searchsorted(self.clim_hours, (init + self.valid_offsets) % 24).clip(0, len(self.clim_hours) - 1)
        return {
            "inputs": inputs[:, self.in_idx].astype(np.float32),
            "targets": targets[:, self.out_idx].astype(np.float32),
            "clim": self.clim[slots][:, self.out_idx].astype(np.float32),
            "lead_hours": np.float32(self.lead),
            "std": self.std[self.out_idx, 0, 0],
            "lat_weights": self.weights,
            "time": np.int64(init),
        }


def _stored_lead(attrs: dict, hours: int) -> int:
    stored = [int(h) for h in attrs["lead_hours"]]
    if int(hours) not in stored:
        raise ValueError(f"lead {hours} h is not in the dataset, which holds leads {stored} h; ask for those")
    return stored.index(int(hours))


def make_transform(spec: WeatherModelSpec, manifest) -> WeatherTransform:
    """The family's ``make_transform``."""
    return WeatherTransform(spec, manifest)


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack examples key by key."""
    return {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in examples[0]}


def example_batch(spec: WeatherModelSpec, batch_size: int) -> dict[str, torch.Tensor]:
    """A synthetic batch with the shapes of a real one (standard-normal fields, uniform weights)."""
    h, w = spec.grid
    k, v_in, v_out = spec.rollout_steps, len(spec.model_inputs), len(spec.model_outputs)
    g = torch.Generator().manual_seed(0)
    return {
        "inputs": torch.randn(batch_size, spec.history, v_in, h, w, generator=g),
        "targets": torch.randn(batch_size, k, v_out, h, w, generator=g),
        "clim": torch.zeros(batch_size, k, v_out, h, w),
        "lead_hours": torch.full((batch_size,), float(spec.lead_hours)),
        "std": torch.ones(batch_size, v_out),
        "lat_weights": torch.ones(batch_size, h),
        "time": torch.zeros(batch_size, dtype=torch.int64),
    }
