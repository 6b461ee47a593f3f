"""What `sciscale launch` shows: our own lines and one line (or a progress bar) per logged step from rank 0;
Ray's and MLflow's own logging and Python warnings go to the run's driver.log, not the screen (``--verbose``
shows everything, as Ray prints it)."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import time

# Loggers of the libraries the driver runs; their records go to driver.log.
LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "py.warnings", "urllib3", "botocore", "s3fs", "fsspec", "filelock",
                   "optuna")
_HEADLINE = 3  # evaluation metrics shown beside val/loss on the console; all of them are in MLflow
_BASELINES = ("persistence", "climatology", "zero_baseline", "lead_time")


def headline(metrics: dict, limit: int = _HEADLINE) -> list[str]:
    """val/loss and the first few of the model's own scores (baselines and bookkeeping are in MLflow)."""
    own = sorted(k for k in metrics if k != "val/loss" and k.startswith(("val/", "eval/")) and not any(
        b in k for b in _BASELINES))
    return [k for k in ["val/loss", *own[:limit]] if k in metrics]


class Console:
    """The driver's screen and its driver.log."""

    def __init__(self, verbose: bool = False, stream=None):
        self.verbose, self.stream = verbose, stream or sys.stderr
        self.tty = _terminal_columns(self.stream) > 0  # a bar needs a width; else plain lines
        self.log = None  # the RunLog of driver.log, once the run is known
        self._handler = logging.handlers.MemoryHandler(capacity=10**6, flushLevel=logging.CRITICAL + 1)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._bar = None
        self._rate: tuple[float, int] | None = None
        self._pending = None  # a board.take() not answered yet
        import mlflow  # noqa: F401 - it sets up its loggers on import; quiet them before the first use

        self.quiet()

    def quiet(self) -> None:
        """Send the libraries' log records to driver.log; call again after an import or ray.init that
        installs handlers of its own."""
        if self.verbose:
            return
        logging.captureWarnings(True)
        for name in LIBRARY_LOGGERS:
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = [self._handler], False

    def attach(self, run_log) -> None:
        """From now on (and for what was held back so far) log records go to ``run_log``'s file."""
        self.log = run_log
        target = logging.StreamHandler(run_log.file)
        target.setFormatter(self._handler.formatter)
        self._handler.setTarget(target)
        self._handler.flush()
        self._handler.flushLevel = logging.DEBUG  # write through from now on

    def echo(self, text: str) -> None:
        """A line on the screen (above the progress bar) and in driver.log."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
        if self.log is not None:
            self.log.file.write(text + "\n")

    # ---------------------------------------------------------------------------------------------- progress
    def follow(self, board, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Show rank 0's events from ``board`` (trainers/progress.py) until ``stop`` is set."""
        while True:
            done = stop.wait(poll_s)
            if done:
                time.sleep(poll_s)  # rank 0's last posts (fire-and-forget) may still be on their way
                events = self._take(board, 10)
                if self._pending is None:  # that answer may predate the last posts: one fresh take
                    events += self._take(board, 10)
            else:
                events = self._take(board, poll_s)
            for event in events:
                getattr(self, f"_on_{event['kind']}", lambda e: None)(event)
            if done:
                break
        self.close_bar()

    def _take(self, board, timeout_s: float) -> list[dict]:
        """The board's events, waiting at most ``timeout_s``. A take not answered in time stays pending and is
        collected next time: its answer holds events the board no longer has (a busy machine at worker start)."""
        import ray

        try:
            if self._pending is None:
                self._pending = board.take.remote()
            ready, _ = ray.wait([self._pending], timeout=timeout_s)
            if not ready:
                return []
            ref, self._pending = self._pending, None
            return ray.get(ref)
        except Exception:  # noqa: BLE001 - Ray going down at the end of the run
            self._pending = None
            return []

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _on_start(self, e: dict) -> None:
        resized = f", resized from {e['saved_world_size']}" if e["saved_world_size"] != e["world_size"] else ""
        where = f"from step {e['step']}" if e["step"] else "from the start"
        self.close_bar()
        self.echo(f"training on {e['world_size']} worker(s) {where}{resized}")
        self._rate = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=e["max_steps"], initial=e["step"], unit="step", file=self.stream,
                             dynamic_ncols=True, desc="train")

    def _on_step(self, e: dict) -> None:
        if self._bar is not None:
            self._bar.update(e["step"] - self._bar.n)
            self._bar.set_postfix(loss=f"{e['loss']:.4g}", samples_s=f"{e['samples_per_s']:.1f}", refresh=True)
            if self.log is not None:
                self.log.file.write(_step_line(e, None) + "\n")
            return
        now = time.monotonic()
        self._rate = self._rate or (now, e["step"])
        t0, s0 = self._rate
        eta = (e["max_steps"] - e["step"]) * (now - t0) / (e["step"] - s0) if e["step"] > s0 else None
        self.echo(_step_line(e, eta))

    def _on_note(self, e: dict) -> None:
        self.echo(e["text"])

    def _on_eval(self, e: dict) -> None:
        metrics = e["metrics"]
        shown = headline(metrics)
        text = "  ".join(f"{k} {metrics[k]:.4g}" for k in shown)
        self.echo(f"{'final eval' if e.get('final') else 'eval'} at step {e['step']}: {text}"
                  + (f"  (+{len(metrics) - len(shown)} more in MLflow)" if len(metrics) > len(shown) else ""))


def _terminal_columns(stream) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (AttributeError, OSError, ValueError):
        return 0


def _step_line(e: dict, eta_s: float | None) -> str:
    eta = f"  eta {time.strftime('%H:%M:%S', time.gmtime(eta_s))}" if eta_s is not None else ""
    return (f"step {e['step']}/{e['max_steps']}  loss {e['loss']:.4g}  {e['samples_per_s']:.1f} samples/s  "
            f"lr {e['lr']:.3g}{eta}")
