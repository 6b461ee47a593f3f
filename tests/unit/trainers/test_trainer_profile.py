"""train.profile_steps: the step profile's window and its summary of phases and collectives."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from trainers import profile


def test_the_window_starts_after_the_warm_up_of_this_group_and_stops_at_the_last_step():
    assert (profile.StepProfile(5, 0, 100).first, profile.StepProfile(5, 0, 100).last) == (11, 15)
    resumed = profile.StepProfile(5, 40, 100)  # a resumed group warms up again
    assert (resumed.first, resumed.last) == (51, 55)
    assert profile.StepProfile(5, 0, 13).last == 13
    assert profile.StepProfile(5, 0, 10).last == 0 and profile.StepProfile(0, 0, 100).last == 0


def test_each_phase_and_each_collective_is_timed_per_step(process_group):
    prof = profile.StepProfile(2, 0, 20)
    results = []
    for step in range(1, 21):
        prof.begin(step)
        with prof.phase("data wait"):
            time.sleep(0.004)
        with prof.phase("backward"):
            time.sleep(0.002)
            dist.all_reduce(torch.ones(1000))
        if (out := prof.end(step)) is not None:
            results.append((step, out))
    assert [step for step, _ in results] == [12]
    out = results[0][1]
    assert 3.5 < out["data wait"] < 40 and 1.5 < out["backward"] < 40
    assert out["forward and loss"] == 0.0 and out["optimizer step"] == 0.0
    assert out["all_reduce"] > 0
    text = profile.line(out, 11, 12, 0)
    assert text.startswith("profile (rank 0, steps 11-12): ") and "all_reduce" in text
    assert profile.metric_name("data wait") == "profile/data_wait_ms"
