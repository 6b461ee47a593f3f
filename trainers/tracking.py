"""Rank-0 MLflow logging that never blocks the step: metrics are queued and uploaded in batches by a thread.

A synchronous ``log_metric`` to a local server costs about 58 ms (shared/ANCHORS.md); here a step only
appends to a list under a lock.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

SPOOL_DIR = Path(os.environ.get("SCISCALE_SPOOL_DIR", Path.home() / ".cache" / "sciscale" / "spool"))


class MetricLogger:
    """Queue metrics from the training loop; a daemon thread uploads them with ``log_batch``."""

    def __init__(self, tracking_uri: str, run_id: str, flush_every_s: float = 5.0):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list = []
        self._inflight: list = []  # taken by the upload thread, not yet acknowledged by the server
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.failures = 0
        self.resumed_step = -1  # steps <= this are never trained again (their unsent points come with the checkpoint)
        self.logged_through: dict[str, int] = {}  # key -> last step an earlier attempt logged (replayed steps)
        self.latest: dict[str, object] = {}  # key -> its last point (linked to a LoggedModel of that step)
        self.spool = SPOOL_DIR / f"{run_id}.jsonl"
        self._replay_spool()
        self._thread = threading.Thread(target=self._loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step <= self.resumed_step:
            return
        now = int(time.time() * 1000)
        # policy: the first recorded value of a step stays; replayed steps are not logged twice
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self.logged_through.get(k, -1)]
        with self._lock:
            self._pending.extend(items)
            self.latest.update((m.key, m) for m in items)

    def points_at(self, step: int) -> list:
        """The points logged for ``step`` (the latest of each key), to link to the model of that step."""
        with self._lock:
            return [m for m in self.latest.values() if m.step == step]

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._inflight = batch
        for i in range(0, len(batch), 1000):  # MLflow's per-request limit
            chunk = batch[i:i + 1000]
            for attempt in range(5):
                try:
                    self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
                    break
                except Exception:  # noqa: BLE001 - tracking outages must not stop training
                    self.failures += 1
                    time.sleep(min(2 ** attempt, 10))
            else:
                with self._lock:  # keep what could not be sent; retried at the next flush
                    self._pending[:0] = batch[i:]
                    self._inflight = []
                return
            with self._lock:
                self._inflight = batch[i + 1000:]

    def unsent(self, through_step: int) -> list:
        """Points of steps <= ``through_step`` the server has not acknowledged yet (queued or being sent).
        A checkpoint of that step carries them: a resume from it never trains those steps again, so a worker
        killed before its next upload would otherwise lose them."""
        with self._lock:
            return [m for m in self._inflight + self._pending if m.step <= through_step]

    def requeue(self, metrics: list) -> None:
        """Send again points a checkpoint carried. Resending a point already stored is harmless: MLflow keeps
        one row per (key, timestamp, step, value), and these keep their original timestamps."""
        with self._lock:
            self._pending[:0] = metrics

    def skip_through(self, resumed_step: int) -> None:
        """After a resume at ``resumed_step``: do not log again what an earlier attempt already logged.

        Per key, from MLflow's latest point of each key (its step): an upload may have carried a step's training
        metrics but not its validation metrics, logged a moment later, and the latter must still be sent."""
        try:
            latest = self.client.get_run(self.run_id).data.to_proto().metrics
        except Exception:  # noqa: BLE001 - tracking down: replayed steps may then be logged twice
            latest = []
        self.resumed_step = resumed_step
        self.logged_through = {m.key: m.step for m in latest}

    def close(self) -> None:
        """Upload everything still queued, then stop the thread; what cannot be sent goes to the disk spool."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=60)
        self._flush()
        with self._lock:
            left, self._pending = self._pending, []
        if left:
            self._write_spool(left)

    def _write_spool(self, metrics: list) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        write_points(self.spool, metrics, mode="a")
        print(f"MLflow unreachable: {len(metrics)} metric points kept in {self.spool}; they are sent by the next "
              "run attempt", flush=True)

    def _replay_spool(self) -> None:
        """Metrics a previous attempt could not send (tracking outage at its end) go first."""
        if not self.spool.exists():
            return
        items = read_points(self.spool)
        self.spool.unlink()
        with self._lock:
            self._pending[:0] = items


def write_points(path, metrics: list, mode: str = "w") -> None:
    """Metric points as JSON lines [key, value, timestamp, step] (the disk spool, a checkpoint's unsent points)."""
    with open(path, mode) as f:
        for m in metrics:
            f.write(json.dumps([m.key, m.value, m.timestamp, m.step]) + "\n")


def read_points(path) -> list:
    from mlflow.entities import Metric

    with open(path) as f:
        return [Metric(*json.loads(line)) for line in f if line.strip()]


class NullLogger:
    """Ranks other than 0 log nothing."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def start_system_metrics(run: dict, rank: int, every_s: float):
    """MLflow's system-metrics monitor for this worker: CPU, memory, disk and network of the machine (GPU
    utilisation and memory through nvidia-ml-py where NVML finds a GPU), every ``every_s`` seconds under
    ``system/rank{rank}/``, its steps continuing those of an earlier worker group. Returns the monitor (stop it
    with ``stop_system_metrics``) or None when off (0 s) or not startable; monitoring never fails training."""
    if not every_s or not run.get("mlflow_run_id"):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run["mlflow_run_id"], sampling_interval=every_s, resume_logging=True,
                                       node_id=f"rank{rank}", tracking_uri=run["tracking_uri"])
        # the spec decides, not MLFLOW_SYSTEM_METRICS_* in the environment (one node id there for every rank)
        monitor.node_id, monitor.sampling_interval, monitor.samples_before_logging = f"rank{rank}", every_s, 1
        monitor.start()
        return monitor
    except Exception as exc:  # noqa: BLE001 - a monitoring failure is reported, never fatal
        print(f"[rank {rank}] system metrics not logged: {type(exc).__name__}: {exc}", flush=True)
        return None


def stop_system_metrics(monitor, timeout_s: float = 15.0) -> None:
    """Stop the monitor and send its last sample; a tracking server that does not answer (MLflow retries for
    minutes) delays a worker's exit by ``timeout_s`` at most."""
    if monitor is None:
        return
    stopper = threading.Thread(target=monitor.finish, name="stop-system-metrics", daemon=True)
    stopper.start()
    stopper.join(timeout_s)


class BackgroundMonitor:
    """``start_system_metrics`` off a worker's start-up path: building MLflow's monitor (its imports, the NVML
    probe, the run's last system step) took up to 5 s of a worker's 9 s from start to first step on 2 cores."""

    def __init__(self, run: dict, rank: int, every_s: float):
        self.monitor = None
        # MLflow's monitor imports scipy in the thread while the model build imports scipy.signal (e3nn, under
        # MACE) here: the two imports of the same package raced and failed a worker with KeyError: 'scipy' (seen
        # once in nine MACE launches). The package itself is imported first, here (its submodules load lazily).
        try:
            import scipy  # noqa: F401
        except ImportError:
            pass
        self._thread = threading.Thread(target=self._start, args=(run, rank, every_s), name="start-system-metrics",
                                        daemon=True)
        self._thread.start()

    def _start(self, run: dict, rank: int, every_s: float) -> None:
        self.monitor = start_system_metrics(run, rank, every_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._thread.join(timeout_s)
        stop_system_metrics(self.monitor, timeout_s)
