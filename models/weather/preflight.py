"""Does a weather spec fit a forecast-window dataset? Torch-free: the driver runs it before anything starts."""

from __future__ import annotations

from models.family import Mismatch

_CONVERT = "sciscale data convert weatherbench2"


def check(spec, split: str, manifest) -> list[Mismatch]:
    """Variables, grid, history and leads of ``manifest`` against the spec (``split`` is train or val)."""
    fields, attrs = manifest.fields, dict(manifest.attrs or {})
    missing = [k for k in ("inputs", "targets", "time") if k not in fields]
    if missing:
        return [Mismatch("model.family", "weather", f"fields {sorted(fields)} (no {', '.join(missing)})",
                         f"train the family that fits this dataset, or write forecast windows with `{_CONVERT}`")]
    out = _variables(spec, list(attrs.get("variables", [])))
    grid = (len(attrs.get("lat", [])), len(attrs.get("lon", [])))
    if grid != tuple(spec.grid):
        out.append(Mismatch("model.grid", list(spec.grid), f"a {grid[0]}x{grid[1]} (lat x lon) grid",
                            f"set model.grid: [{grid[0]}, {grid[1]}]"))
    stored_history = int(attrs.get("history", 1))
    if spec.history > stored_history:
        out.append(Mismatch("model.history", spec.history, f"{stored_history} input step(s) per window",
                            f"lower model.history to {stored_history}, or convert with `{_CONVERT} --history "
                            f"{spec.history}`"))
    stored = [int(h) for h in attrs.get("lead_hours", [])]
    needed = [h for h in spec.rollout_leads if h not in stored]
    if needed:
        usable = max((k for k in range(1, spec.rollout_steps + 1) if all(spec.lead_hours * j in stored
                                                                        for j in range(1, k + 1))), default=0)
        fix = (f"lower model.rollout_steps to {usable}" if usable else
               f"set model.lead_hours to one of {stored}") + f", or convert with --leads including {needed}"
        out.append(Mismatch("model.lead_hours", f"{spec.lead_hours} h x rollout_steps {spec.rollout_steps}",
                            f"leads {stored} h (missing {needed} h)", fix))
    lat = [float(x) for x in attrs.get("lat", [])]
    poles = bool(lat) and max(abs(lat[0]), abs(lat[-1])) >= 90.0 - 1e-6
    if lat and poles != spec.has_poles:
        want = "equiangular" if poles else "legendre-gauss"
        out.append(Mismatch("model.lat_grid", spec.lat_grid, "latitudes from {:g} to {:g} ({})".format(
            lat[0], lat[-1], "the poles included" if poles else "no pole row"), f"set model.lat_grid: {want}"))
    if "climatology" not in attrs:
        out.append(Mismatch("data", "this dataset", "no climatology attrs (needed for ACC)",
                            f"convert the store with `{_CONVERT}`, which computes it over the train range"))
    return out


def _variables(spec, stored: list[str]) -> list[Mismatch]:
    out = []
    for field, names in (("model.in_variables", spec.model_inputs), ("model.out_variables", spec.model_outputs)):
        absent = [n for n in names if n not in stored]
        if absent:
            where = "model.variables" if field == "model.in_variables" and spec.in_variables is None else field
            out.append(Mismatch(where, absent, f"variables {stored}",
                                f"drop {absent} from {where}, or convert them (`{_CONVERT} --variables ...`)"))
            break  # outputs are a subset of inputs: one message says it
    return out
