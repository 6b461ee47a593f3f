"""The epoch plan: which sample every global batch holds, as a pure function of its inputs (no I/O).

One dataset, epoch e (rng keyed by seed, dataset index, epoch):
  1. permute the shards; lay out their sample ids in that order;
  2. cut this sequence into C contiguous canonical streams of floor/ceil(N/C) samples (a shard falls into
     one stream, or two where a cut crosses it, so each shard is fetched about once per epoch per reader);
  3. inside each stream, shuffle samples within consecutive windows of ``window`` shards' worth of samples.
Global step k takes b = B/C consecutive slots from every stream, streams in order; rank r of W owns the
contiguous block of streams [r*C/W, (r+1)*C/W). The global batch is therefore the same for every W that
divides C, and so is its order.

Epoch remainder: each stream is an endless concatenation of its per-epoch sequences (epoch e+1 follows epoch
e inside the stream), so when N is not a multiple of B no sample is dropped or padded: the last batch of an
epoch simply continues into the next one. Position p of stream c belongs to epoch p // L_c.

Mixtures: every stream slot belongs to one dataset by a fixed pattern of period Q in which dataset d holds
q_d slots (q_d proportional to its weight, smooth round-robin order); dataset d runs its own endless
stream sequence, so a small dataset repeats (new epoch, new order) more often than a large one. Sample ids
are encoded as ``d << 48 | local id``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

SID_SHIFT = 48
PATTERN_PERIOD = 1024


def encode_ids(dataset: np.ndarray | int, local: np.ndarray) -> np.ndarray:
    return (np.asarray(dataset, np.int64) << SID_SHIFT) | np.asarray(local, np.int64)


def decode_ids(sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sample_ids = np.asarray(sample_ids, np.int64)
    return sample_ids >> SID_SHIFT, sample_ids & ((1 << SID_SHIFT) - 1)


def epoch_order(shard_counts: np.ndarray, seed: int, epoch: int, streams: int, window: int,
                salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids of one epoch in plan order, stream bounds of length C + 1); stream c is ids[b[c]:b[c+1]]."""
    counts = np.asarray(shard_counts, np.int64)
    n = int(counts.sum())
    bounds = np.arange(streams + 1, dtype=np.int64) * n // streams
    perm = shard_permutation(seed, epoch, len(counts), salt)
    parts = [stream_order(counts, perm, bounds, c, window, (seed, salt, epoch))[0] for c in range(streams)]
    return np.concatenate(parts), bounds


def shard_permutation(seed: int, epoch: int, num_shards: int, salt: int = 0) -> np.ndarray:
    """The epoch's shard order."""
    return np.random.default_rng([seed, salt, epoch]).permutation(num_shards)


