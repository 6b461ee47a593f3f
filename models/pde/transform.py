"""From stored trajectories to training examples: all-to-all time pairs, normalisation, batching.

Each visit of a trajectory draws one pair (i <= j) of kept snapshots uniformly from all K (K + 1) / 2
pairs, so over many epochs every pair of the semigroup is a sample (Poseidon's all-to-all training).
Held-out examples (``split="val"``, or a dataset whose attrs say ``split: val``) are deterministic: the first
kept snapshot to the last, i.e. the largest lead time, plus the whole kept trajectory for lead-time curves.
"""

from __future__ import annotations

import numpy as np
import torch

from models.family import raise_mismatches
from models.pde.config import PdeModelSpec
from models.pde.preflight import check


class PairTransform:
    """Picklable transform ``(sample, rng) -> {"x", "y", "lead_time", "mean", "std"[, "traj", "traj_lead"]}``."""

    def __init__(self, spec: PdeModelSpec, attrs: dict, split: str):
        self.mean = np.asarray(attrs["channel_mean"], dtype=np.float32)
        self.std = np.asarray(attrs["channel_std"], dtype=np.float32)
        self.out_ch, self.stride, self.max_index = spec.out_ch, spec.time_stride, spec.max_time_index
        self.lead_scale = spec.lead_time_scale
        self.eval = split == "val" or attrs.get("split") == "val"

    def normalise(self, field: np.ndarray) -> np.ndarray:
        return ((field - self.mean[:, None, None]) / self.std[:, None, None]).astype(np.float32)

    def kept(self, n_times: int) -> np.ndarray:
        last = n_times - 1 if self.max_index is None else min(self.max_index, n_times - 1)
        idx = np.arange(0, last + 1, self.stride)
        if len(idx) < 2:
            raise ValueError(f"only {len(idx)} snapshot kept of {n_times} (time_stride {self.stride}, "
                             f"max_time_index {self.max_index}); keep at least two")
        return idx

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        u, t = sample["u"], np.asarray(sample["t"], dtype=np.float64)
        idx = self.kept(len(t))
        scale = self.lead_scale or float(t[idx[-1]] - t[idx[0]]) or 1.0
        if self.eval:
            i, j = idx[0], idx[-1]
        else:
            first, second = np.triu_indices(len(idx))
            k = int(rng.integers(len(first)))
            i, j = idx[first[k]], idx[second[k]]
        norm = self.normalise
        example = {"x": norm(u[i]), "y": norm(u[j])[: self.out_ch],
                   "lead_time": np.float32((t[j] - t[i]) / scale), "mean": self.mean, "std": self.std}
        if self.eval:
            example["traj"] = np.stack([norm(u[k]) for k in idx])
            example["traj_lead"] = ((t[idx] - t[idx[0]]) / scale).astype(np.float32)
        return example


def make_transform(spec: PdeModelSpec, manifest, split: str = "train") -> PairTransform:
    """The family's transform for one dataset; held-out behaviour from ``split`` or the dataset's attrs."""
    raise_mismatches(check(spec, split, manifest))  # the driver's preflight ran the same check
    return PairTransform(spec, dict(manifest.attrs or {}), split)


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    keys = examples[0].keys()
    return {k: torch.from_numpy(np.stack([np.asarray(e[k]) for e in examples])) for k in keys}


def example_batch(spec: PdeModelSpec, batch_size: int) -> dict[str, torch.Tensor]:
    r, c = spec.resolution, spec.in_channels
    return {"x": torch.randn(batch_size, c, r, r), "y": torch.randn(batch_size, spec.out_ch, r, r),
            "lead_time": torch.rand(batch_size), "mean": torch.zeros(batch_size, c),
            "std": torch.ones(batch_size, c)}
