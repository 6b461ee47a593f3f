"""Which worker errors a restart can cure, and the failure policy that acts on it (torch-free: the Train
controller and the driver import it).

A worker raises ``WorkerFailure`` for any error: the original type and message, the rank and the step, and
whether it is deterministic. Deterministic errors (a spec or data mismatch the preflight could not see, a
missing field, a corrupt manifest, a non-finite loss under ``train.nonfinite: fail``) end the run on the first
attempt; transient ones (a lost worker, a storage timeout, a collective torn down by a dying peer, a
rollback) keep Ray Train's ``max_failures`` budget.
"""

from __future__ import annotations

# Errors of the program or its input: running again raises them again.
DETERMINISTIC = (ValueError, TypeError, LookupError, AttributeError, NameError, NotImplementedError,
                 FloatingPointError, ImportError, AssertionError, ZeroDivisionError, SyntaxError)


def is_deterministic(exc: BaseException) -> bool:
    """A storage error that outlived its retries says ``transient`` (data/storage.py explain); everything
    else is judged by its type. OSError (connections, timeouts) and RuntimeError (torch collectives aborted
    by a dead peer, rollbacks) are transient."""
    transient = getattr(exc, "transient", None)
    if transient is not None:
        return not transient
    return isinstance(exc, DETERMINISTIC)


class WorkerFailure(Exception):
    """What a worker raised, in a form that pickles across Ray and names where it happened."""

    def __init__(self, type_name: str, message: str, rank: int, step: int, deterministic: bool, log: str = ""):
        super().__init__(type_name, message, rank, step, deterministic, log)
        self.type_name, self.message, self.rank, self.step = type_name, message, rank, step
        self.deterministic, self.log = deterministic, log

    @classmethod
    def of(cls, exc: BaseException, rank: int, step: int, log: str = "") -> "WorkerFailure":
        if isinstance(exc, WorkerFailure):
            return exc
        return cls(type(exc).__name__, str(exc), rank, step, is_deterministic(exc), log)

    def __str__(self) -> str:
        return f"{self.type_name} on rank {self.rank} at step {self.step}: {self.message}"

    def summary(self) -> dict:
        return {"type": self.type_name, "message": self.message[:4000], "rank": self.rank, "step": self.step,
                "deterministic": self.deterministic, "log": self.log}


def worker_failures(error: BaseException | None) -> list[WorkerFailure]:
    """The WorkerFailures inside a Ray Train error (WorkerGroupError wraps each rank's exception in
    UserExceptionWithTraceback), lowest rank first."""
    found = getattr(error, "worker_failures", None) or {}
    out = []
    for rank in sorted(found):
        exc = getattr(found[rank], "_base_exc", found[rank])
        if isinstance(exc, WorkerFailure):
            out.append(exc)
    return out


def first_cause(error: BaseException | None) -> WorkerFailure | None:
    """The failure to report: the first deterministic one, else the lowest rank's."""
    failures = worker_failures(error)
    return next((f for f in failures if f.deterministic), failures[0] if failures else None)
