"""Latitude-weighted loss and WeatherBench2 scores (RMSE, ACC) for fields shaped [..., lat, lon].

Conventions follow WeatherBench2: latitude weights are grid-cell areas normalised to mean 1; RMSE is the
square root of the time-mean of the area-weighted MSE (so per-time values are *MSE*, averaged first); ACC is
the uncentred anomaly correlation against the stored climatology, computed per time and then averaged.
"""

from __future__ import annotations

import numpy as np
import torch


def lat_weights(lat_deg: np.ndarray) -> np.ndarray:
    """Cell-area weights for equally spaced latitudes (either order), normalised to mean 1.

    A cell spans half a grid step either side of its latitude, clipped at the poles, so its area is
    proportional to sin(upper) - sin(lower); a pole point gets the small polar cap.
    """
    lat = np.deg2rad(np.asarray(lat_deg, dtype=np.float64))
    if lat.ndim != 1 or lat.size < 2:
        raise ValueError(f"latitudes: expected a 1-D array of at least 2 values, got shape {lat.shape}")
    steps = np.diff(lat)
    if not np.allclose(steps, steps[0], rtol=1e-4, atol=1e-9):
        raise ValueError(
            f"latitudes: expected equal spacing, got steps from {np.rad2deg(steps.min()):.4f} to "
            f"{np.rad2deg(steps.max()):.4f} degrees; regrid to an equiangular grid first"
        )
    half = abs(steps[0]) / 2
    upper = np.clip(lat + half, -np.pi / 2, np.pi / 2)
    lower = np.clip(lat - half, -np.pi / 2, np.pi / 2)
    area = np.sin(upper) - np.sin(lower)
    return (area / area.mean()).astype(np.float32)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Area-weighted spatial MSE: [..., H, W] fields, weights [H] or broadcastable [..., H] -> [...]."""
    err = (pred - target).square()
    return (err * _lat_axis(weights, err)).mean(dim=(-2, -1))


def weighted_acc(
    pred: torch.Tensor, target: torch.Tensor, clim: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Uncentred anomaly correlation per field: [..., H, W] -> [...]; anomalies are taken against ``clim``."""
    w = _lat_axis(weights, pred)
    fa, oa = pred - clim, target - clim
    num = (w * fa * oa).sum(dim=(-2, -1))
    den = ((w * fa.square()).sum(dim=(-2, -1)) * (w * oa.square()).sum(dim=(-2, -1))).sqrt()
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def rmse_over_time(mse_per_time: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """WeatherBench2 RMSE: the square root of the mean over times of the per-time weighted MSE."""
    return mse_per_time.mean(dim=dim).sqrt()


def weighted_mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Training loss: area-weighted MSE over normalised fields, averaged over batch and variables."""
    return weighted_mse(pred, target, weights).mean()


def _lat_axis(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Weights [H] or [b, H] shaped to broadcast over [b, ..., H, W]."""
    w = weights.to(like.dtype)
    if w.ndim == 1:
        return w[:, None]
    # [b, H] -> [b, 1, ..., 1, H, 1] so that it broadcasts over the middle axes of ``like``
    return w.reshape(w.shape[0], *([1] * (like.ndim - 3)), w.shape[1], 1)
