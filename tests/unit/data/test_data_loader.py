"""The loader on local shards: same stream for every W, exact resume and resize, corruption named, val pass."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from data.format import FieldSpec, read_manifest
from data.loader import build_loader
from data.spec import DataSpec
from data.writer import DatasetWriter

C, B, MICRO = 8, 16, 2
FIELDS = {"x": FieldSpec(dtype="int64", shape=(2,)), "pos": FieldSpec(dtype="float32", shape=(3,), ragged=True)}


def _transform(sample, rng):
    return {"x": sample["x"].copy(), "noise": np.array(rng.integers(1 << 30)), "n": np.array(len(sample["pos"]))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "ds-v1")
    with DatasetWriter(url, FIELDS, meta_fields={"n_atoms": "int64"}, shard_bytes=700, progress=False) as w:
        for i in range(203):  # not a multiple of B
            w.append({"x": np.array([i, -i]), "pos": np.full((1 + i % 4, 3), i, np.float32)}, {"n_atoms": 1 + i % 4})
    return url


def _spec(url, **kw) -> DataSpec:
    return DataSpec(train=[{"url": url}], val=[{"url": url}], canonical_streams=C, shuffle_window=2,
                    prefetch=2, num_workers=0, **kw)


def _loader(spec, rank, world, start=0, split="train", **kw):
    micro = kw.pop("micro", MICRO)
    return build_loader(spec, spec.train if split == "train" else spec.val, split=split, rank=rank,
                        world_size=world, global_batch=B, micro_batch=micro, seed=7, start_step=start,
                        transform=_transform, **kw)


def _stream(spec, world, start, steps, **kw) -> list[np.ndarray]:
    """Per global step: the concatenation of every rank's micro-batches (sample ids and per-sample RNG)."""
    loaders = [_loader(spec, r, world, start, **kw) for r in range(world)]
    its = [iter(ld) for ld in loaders]
    out = []
    try:
        for _ in range(steps):
            parts = []
            for it in its:
                for mb in next(it):
                    np.testing.assert_array_equal(mb["x"][:, 0].numpy(), mb["sample_id"].numpy())
                    parts.append(np.stack([mb["sample_id"].numpy(), mb["noise"].numpy()]))
            out.append(np.concatenate(parts, axis=1))
    finally:
        for ld in loaders:
            ld.close()
    return out


def _hash(stream: list[np.ndarray]) -> str:
    return hashlib.sha256(b"".join(s.tobytes() for s in stream)).hexdigest()


def test_same_global_batches_for_w_1_2_4_8(dataset):
    spec = _spec(dataset)
    ref = _stream(spec, 1, 0, 30)  # 30 steps x 16 > 2 epochs of 203 samples
    ids = np.concatenate([s[0] for s in ref])
    assert len(np.unique(ids[:203])) >= 190  # epochs interleave at stream ends, but repeats are rare
    for world in (2, 4, 8):
        assert _hash(_stream(spec, world, 0, 30)) == _hash(ref)


def test_kill_and_resume_at_random_step_gives_same_stream(dataset):
    spec = _spec(dataset)
    ref = _stream(spec, 2, 0, 25)
    cut = int(np.random.default_rng().integers(1, 24))
    first = _stream(spec, 2, 0, cut)
    loader = _loader(spec, 0, 2)
    state = loader.state(cut)
    loader.close()
    assert len(repr(state)) < 600 and state["step"] == cut
    second = _stream(spec, 2, cut, 25 - cut, resume_state=state)
    assert _hash(first + second) == _hash(ref), f"cut at step {cut}"


@pytest.mark.parametrize("w_before, w_after", [(4, 2), (1, 8), (8, 1)])
def test_resize_mid_epoch_gives_same_stream(dataset, w_before, w_after):
    spec = _spec(dataset)
    ref = _stream(spec, 1, 0, 20)
    cut = 7  # mid-epoch: 203 samples / 16 per step
    assert _hash(_stream(spec, w_before, 0, cut) + _stream(spec, w_after, cut, 20 - cut)) == _hash(ref)


def test_resume_with_other_seed_or_batch_is_refused(dataset):
    spec = _spec(dataset)
    loader = _loader(spec, 0, 1)
    state = dict(loader.state(3), seed=8)
    loader.close()
    with pytest.raises(ValueError, match="seed: checkpoint 8, now 7"):
        _loader(spec, 0, 1, 3, resume_state=state)