def stream_order(counts: np.ndarray, perm: np.ndarray, bounds: np.ndarray, c: int, window: int,
                 key: tuple[int, int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Stream ``c`` of one epoch, built alone (a rank builds only its own streams), in O(stream length):
    its sample ids in plan order, and its shard pieces (shard, first and last position of use in the
    stream, sorted by first use).

    The stream is the range [bounds[c], bounds[c+1]) of the permuted shards' ids, shuffled within windows of
    ``window`` shards' worth of samples by a generator keyed by (seed, salt, epoch, c). The shuffle is
    applied to pre-shuffle indices: ``where[j]`` = position of pre-shuffle index j, and since a shard's
    piece is a contiguous run of pre-shuffle indices, its first and last use are one ``reduceat`` each.
    """
    n, s = int(bounds[-1]), len(counts)
    lo, hi = int(bounds[c]), int(bounds[c + 1])
    ends = np.cumsum(counts[perm])  # end of every permuted shard in the pre-shuffle sequence
    j = np.arange(np.searchsorted(ends, lo, side="right"), np.searchsorted(ends, hi - 1, side="right") + 1)
    k = perm[j]  # the shards this stream touches, in stream order
    begin = ends[j] - counts[k]  # pre-shuffle start of each
    run_lo, run_hi = np.maximum(begin, lo), np.minimum(begin + counts[k], hi)
    first_id = (np.cumsum(counts) - counts)[k] + run_lo - begin
    length, dtype = run_hi - run_lo, np.int32 if n < 2**31 else np.int64
    # pre-shuffle ids as a running sum of +1 steps with a jump at each piece (cheaper than repeat + add)
    pre = np.ones(hi - lo, dtype)
    pre[0] = first_id[0]
    pre[np.cumsum(length)[:-1]] = first_id[1:] - (first_id[:-1] + length[:-1] - 1)
    np.cumsum(pre, out=pre)
    order = np.arange(hi - lo, dtype=dtype)
    rng = np.random.default_rng([*key, c + 1])
    win = max(1, window * -(-n // s))  # window shards' worth of samples (ceil of the mean shard)
    for a in range(0, hi - lo, win):
        rng.shuffle(order[a:a + win])
    where = np.empty_like(order)
    where[order] = np.arange(hi - lo, dtype=dtype)
    piece = np.cumsum(length) - length
    first, last = np.minimum.reduceat(where, piece), np.maximum.reduceat(where, piece)
    by_use = np.argsort(first, kind="stable")
    return pre[order], {"shard": k[by_use], "first": first[by_use].astype(np.int64),
                        "last": last[by_use].astype(np.int64)}


def mixture_pattern(weights: list[float], period: int = PATTERN_PERIOD) -> np.ndarray:
    """Dataset index of every slot in one period: counts proportional to weights, evenly interleaved."""
    if len(weights) == 1:
        return np.zeros(1, np.int64)
    w = np.asarray(weights, np.float64) / np.sum(weights)
    quota = np.floor(w * period).astype(np.int64)
    rest = period - quota.sum()
    quota[np.argsort(-(w * period - quota), kind="stable")[:rest]] += 1
    if (quota == 0).any():
        raise ValueError(f"data.train weights {list(weights)}: a dataset would get no slot in {period}; "
                         "raise its weight to at least 1/1000 of the total")
    current, out = np.zeros(len(w), np.int64), np.empty(period, np.int64)
    for i in range(period):  # smooth weighted round robin
        current += quota
        d = int(np.argmax(current))
        current[d] -= period
        out[i] = d
    return out


@dataclass
class PlanSource:
    """What the plan needs of one dataset: its shard sizes, weight and identity."""

    shard_counts: np.ndarray
    weight: float = 1.0
    version: str = ""

    @property
    def num_samples(self) -> int:
        return int(np.sum(self.shard_counts))


@dataclass
class Plan:
    """The sample order of a (mixture of) dataset(s) for every global step; pure and cheap to rebuild."""

    sources: list[PlanSource]
    seed: int
    streams: int
    global_batch: int
    window: int = 4
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        c, b = self.streams, self.global_batch
        if b % c:
            raise ValueError(f"global batch {b} is not a multiple of data.canonical_streams {c}; every batch "
                             f"takes B/C samples from each stream: choose B a multiple of {c}")
        for d, src in enumerate(self.sources):
            if src.num_samples < c:
                raise ValueError(f"dataset {d} ({src.version or 'unnamed'}) has {src.num_samples} samples, fewer "
                                 f"than data.canonical_streams={c}; lower canonical_streams")
        self.per_stream = b // c
        self.pattern = mixture_pattern([s.weight for s in self.sources])
        self.quota = np.bincount(self.pattern, minlength=len(self.sources))
        self._rank_in_period = np.zeros(len(self.pattern), np.int64)  # q of a slot within its period
        self._slot_of = []  # per dataset: positions of its slots inside a period
        for d in range(len(self.sources)):
            where = np.flatnonzero(self.pattern == d)
            self._rank_in_period[where] = np.arange(len(where))
            self._slot_of.append(where)
        self.shard_starts = [np.cumsum(s.shard_counts) - s.shard_counts for s in self.sources]
        self._before = [np.concatenate([[0], np.cumsum(self.pattern == d)]) for d in range(len(self.sources))]

    def dataset_position(self, d: int, slot: int) -> int:
        """How many of a stream's slots before ``slot`` belong to dataset ``d``."""
        period = len(self.pattern)
        return int((slot // period) * self.quota[d] + self._before[d][slot % period])

    def epoch_at(self, d: int, c: int, step: int) -> int:
        """The epoch of dataset ``d`` that stream ``c`` is in at the start of ``step``."""
        return self.dataset_position(d, step * self.per_stream) // self.stream_length(d, c)

    def stream(self, d: int, e: int, c: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Cached ``stream_order`` of dataset ``d``, epoch ``e``, stream ``c``."""
        key = (d, e, c)
        if key not in self._cache:
            # two epochs of every stream: the current one and the next, whose first shards are prefetched
            if len(self._cache) >= 2 * self.streams * len(self.sources) + 2:
                self._cache.pop(next(iter(self._cache)))
            src = self.sources[d]
            n = src.num_samples
            bounds = np.arange(self.streams + 1, dtype=np.int64) * n // self.streams
            perm = shard_permutation(self.seed, e, len(src.shard_counts), salt=d)
            self._cache[key] = stream_order(np.asarray(src.shard_counts, np.int64), perm, bounds, c, self.window,
                                            (self.seed, d, e))
        return self._cache[key]

    def stream_length(self, d: int, c: int) -> int:
        n = self.sources[d].num_samples
        return (c + 1) * n // self.streams - c * n // self.streams

    def slots_to_positions(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stream slots -> (dataset, position in that dataset's endless stream sequence)."""
        period = len(self.pattern)
        d = self.pattern[slots % period]
        q = (slots // period) * self.quota[d] + self._rank_in_period[slots % period]
        return d, q

    def position_to_slot(self, d: int, q: np.ndarray) -> np.ndarray:
        """Inverse of ``slots_to_positions`` for dataset ``d``."""
        q = np.asarray(q, np.int64)
        return (q // self.quota[d]) * len(self.pattern) + self._slot_of[d][q % self.quota[d]]

    def stream_block(self, c: int, start_step: int, steps: int) -> dict[str, np.ndarray]:
        """Stream ``c`` for steps [start_step, start_step + steps): arrays of shape [steps * b] with the
        dataset, local sample id, dataset epoch and shard index of every slot."""
        b = self.per_stream
        slots = np.arange(start_step * b, (start_step + steps) * b, dtype=np.int64)
        d, q = self.slots_to_positions(slots)
        out = {k: np.empty(len(slots), np.int64) for k in ("dataset", "local", "epoch", "shard")}
        out["dataset"][:] = d
        for di in np.unique(d):
            sel = d == di
            length = self.stream_length(int(di), c)
            epochs, idx = np.divmod(q[sel], length)
            out["epoch"][sel] = epochs
            local = np.empty(len(idx), np.int64)
            for e in np.unique(epochs):
                m = epochs == e
                local[m] = self.stream(int(di), int(e), c)[0][idx[m]]
            out["local"][sel] = local
            out["shard"][sel] = np.searchsorted(self.shard_starts[di], local, side="right") - 1
        return out

    def rank_streams(self, rank: int, world_size: int) -> range:
        if world_size < 1 or self.streams % world_size or not 0 <= rank < world_size:
            raise ValueError(f"world size {world_size} (rank {rank}) must divide data.canonical_streams="
                             f"{self.streams}; choose W among {divisors(self.streams)} or change C")
        per = self.streams // world_size
        return range(rank * per, (rank + 1) * per)

    def rank_block(self, rank: int, world_size: int, start_step: int, steps: int) -> dict[str, np.ndarray]:
        """The rank's samples for ``steps`` steps: arrays of shape [steps, B/W] in global-batch order."""
        parts = [self.stream_block(c, start_step, steps) for c in self.rank_streams(rank, world_size)]
        return {k: np.concatenate([p[k].reshape(steps, -1) for p in parts], axis=1) for k in parts[0]}

    def global_batch_ids(self, step: int) -> np.ndarray:
        """Encoded sample ids of global batch ``step`` (rank-independent)."""
        block = self.rank_block(0, 1, step, 1)
        return encode_ids(block["dataset"][0], block["local"][0])

    def visits(self, d: int, c: int, e: int) -> dict[str, np.ndarray]:
        """Each shard's span in stream ``c`` of dataset ``d``, epoch ``e``, as global steps: arrays shard,
        first_step, last_step (sorted by first use)."""
        pieces = self.stream(d, e, c)[1]
        base, b = e * self.stream_length(d, c), self.per_stream
        return {"shard": pieces["shard"],
                "first_step": self.position_to_slot(d, base + pieces["first"]) // b,
                "last_step": self.position_to_slot(d, base + pieces["last"]) // b}

    def first_step_of_epoch(self, d: int, c: int, e: int) -> int:
        return int(self.position_to_slot(d, np.int64(e * self.stream_length(d, c)))) // self.per_stream


@dataclass(order=True)
class Visit:
    """One span of uses of a shard by a rank: fetch it before ``first_step``, drop it after ``last_step``."""

    first_step: int
    seq: int
    dataset: int
    shard: int
    last_step: int


class RankSchedule:
    """The rank's shard visits in order of first use from ``start_step`` on, generated epoch by epoch."""

    def __init__(self, plan: Plan, rank: int, world_size: int, start_step: int) -> None:
        self.plan, self.start_step = plan, start_step
        self._heap: list[Visit] = []
        self._seq = 0
        self._next = {(d, c): plan.epoch_at(d, c, start_step)
                      for d in range(len(plan.sources)) for c in plan.rank_streams(rank, world_size)}

    def _frontier(self, key: tuple[int, int]) -> int:
        return self.plan.first_step_of_epoch(key[0], key[1], self._next[key])

    def _load(self, key: tuple[int, int]) -> None:
        d, c = key
        v = self.plan.visits(d, c, self._next[key])
        self._next[key] += 1
        for shard, first, last in zip(v["shard"].tolist(), v["first_step"].tolist(), v["last_step"].tolist()):
            if last < self.start_step:
                continue  # used up before the resume point
            heapq.heappush(self._heap, Visit(max(first, self.start_step), self._seq, d, shard, last))
            self._seq += 1

    def __iter__(self) -> Iterator[Visit]:
        while True:
            key = min(self._next, key=self._frontier)
            # an unloaded epoch cannot start before its frontier: the heap top is safe to hand out
            while not self._heap or self._heap[0].first_step >= self._frontier(key):
                self._load(key)
                key = min(self._next, key=self._frontier)
            yield heapq.heappop(self._heap)


def block_visits(dataset: np.ndarray, shard: np.ndarray) -> list[Visit]:
    """Visits of a finite [steps, slots] block (the val pass): one per shard, first to last step of use."""
    steps = np.repeat(np.arange(dataset.shape[0]), dataset.shape[1])
    keys = dataset.ravel() * (1 << 32) + shard.ravel()
    uniq, first = np.unique(keys, return_index=True)
    _, last_rev = np.unique(keys[::-1], return_index=True)
    last = len(keys) - 1 - last_rev
    order = np.argsort(first, kind="stable")
    return [Visit(int(steps[first[i]]), n, int(uniq[i] >> 32), int(uniq[i] & 0xFFFFFFFF), int(steps[last[i]]))
            for n, i in enumerate(order)]


def val_assignment(counts: list[int], rank: int, world_size: int, micro_batch: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One deterministic pass over the concatenated val datasets: rank r takes a contiguous, disjoint
    range; every rank yields the same number of micro-batches, padded by repeating a real sample with
    valid=False. Returns dataset, local id and valid, each shaped [num_batches, micro_batch]."""
    total = int(sum(counts))
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    per_rank = -(-total // world_size)
    num_batches = max(1, -(-per_rank // micro_batch))
    flat = np.arange(lo, lo + num_batches * micro_batch)
    valid = flat < hi
    flat = np.where(valid, flat, hi - 1 if hi > lo else 0)
    starts = np.cumsum(counts) - np.asarray(counts)
    dataset = np.searchsorted(starts, flat, side="right") - 1
    local = flat - starts[dataset]
    shape = (num_batches, micro_batch)
    return dataset.reshape(shape), local.reshape(shape), valid.reshape(shape)


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]
