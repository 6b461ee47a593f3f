"""Ray Train's failure policy with one change: a deterministic worker error (trainers/failures.py) is raised at
once instead of restarting the worker group. Ray Train v2 (2.60) has no public setting for the policy, so
trainers/ray_job.py hands this one to the trainer; a unit test checks that the hook it uses still exists."""

from __future__ import annotations

from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

from trainers.failures import worker_failures


class SciscaleFailurePolicy(DefaultFailurePolicy):
    def make_decision(self, training_failed_error) -> FailureDecision:
        if any(f.deterministic for f in worker_failures(training_failed_error)):
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)