def test_cache_holds_only_the_shards_in_use(dataset, tmp_path):
    spec = _spec(dataset, cache_dir=str(tmp_path / "cache"), shard_cache="disk")
    loader = _loader(spec, 0, 4)
    it = iter(loader)
    counts = []
    for _ in range(40):
        next(it)
        counts.append(len([f for f in os.listdir(tmp_path / "cache" / "rank-0") if f.endswith(".shard")]))
    total = len(os.listdir(os.path.join(dataset, "shards")))
    assert max(counts) < total and max(counts) <= 2 * (2 + 2) + 2
    loader.close()
    assert not [f for f in os.listdir(tmp_path / "cache" / "rank-0") if f.endswith(".shard")]


def test_memory_cache_holds_only_the_shards_in_use(dataset, tmp_path):
    spec = _spec(dataset, cache_dir=str(tmp_path / "cache"))  # num_workers 0: shards stay in memory
    assert spec.in_memory
    loader = _loader(spec, 0, 4)
    it = iter(loader)
    held, views = [], []
    for _ in range(40):
        next(it)
        held.append(len(loader.cache._futures))
        views.append(len(loader.reader._open))
    total = len(os.listdir(os.path.join(dataset, "shards")))
    assert 0 < max(held) < total and max(held) <= 2 * (2 + 2) + 2
    assert max(views) <= max(held)  # released shards' buffers are not kept alive by the reader's views
    assert loader.cache.held_bytes <= loader.cache.peak_bytes < sum(s.bytes for s in read_manifest(dataset).shards)
    loader.close()
    assert not loader.cache._futures and not (tmp_path / "cache").exists()  # nothing written to disk


def test_memory_cache_refuses_worker_processes(dataset):
    with pytest.raises(ValueError, match="shard_cache 'memory' holds shards in the training process"):
        DataSpec.model_validate(dict(_spec(dataset).model_dump(), shard_cache="memory", num_workers=2))


def test_val_pass_is_disjoint_complete_and_padded(dataset):
    spec = _spec(dataset)
    seen, lengths = [], []
    for rank in range(3):
        loader = _loader(spec, rank, 3, split="val", micro=8)
        batches = list(loader)
        loader.close()
        lengths.append(len(batches))
        for mb in batches:
            seen.extend(mb["sample_id"][mb["_valid"]].tolist())
    assert len(set(lengths)) == 1 and sorted(seen) == list(range(203))


def test_flipped_byte_in_a_shard_is_named(dataset, tmp_path):
    import shutil

    url = str(tmp_path / "copy")
    shutil.copytree(dataset, url)
    shard = sorted(os.listdir(os.path.join(url, "shards")))[3]
    path = os.path.join(url, "shards", shard)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    loader = _loader(_spec(url), 0, 1)
    with pytest.raises(ValueError, match=rf"shards/{shard}: checksum .* also after a re-fetch"):
        for _ in zip(range(100), loader):
            pass
    loader.close()


def test_missing_shard_and_unknown_field_are_named(dataset, tmp_path):
    import shutil

    url = str(tmp_path / "copy")
    shutil.copytree(dataset, url)
    os.unlink(os.path.join(url, "shards", "000000.shard"))
    loader = _loader(_spec(url), 0, 1)
    with pytest.raises(ValueError, match="shards/000000.shard: object not found.*incomplete"):
        for _ in zip(range(100), loader):
            pass
    loader.close()
    with pytest.raises(ValueError, match="data.fields lists 'energy'"):
        _loader(_spec(dataset, fields=["x", "energy"]), 0, 1)


def test_worker_processes_give_the_same_stream(dataset):
    spec = _spec(dataset)
    workers = spec.model_copy(update={"num_workers": 2})
    assert _hash(_stream(workers, 2, 3, 6)) == _hash(_stream(spec, 2, 3, 6))


def _keep(sample, rng):
    return dict(sample)


def test_columnar_fast_path_equals_per_sample_path(dataset):
    spec = _spec(dataset)
    fast = build_loader(spec, spec.train, split="train", rank=1, world_size=2, global_batch=B, micro_batch=4, seed=7)
    slow = build_loader(spec, spec.train, split="train", rank=1, world_size=2, global_batch=B, micro_batch=4, seed=7,
                        transform=_keep)
    for a, b in zip(range(5), zip(fast, slow)):
        for x, y in zip(*b):
            assert set(x) == set(y) == {"x", "pos", "pos_counts", "sample_id"}
            for k in x:
                np.testing.assert_array_equal(x[k].numpy(), y[k].numpy())
    fast.close()
    slow.close()


