"""Rank-0 MLflow logging that never blocks the step: metrics are queued and uploaded in batches by a thread.

A synchronous ``log_metric`` to a local server costs about 58 ms (shared/ANCHORS.md); here a step only
appends to a list under a lock.
"""

from __future__ import annotations

import threading
import time


class MetricLogger:
    """Queue metrics from the training loop; a daemon thread uploads them with ``log_batch``."""

    def __init__(self, tracking_uri: str, run_id: str, flush_every_s: float = 5.0):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        with self._lock:
            self._pending.extend(items)

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
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
                return

    def close(self) -> None:
        """Upload everything still queued, then stop the thread."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=60)
        self._flush()


class NullLogger:
    """Ranks other than 0 log nothing."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass
