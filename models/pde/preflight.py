"""Does a PDE spec fit a trajectory dataset? Torch-free: the driver runs it before anything starts."""

from __future__ import annotations

from models.family import Mismatch


def check(spec, split: str, manifest) -> list[Mismatch]:
    """Fields, channels, grid and time axis of ``manifest`` against the spec (``split`` is train or val)."""
    fields, attrs = manifest.fields, dict(manifest.attrs or {})
    missing = [k for k in ("u", "t") if k not in fields]
    if missing:
        return [Mismatch("model.family", "pde", f"fields {sorted(fields)} (no {', '.join(missing)})",
                         "train the family that fits this dataset, or write PDE trajectories with `sciscale data "
                         "generate` / `sciscale data convert poseidon|the-well|pdebench`")]
    t_len, channels, height, width = fields["u"].shape
    out = []
    if "channel_mean" not in attrs or "channel_std" not in attrs:
        out.append(Mismatch("data", "this dataset", "no channel_mean/channel_std attrs (normalisation statistics)",
                            "write the dataset with a sciscale PDE generator or converter, which compute them"))
    names = attrs.get("channel_names") or []
    if channels != spec.in_channels:
        out.append(Mismatch("model.in_channels", spec.in_channels, f"{channels} channels {names}",
                            f"set model.in_channels: {channels}"))
    if spec.arch == "scot" and (height, width) != (spec.resolution, spec.resolution):
        fix = (f"set model.resolution: {height}" if height == width else
               "scOT needs a square grid: resample the data, or use model.arch: fno")
        out.append(Mismatch("model.resolution", spec.resolution, f"a {height}x{width} grid", fix))
    last = t_len - 1 if spec.max_time_index is None else min(spec.max_time_index, t_len - 1)
    if len(range(0, last + 1, spec.time_stride)) < 2:
        out.append(Mismatch("model.time_stride", spec.time_stride,
                            f"{t_len} snapshots per trajectory (max_time_index {spec.max_time_index})",
                            "keep at least two snapshots: lower model.time_stride or raise model.max_time_index"))
    return out