def _tag(value):
    def transform(sample, rng):
        return {"x": sample["x"].copy(), "source": np.array(value)}
    return transform


def test_mixture_applies_each_dataset_its_own_transform(dataset, tmp_path):
    other = str(tmp_path / "ds-other")
    with DatasetWriter(other, FIELDS, shard_bytes=700, progress=False) as w:
        for i in range(64):
            w.append({"x": np.array([1000 + i, 0]), "pos": np.zeros((1, 3), np.float32)})
    spec = DataSpec(train=[{"url": dataset}, {"url": other}], canonical_streams=C, shuffle_window=2, prefetch=2,
                    num_workers=0)
    loader = build_loader(spec, spec.train, split="train", rank=0, world_size=1, global_batch=B, micro_batch=MICRO,
                          seed=7, transform=[_tag(0), _tag(1)])
    try:
        seen = {0: 0, 1: 0}
        for _, micro_batches in zip(range(6), loader):
            for mb in micro_batches:
                for x, source in zip(mb["x"][:, 0].tolist(), mb["source"].tolist()):
                    assert source == (1 if x >= 1000 else 0), (x, source)
                    seen[source] += 1
        assert seen[0] and seen[1]
    finally:
        loader.close()


class _Counted:
    """A transform of the sample alone (no rng), so the loader may keep its examples for later epochs."""
    cacheable = True

    def __init__(self):
        self.calls = 0

    def __call__(self, sample, rng):
        self.calls += 1
        return {"x": sample["x"].copy(), "n": np.array(len(sample["pos"]))}


@pytest.mark.parametrize("mib, kept", [(0, "none"), (1, "all"), (None, "some")])
def test_transform_cache_runs_a_cacheable_transform_once_per_sample(dataset, mib, kept):
    """Three epochs: the stream is the same with or without the cache; with room for every example each sample
    is transformed once, with none every time, and a cache too small for all stops growing when full."""
    spec = _spec(dataset, transform_cache_mib=mib or 0)
    steps = 3 * 203 // B
    out = {}
    for name, s in (("plain", _spec(dataset, transform_cache_mib=0)), ("cached", spec)):
        transform = _Counted()
        loader = build_loader(s, s.train, split="train", rank=0, world_size=1, global_batch=B, micro_batch=MICRO,
                              seed=7, transform=transform)
        if name == "cached" and mib is None:  # room for 50 of the 203 examples: 16 + 8 bytes of arrays, 64 per entry
            loader.reader._cache_room = 50 * (16 + 8 + 2 * 64)
        try:
            batches = [mb for _, step in zip(range(steps), loader) for mb in step]
            kept_ids = [sid for _, sid in loader.reader._examples]
        finally:
            loader.close()
        ids = np.concatenate([mb["sample_id"].numpy() for mb in batches])
        np.testing.assert_array_equal(np.concatenate([mb["x"][:, 0].numpy() for mb in batches]), ids)
        out[name] = (ids, np.concatenate([mb["n"].numpy() for mb in batches]), transform.calls, kept_ids)
    (ids, n, plain_calls, _), (cached_ids, cached_n, calls, kept_ids) = out["plain"], out["cached"]
    np.testing.assert_array_equal(cached_ids, ids)
    np.testing.assert_array_equal(cached_n, n)
    assert plain_calls == len(ids) > 2 * 203
    assert len(kept_ids) == {"none": 0, "all": 203}.get(kept, 50), len(kept_ids)
    # every sample is transformed at each appearance, but a kept one only at its first
    assert calls == len(ids) - sum(int((ids == sid).sum()) - 1 for sid in kept_ids), calls


@pytest.mark.parametrize("shape", [(3,), (4, 64, 64)])  # small rows: void take; 64 KiB rows: one memmove each
@pytest.mark.parametrize("shards", [1, 3])
def test_fixed_field_gather_equals_fancy_indexing(shape, shards):
    from types import SimpleNamespace

    from data.loader import _gather_fixed

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(10, *shape)).astype(np.float32) for _ in range(shards)]
    views = [SimpleNamespace(arrays={"u": a}) for a in arrays]
    path_idx, index = rng.integers(0, shards, 17), rng.integers(0, 10, 17)
    groups = [np.flatnonzero(path_idx == v) for v in range(shards)]
    got = _gather_fixed(views, groups, index, "u", FieldSpec(dtype="float32", shape=shape))
    want = np.stack([arrays[v][i] for v, i in zip(path_idx, index)])
    np.testing.assert_array_equal(got, want)
