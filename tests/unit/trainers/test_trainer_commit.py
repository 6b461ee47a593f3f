"""Checkpoint commit files and checksums, the fault-injection hold, failure records and the status timeline."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from orchestrator.jobs import events
from trainers import checkpoint, faults, resilience


def _saved(tmp_path, world=2):
    """A checkpoint directory as two ranks leave it after their uploads: files, then commit files."""
    d = tmp_path / "ckpt"
    (d / "step8").mkdir(parents=True)
    (d / checkpoint.STATE_FILE).write_text(json.dumps({"step": 8, "world_size": world, "zero_stage": 2}))
    for rank in range(world):
        (d / "step8" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(os.urandom(1000 + rank))
    for rank in range(world):
        mine = tmp_path / f"rank{rank}"
        (mine / "step8").mkdir(parents=True)
        (mine / "step8" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(
            (d / "step8" / f"zero_pp_rank_{rank}_optim_states.pt").read_bytes())
        if rank == 0:
            (mine / checkpoint.STATE_FILE).write_text((d / checkpoint.STATE_FILE).read_text())
        name, record = checkpoint.commit_record(str(mine), rank, 8)
        (d / name).write_text(json.dumps(record))
    return d


def test_commit_record_lists_every_file_but_commits(tmp_path):
    d = _saved(tmp_path)
    record = json.loads((d / "commit-rank0.json").read_text())
    assert set(record["files"]) == {checkpoint.STATE_FILE, "step8/zero_pp_rank_0_optim_states.pt"}
    assert record["files"]["step8/zero_pp_rank_0_optim_states.pt"]["bytes"] == 1000
    checkpoint.verify(str(d))


def test_missing_commit_file_means_not_committed(tmp_path):
    d = _saved(tmp_path)
    (d / "commit-rank1.json").unlink()
    with pytest.raises(ValueError, match=r"not committed: commit-rank1.json missing"):
        checkpoint.verify(str(d))


def test_flipped_byte_is_named(tmp_path):
    d = _saved(tmp_path)
    target = d / "step8" / "zero_pp_rank_1_optim_states.pt"
    data = bytearray(target.read_bytes())
    data[500] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"zero_pp_rank_1_optim_states.pt does not match its checksum in "
                                         r"commit-rank1.json"):
        checkpoint.verify(str(d))


def test_missing_listed_file_is_named(tmp_path):
    d = _saved(tmp_path)
    (d / "step8" / "zero_pp_rank_0_optim_states.pt").unlink()
    with pytest.raises(ValueError, match=r"zero_pp_rank_0_optim_states.pt listed in commit-rank0.json is missing"):
        checkpoint.verify(str(d))


def test_hold_waits_for_release_and_is_off_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("SCISCALE_FAULT_HOLD", raising=False)
    started = time.monotonic()
    faults.hold("step", 3, 0)  # off: returns at once
    assert time.monotonic() - started < 0.05
    monkeypatch.setenv("SCISCALE_FAULT_HOLD", "step@3,upload@8")
    monkeypatch.setenv("SCISCALE_FAULT_DIR", str(tmp_path))
    faults.hold("step", 4, 0)  # another step: passes
    assert not list(tmp_path.iterdir())
    worker = threading.Thread(target=faults.hold, args=("upload", 8, 1))
    worker.start()
    deadline = time.monotonic() + 10
    while not (tmp_path / "upload-8-rank1.pid").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert int((tmp_path / "upload-8-rank1.pid").read_text()) == os.getpid()
    assert worker.is_alive()  # held
    (tmp_path / "release-upload-8").write_text("")
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_status_timeline_orders_starts_and_failures():
    tags = {
        "sciscale.group_start.000": "2026-11-25T10:00:00.000Z step=0 world_size=2 cause=first start",
        "sciscale.failure.2026-11-25T10:05:00.000Z": "rank 1: ActorDiedError: worker died",
        "sciscale.group_start.001": "2026-11-25T10:05:09.000Z step=40 world_size=2 cause=restart",
        "sciscale.run_id": "x",
    }
    assert events(tags) == [
        ("2026-11-25T10:00:00.000Z", "group start: step=0 world_size=2 cause=first start"),
        ("2026-11-25T10:05:00.000Z", "failure: rank 1: ActorDiedError: worker died"),
        ("2026-11-25T10:05:09.000Z", "group start: step=40 world_size=2 cause=restart"),
    ]


def test_failure_description_is_one_line():
    text = resilience.describe_failure(1, RuntimeError("gloo: connection reset\nlong traceback"))
    assert text == "rank 1: RuntimeError: gloo: connection reset"
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from trainers.failures import WorkerFailure

    wrapped = UserExceptionWithTraceback(WorkerFailure.of(KeyError("inputs"), 1, 12), "Traceback (most recent ...")
    assert resilience.describe_failure(1, wrapped) == "rank 1 at step 12: KeyError: 'inputs'"
