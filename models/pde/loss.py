"""Poseidon's loss and metrics: relative L1 per channel group.

The training loss is computed on normalised fields (what the model sees); the metrics are computed on
physical fields (de-normalised with the dataset statistics carried in the batch) and reported in percent.
"""

from __future__ import annotations

import torch

from models.pde.config import PdeModelSpec

FLOOR = 1e-2


def relative_l1(pred: torch.Tensor, target: torch.Tensor, groups: list[int],
                scale: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example mean over channel groups of ||pred - target||_1 / ||target||_1; [b, C, H, W] -> [b].

    The denominator is floored at FLOOR x (number of values) x (the group's channel scale; ``scale`` [b, C],
    default 1 = normalised units): a target that is identically zero (e.g. u_t = 0 at t = 0) would otherwise
    give errors of 1e10 %. Targets with mean |value| above 1% of their scale are unaffected.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if sum(groups) != pred.shape[1]:
        raise ValueError(f"channel groups {groups} do not sum to the {pred.shape[1]} predicted channels; "
                         "fix model.channel_groups")
    scale = torch.ones(pred.shape[:2], dtype=pred.dtype, device=pred.device) if scale is None else scale
    errors = []
    for err, ref, sc in zip(torch.split((pred - target).abs(), groups, 1), torch.split(target.abs(), groups, 1),
                            torch.split(scale.to(pred.dtype), groups, 1)):
        floor = FLOOR * ref[0].numel() * sc.mean(1)
        errors.append(err.flatten(1).sum(1) / torch.maximum(ref.flatten(1).sum(1), floor))
    return torch.stack(errors, 1).mean(1)


def denormalise(field: torch.Tensor, batch: dict, channels: int | None = None) -> torch.Tensor:
    """Physical values of a normalised [b, C, H, W] field, using the first C channels' statistics."""
    c = field.shape[1] if channels is None else channels
    mean = batch["mean"][:, :c, None, None].to(field.dtype)
    std = batch["std"][:, :c, None, None].to(field.dtype)
    return field * std + mean


def loss(outputs: torch.Tensor, batch: dict, spec: PdeModelSpec) -> torch.Tensor:
    """Scalar training loss: batch mean of the grouped relative L1 on normalised fields."""
    return relative_l1(outputs.float(), batch["y"].float(), spec.groups).mean()


def metrics(outputs: torch.Tensor, batch: dict, spec: PdeModelSpec) -> dict[str, torch.Tensor]:
    """Per-example relative L1 (%) of the model and, when input and output channels agree, of the
    persistence baseline (predict the input unchanged)."""
    target = denormalise(batch["y"].float(), batch)
    std = batch["std"][:, : target.shape[1]].float()
    out = {"rel_l1": 100 * relative_l1(denormalise(outputs.detach().float(), batch), target, spec.groups, std),
           "lead_time": batch["lead_time"].float().reshape(-1)}
    if batch["x"].shape[1] >= target.shape[1]:  # outputs are the first input channels
        persisted = denormalise(batch["x"][:, : target.shape[1]].float(), batch)
        out["persistence_rel_l1"] = 100 * relative_l1(persisted, target, spec.groups, std)
    return out


MEDIAN_METRICS = ("rel_l1", "persistence_rel_l1")


@torch.no_grad()
def lead_time_errors(model, batch: dict, spec: PdeModelSpec) -> dict[str, list[float]]:
    """Mean relative L1 (%) against lead time over a batch that carries whole trajectories
    (``traj`` [b, K, C, H, W], ``traj_lead`` [b, K]): direct prediction from the first snapshot,
    autoregressive rollout with the first step's lead time, and persistence."""
    traj, leads = batch["traj"], batch["traj_lead"]
    x0, step = traj[:, 0], leads[:, 1] - leads[:, 0]
    out_c = spec.out_ch
    result = {"lead_time": leads[0].tolist(), "direct": [], "rollout": [], "persistence": []}
    # Extra input channels (coefficient fields) are constant in time and carried along in the rollout.
    state, can_roll = x0, out_c <= x0.shape[1]
    if not can_roll:  # outputs cannot be fed back as inputs, and there is no persistence baseline
        del result["rollout"], result["persistence"]
    std = batch["std"][:, :out_c].float()
    for k in range(traj.shape[1]):
        target = denormalise(traj[:, k, :out_c].float(), batch)
        direct = model({**batch, "x": x0, "lead_time": leads[:, k] - leads[:, 0]})
        if k > 0 and can_roll:
            state = torch.cat([model({**batch, "x": state, "lead_time": step}), x0[:, out_c:]], 1)
        for name, pred in (("direct", direct), ("rollout", state[:, :out_c]), ("persistence", x0[:, :out_c])):
            if name not in result:
                continue
            err = relative_l1(denormalise(pred.float(), batch), target, spec.groups, std)
            result[name].append(100 * float(err.mean()))
    return result
