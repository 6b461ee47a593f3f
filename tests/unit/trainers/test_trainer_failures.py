"""Which worker errors end a run at once, and the Ray Train failure policy that acts on it."""

from __future__ import annotations

import pickle

import pytest

from data.storage import explain
from trainers.failures import WorkerFailure, first_cause, is_deterministic, worker_failures
from trainers.resilience import RollBack


@pytest.mark.parametrize("exc, deterministic", [
    (ValueError("model.grid=(32, 64) does not fit the data"), True),
    (KeyError("inputs"), True),
    (FloatingPointError("non-finite loss at step 3 (train.nonfinite: fail)"), True),
    (explain(FileNotFoundError("k"), "s3://b/ds/manifest.json"), True),  # a missing manifest stays missing
    (explain(ConnectionRefusedError("refused"), "s3://b/ds/shard"), False),  # the store may come back
    (ConnectionResetError("reset by peer"), False),
    (TimeoutError("read timed out"), False),
    (RuntimeError("[gloo] Connection closed by peer"), False),  # a dying peer tears the collective down
    (RollBack("non-finite loss at step 5: rolling back"), False),
])
def test_errors_a_restart_cannot_cure_are_deterministic(exc, deterministic):
    assert is_deterministic(exc) is deterministic
    failure = pickle.loads(pickle.dumps(WorkerFailure.of(exc, rank=1, step=7, log="/runs/r/logs/worker-rank1.log")))
    assert (failure.type_name, failure.rank, failure.step, failure.deterministic) == (
        type(exc).__name__, 1, 7, deterministic)
    assert str(failure).startswith(f"{type(exc).__name__} on rank 1 at step 7: ")


def _group_error(*failures: WorkerFailure):
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    return WorkerGroupError("workers failed", {f.rank: UserExceptionWithTraceback(f, "Traceback ...")
                                               for f in failures})


def test_policy_raises_deterministic_errors_at_once_and_retries_the_rest():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision

    from trainers.failure_policy import SciscaleFailurePolicy

    bad_data = WorkerFailure.of(ValueError("corrupt shard"), rank=1, step=3)
    dead_peer = WorkerFailure.of(RuntimeError("gloo: connection reset"), rank=0, step=3)
    policy = SciscaleFailurePolicy(FailureConfig(max_failures=3))
    assert policy.make_decision(_group_error(dead_peer, bad_data)) == FailureDecision.RAISE
    assert policy.make_decision(_group_error(dead_peer)) == FailureDecision.RETRY
    assert first_cause(_group_error(dead_peer, bad_data)) is not None
    assert first_cause(_group_error(dead_peer, bad_data)).message == "corrupt shard"  # the cause, not the echo
    assert [f.rank for f in worker_failures(_group_error(bad_data, dead_peer))] == [0, 1]


def test_ray_train_still_builds_its_policy_where_ray_job_swaps_it():
    """trainers/ray_job.py replaces data_parallel_trainer.create_failure_policy during fit (Ray Train v2 has
    no public setting): if a Ray upgrade moves it, this fails instead of the policy silently not applying."""
    import inspect

    from ray.train.v2.api import data_parallel_trainer

    assert callable(data_parallel_trainer.create_failure_policy)
    assert "create_failure_policy(" in inspect.getsource(data_parallel_trainer.DataParallelTrainer.fit)
