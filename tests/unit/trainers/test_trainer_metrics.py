"""Rank 0's metric logger against a real MLflow store (sqlite): a checkpoint carries the points MLflow has not
acknowledged, so a worker killed before its next upload loses none of the steps a resume will not train again."""

from __future__ import annotations

import threading

import mlflow
import pytest

from trainers.tracking import MetricLogger, read_points, write_points


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setattr("trainers.tracking.SPOOL_DIR", tmp_path / "spool")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("metrics", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, client.create_run(experiment).info.run_id


def _history(client, run_id, key="train/loss"):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _attempt(uri, run_id, resumed_step, carried, steps):
    """A restarted group: resume at ``resumed_step`` with the checkpoint's points, replay ``steps``, finish."""
    logger = MetricLogger(uri, run_id, flush_every_s=3600)
    logger.skip_through(resumed_step)
    logger.requeue(carried)
    for step in steps:
        logger.log({"train/loss": 100.0 + step}, step)  # a replayed step computes the same value
    logger.close()


def test_killed_before_any_upload_loses_no_step(run, tmp_path):
    uri, client, run_id = run
    first = MetricLogger(uri, run_id, flush_every_s=3600)  # nothing uploads before the kill
    for step in range(1, 7):
        first.log({"train/loss": 100.0 + step, "train/lr": 0.1}, step)
    carried = tmp_path / "metrics_unsent.jsonl"
    write_points(carried, first.unsent(4))  # the checkpoint of step 4
    assert sorted({m.step for m in read_points(carried)}) == [1, 2, 3, 4]
    # SIGKILL: `first` never closes; its queue is gone with the process
    _attempt(uri, run_id, 4, read_points(carried), range(5, 9))
    assert _history(client, run_id) == [(s, 100.0 + s) for s in range(1, 9)]
    assert [m.step for m in client.get_metric_history(run_id, "train/lr")] == [1, 2, 3, 4]


def test_points_sent_and_carried_are_stored_once(run, tmp_path):
    uri, client, run_id = run
    first = MetricLogger(uri, run_id, flush_every_s=3600)
    for step in range(1, 5):
        first.log({"train/loss": 100.0 + step}, step)
    carried = first.unsent(4)
    first._flush()  # the upload after the checkpoint: MLflow has steps 1-4 as well
    assert first.unsent(4) == []
    _attempt(uri, run_id, 4, carried, range(5, 7))
    assert _history(client, run_id) == [(s, 100.0 + s) for s in range(1, 7)]


def test_points_being_uploaded_count_as_unsent(run):
    uri, client, run_id = run
    logger = MetricLogger(uri, run_id, flush_every_s=3600)
    entered, release = threading.Event(), threading.Event()
    send = logger.client.log_batch

    def slow(*args, **kwargs):
        entered.set()
        release.wait(30)
        return send(*args, **kwargs)

    logger.client.log_batch = slow
    for step in (1, 2, 3):
        logger.log({"train/loss": 100.0 + step}, step)
    flush = threading.Thread(target=logger._flush)
    flush.start()
    assert entered.wait(30)
    logger.log({"train/loss": 104.0}, 4)
    assert sorted(m.step for m in logger.unsent(3)) == [1, 2, 3]  # in flight, not acknowledged
    assert sorted(m.step for m in logger.unsent(4)) == [1, 2, 3, 4]
    release.set()
    flush.join(30)
    assert sorted(m.step for m in logger.unsent(4)) == [4]
    logger.close()
    assert [s for s, _ in _history(client, run_id)] == [1, 2, 3, 4]


def test_replay_sends_a_key_the_last_upload_missed(run, tmp_path):
    """The upload took step 6's training metrics; step 6's validation metrics, logged a moment later, went with
    the killed process. The replay of step 6 sends the validation point and not the training ones again."""
    uri, client, run_id = run
    first = MetricLogger(uri, run_id, flush_every_s=3600)
    for step in range(1, 7):
        first.log({"train/loss": 100.0 + step}, step)
    carried = first.unsent(4)
    first._flush()
    first.log({"val/loss": 7.0}, 6)  # killed before the next upload
    logger = MetricLogger(uri, run_id, flush_every_s=3600)
    logger.skip_through(4)
    logger.requeue(carried)
    for step in (5, 6):
        logger.log({"train/loss": 200.0 + step}, step)  # a different value would show a second upload
    logger.log({"val/loss": 7.0}, 6)
    logger.close()
    assert _history(client, run_id) == [(s, 100.0 + s) for s in range(1, 7)]
    assert _history(client, run_id, "val/loss") == [(6, 7.0)]
