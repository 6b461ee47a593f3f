"""The step profile (``train.profile_steps``): where a training step's time goes, on every rank.

After a warm-up of ``WARMUP`` steps, the next N steps run under torch.profiler (CPU activities). Each part of the
step is a ``record_function`` range: the data wait, forward and loss, backward, optimizer step. The collectives
DeepSpeed issues (all-reduce, reduce-scatter, all-gather) are the profiler's own ``gloo:``/``nccl:`` events.
torch.profiler does the bookkeeping; what is ours is only which ranges to open and the one-line summary.
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.profiler import record_function

WARMUP = 10
PHASES = ("data wait", "forward and loss", "backward", "optimizer step")
_PREFIX = "sciscale/"
_BACKENDS = ("gloo:", "nccl:")


class StepProfile:
    """Opens the profiler WARMUP steps after ``start`` (this worker group's first step: a resumed or resized
    group warms up again) and closes it after ``steps`` steps or at the last step."""

    def __init__(self, steps: int, start: int, max_steps: int):
        self.first = start + WARMUP + 1
        self.last = min(start + WARMUP + steps, max_steps) if steps and start + WARMUP < max_steps else 0
        self._prof = None

    def phase(self, name: str):
        return record_function(_PREFIX + name) if self._prof is not None else contextlib.nullcontext()

    def begin(self, step: int) -> None:
        """Before training ``step`` (1-based)."""
        if self.last and step == self.first:
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._prof.__enter__()

    def end(self, step: int) -> dict[str, float] | None:
        """After ``step``: at the last profiled step, {phase: ms per step}, plus ms per step of each kind of collective."""
        if self._prof is None or step != self.last:
            return None
        self._prof.__exit__(None, None, None)
        events, self._prof = self._prof.events(), None
        return summarise(events, self.last - self.first + 1)


def summarise(events, steps: int) -> dict[str, float]:
    """ms per step of each phase range and of each kind of collective. A collective counts as the gloo (or
    NCCL) op itself, which runs on the process group's own thread beside the phases: its wall time includes
    the wait for the slowest rank to arrive, so load imbalance between ranks shows up there."""
    out = {phase: 0.0 for phase in PHASES}
    for event in events:
        name = event.name
        if name.startswith(_PREFIX) and name[len(_PREFIX):] in out:
            out[name[len(_PREFIX):]] += event.cpu_time_total / 1000 / steps
        elif name.startswith(_BACKENDS):
            key = name.split(":", 1)[1]
            out[key] = out.get(key, 0.0) + event.cpu_time_total / 1000 / steps
    return out


def line(profile: dict[str, float], first: int, last: int, rank: int) -> str:
    total = sum(profile[p] for p in PHASES)
    parts = [f"{p} {profile[p]:.1f} ms ({100 * profile[p] / max(total, 1e-9):.0f}%)" for p in PHASES]
    comms = [f"{k} {v:.1f} ms" for k, v in profile.items() if k not in PHASES]
    return (f"profile (rank {rank}, steps {first}-{last}): {total:.1f} ms per step = " + " + ".join(parts)
            + ("; collectives, beside the phases, waits for other ranks included: " + ", ".join(comms)
               if comms else "; no collectives"))


def metric_name(key: str) -> str:
    return "profile/" + key.replace(" ", "_") + "_ms"
