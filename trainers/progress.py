"""Training progress from rank 0 to the driver's console, through a small named Ray actor.

The driver creates the board on its own node (orchestrator/console.py); rank 0 posts one event per logged step, evaluation
and worker-group start, fire-and-forget, so a step never waits for the console. Without a board (tests,
benchmarks, a driver that is gone) posting does nothing.
"""

from __future__ import annotations


class ProgressBoard:
    """Holds the events rank 0 posted until the driver takes them (a Ray actor, num_cpus=0)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def post(self, event: dict) -> None:
        self.events.append(event)

    def take(self) -> list[dict]:
        events, self.events = self.events, []
        return events


def board_name(run_id: str) -> str:
    return f"sciscale-progress-{run_id}"


def create_board(run_id: str):
    """The driver's board for ``run_id`` (replaces one an earlier driver of the same run left behind)."""
    import ray

    name = board_name(run_id)
    try:
        ray.kill(ray.get_actor(name))
    except ValueError:
        pass
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's node: an actor Ray puts on a worker node dies with it (an elastic shrink, a drained node)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, max_restarts=0)(ProgressBoard).options(name=name, scheduling_strategy=here).remote()


class ProgressSender:
    """Rank 0's side: ``post(kind, **fields)``; a no-op when the driver made no board."""

    def __init__(self, run_id: str | None):
        self.board = None
        if run_id:
            try:
                import ray

                self.board = ray.get_actor(board_name(run_id))
            except (ValueError, ImportError, RuntimeError):  # no board, or outside Ray
                self.board = None

    def __call__(self, kind: str, **fields) -> None:
        if self.board is not None:
            try:
                self.board.post.remote({"kind": kind, **fields})
            except Exception:  # noqa: BLE001 - the console is never worth a failed step
                self.board = None
