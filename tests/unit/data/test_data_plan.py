"""The epoch plan is a pure function: same batches for every W dividing C, every sample once per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from data.plan import Plan, PlanSource, decode_ids, encode_ids, epoch_order, mixture_pattern

COUNTS = np.array([7, 5, 9, 3, 11, 6, 8, 4, 10, 2, 9, 7])  # 81 samples: not a multiple of B


def _plan(**kw) -> Plan:
    args = dict(sources=[PlanSource(COUNTS)], seed=3, streams=8, global_batch=16, window=2)
    args.update(kw)
    return Plan(**args)


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_global_batches_identical_for_every_world_size(world_size):
    reference, plan = _plan(), _plan()
    for step in (0, 1, 5, 17):
        ranks = [plan.rank_block(r, world_size, step, 1) for r in range(world_size)]
        got = np.concatenate([encode_ids(b["dataset"][0], b["local"][0]) for b in ranks])
        np.testing.assert_array_equal(got, reference.global_batch_ids(step))


def test_every_sample_once_per_epoch_and_remainder_carries_over():
    plan = _plan()
    steps = 12  # > max stream length (11) / b (2): every stream has finished epoch 0
    block = plan.rank_block(0, 1, 0, steps)
    local, epoch = block["local"].ravel(), block["epoch"].ravel()
    np.testing.assert_array_equal(np.sort(local[epoch == 0]), np.arange(COUNTS.sum()))
    assert (epoch == 1).any()  # the epoch boundary falls inside a batch: nothing dropped, nothing padded


def test_order_depends_on_seed_and_epoch_only():
    a, b = epoch_order(COUNTS, 1, 0, 8, 2), epoch_order(COUNTS, 1, 0, 8, 2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], epoch_order(COUNTS, 1, 1, 8, 2)[0])
    assert not np.array_equal(a[0], epoch_order(COUNTS, 2, 0, 8, 2)[0])


def test_window_shuffle_keeps_streams_local_to_few_shards():
    counts = np.full(64, 100)
    ids, bounds = epoch_order(counts, 0, 0, 4, 2)
    for c in range(4):
        shards = ids[bounds[c]:bounds[c + 1]] // 100
        assert len(np.unique(shards)) == 16  # a stream reads its own 16 shards, not all 64
        window = ids[bounds[c]:bounds[c] + 200] // 100
        assert len(np.unique(window)) == 2  # the first window mixes exactly 2 shards


def test_mixture_follows_weights_and_encodes_dataset():
    plan = Plan([PlanSource(COUNTS, 1.0), PlanSource(np.array([50, 50]), 3.0)], seed=0, streams=4,
                global_batch=8)
    ids = np.concatenate([plan.global_batch_ids(s) for s in range(128)])
    dataset, local = decode_ids(ids)
    assert abs((dataset == 1).mean() - 0.75) < 0.01
    assert local[dataset == 0].max() < COUNTS.sum() and local[dataset == 1].max() < 100
    assert np.bincount(mixture_pattern([1, 3], 8)).tolist() == [2, 6]


def test_visits_span_every_use_of_a_shard():
    plan = _plan()
    for c in range(8):
        v = plan.visits(0, c, 0)
        steps = plan.first_step_of_epoch(0, c, 1) + 1
        block = plan.stream_block(c, 0, steps)
        step_of_slot = np.arange(len(block["shard"])) // plan.per_stream
        for shard, first, last in zip(v["shard"], v["first_step"], v["last_step"]):
            used = step_of_slot[(block["shard"] == shard) & (block["epoch"] == 0)]
            assert (used.min(), used.max()) == (first, last)


def test_bad_sizes_are_explained():
    with pytest.raises(ValueError, match="not a multiple of data.canonical_streams"):
        _plan(global_batch=12)
    with pytest.raises(ValueError, match="must divide data.canonical_streams=8"):
        _plan().rank_streams(0, 3)
    with pytest.raises(ValueError, match="fewer than data.canonical_streams"):
        Plan([PlanSource(np.array([3]))], seed=0, streams=8, global_batch=8)
