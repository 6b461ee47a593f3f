"""The per-rank streaming loader: plan -> shard visits -> local cache -> DataLoader workers -> micro-batches.

The main process walks the rank's plan step by step. Before it hands step k's micro-batch tasks to the
DataLoader it acquires every shard visit that starts at k, plus up to ``prefetch`` visits further ahead
(downloaded in background threads); it waits only for the shards step k reads. Worker processes map the
local shard files and decode samples (transform + collate). A visit is released once step k has been
delivered to the trainer and k was its last planned step: the file is deleted.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.cache import MemoryShard, ShardCache
from data.format import FieldSpec, Manifest, ShardView, open_shard, read_manifest
from data.plan import Plan, PlanSource, RankSchedule, Visit, block_visits, encode_ids, val_assignment
from data.storage import storage_options

STATE_KIND = "sciscale.data/2"  # 2: one shuffle generator per stream
# Downloads in flight per rank. A prefetch deeper than one window change ((C/W) x shuffle_window shards)
# queues the next window's shards behind these, so the fetch pool never drains at a window boundary while
# the number of concurrent GETs stays that of the raw-GET bound (docs/benchmarks-data.md).
DOWNLOADS_IN_FLIGHT = 4


def build_loader(data_spec, sources, *, split: str, rank: int, world_size: int, global_batch: int,
                 micro_batch: int, seed: int, start_step: int = 0, transform: Callable | None = None,
                 collate: Callable | None = None, resume_state: dict | None = None, storage=None) -> "StepLoader":
    """A StepLoader for ``split`` ('train': endless, from ``start_step``; 'val': one pass, padded); ``storage``
    is the job's storage settings (data/spec.py StorageSpec; default: the environment's)."""
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: expected 'train' or 'val'")
    if not sources:
        raise ValueError(f"data.{split} lists no dataset; add at least one url")
    urls = [s.url for s in sources]
    options = [storage_options(u, storage) for u in urls]
    manifests = [read_manifest(u, o) for u, o in zip(urls, options)]
    fields = _check_fields(urls, manifests, data_spec.fields)
    per_rank = global_batch // world_size if world_size and global_batch % world_size == 0 else 0
    if split == "train" and (not per_rank or per_rank % micro_batch):
        raise ValueError(f"global batch {global_batch} must be a multiple of micro batch {micro_batch} x world "
                         f"size {world_size}; change train.global_batch_size or train.micro_batch_size")
    plan_sources = [PlanSource(m.shard_counts(), s.weight, m.version) for m, s in zip(manifests, sources)]
    if split == "val":  # one ordered pass: only the shard layout of the plan is used
        plan = Plan(plan_sources, seed, 1, 1, data_spec.shuffle_window)
    else:
        plan = Plan(plan_sources, seed, data_spec.canonical_streams, global_batch, data_spec.shuffle_window)
        plan.rank_streams(rank, world_size)  # W must divide C
        _check_resume(resume_state, plan, start_step)
    cache_dir = None if data_spec.cache_dir is None else f"{data_spec.cache_dir.rstrip('/')}/rank-{rank}"
    cache = ShardCache(urls, manifests, options, cache_dir, threads=max(1, min(data_spec.prefetch, DOWNLOADS_IN_FLIGHT)),
                       in_memory=data_spec.in_memory)
    # a worker keeps maps only of shards that can be in use together, so released files are unmapped soon
    in_use = (data_spec.canonical_streams // max(1, world_size)) * (data_spec.shuffle_window + 2) + data_spec.prefetch
    cache_bytes = data_spec.transform_cache_mib << 20 if split == "train" else 0  # a val pass never comes back
    reader = ShardSampleDataset(fields, manifests, transform, collate, seed, max_open=max(2, in_use),
                                cache_bytes=cache_bytes)
    return StepLoader(plan, cache, reader, split=split, rank=rank, world_size=world_size, micro_batch=micro_batch,
                      start_step=start_step, prefetch=data_spec.prefetch, num_workers=data_spec.num_workers,
                      cache_limit=data_spec.cache_limit_bytes)


def _check_fields(urls: list[str], manifests: list[Manifest], wanted: list[str] | None) -> list[str]:
    first = manifests[0].fields
    for url, m in zip(urls[1:], manifests[1:]):
        if m.fields != first:
            raise ValueError(f"{url}: schema {_schema(m.fields)} differs from {urls[0]}'s {_schema(first)}; a "
                             "mixture needs one schema: convert the datasets or train on them separately")
    for name in wanted or []:
        if name not in first:
            raise ValueError(f"data.fields lists {name!r}, but {urls[0]} has fields {sorted(first)}; fix "
                             "data.fields or point data.train at a dataset with that field")
    return list(wanted or first)


def _schema(fields: dict[str, FieldSpec]) -> str:
    return "{" + ", ".join(f"{k}: {v.dtype}{list(v.shape)}{' ragged' if v.ragged else ''}"
                           for k, v in fields.items()) + "}"


def resume_state(plan: Plan, step: int) -> dict:
    """The few hundred bytes that pin the sample stream at ``step`` for any world size dividing C."""
    return {"kind": STATE_KIND, "versions": [s.version for s in plan.sources],
            "weights": [s.weight for s in plan.sources], "seed": plan.seed, "canonical_streams": plan.streams,
            "global_batch": plan.global_batch, "shuffle_window": plan.window, "step": int(step),
            "epoch": plan.epoch_at(0, 0, step)}


def _check_resume(state: dict | None, plan: Plan, start_step: int) -> None:
    if state is None:
        return
    now = resume_state(plan, start_step)
    diff = [k for k in now if k not in ("epoch",) and state.get(k) != now[k]]
    if diff:
        detail = "; ".join(f"{k}: checkpoint {state.get(k)!r}, now {now[k]!r}" for k in diff)
        raise ValueError(f"cannot resume the data stream: {detail}. Resume with the same datasets, seed, "
                         "canonical_streams, global batch and shuffle_window (the world size may change)")


class ShardSampleDataset(Dataset):
    """Runs in DataLoader workers: maps shard files, decodes one micro-batch task, transforms, collates."""

    def __init__(self, fields: list[str], manifests: list[Manifest], transform, collate, seed: int,
                 max_open: int = 64, cache_bytes: int = 0) -> None:
        self.fields = fields
        self.specs = [{f: m.fields[f] for f in fields} for m in manifests]
        self.transform, self.collate, self.seed, self.max_open = transform, collate, seed, max_open
        self._open: collections.OrderedDict = collections.OrderedDict()
        # data.transform_cache_mib: (dataset, sample id) -> transformed example, for `cacheable` transforms
        self._examples: dict[tuple[int, int], dict] = {}
        self._cache_room = cache_bytes

    def _view(self, source: "str | MemoryShard", d: int):
        """The views of one shard: a local file (mapped) or a shard held in memory."""
        name = source if isinstance(source, str) else source.name
        view = self._open.get(name)
        if view is None:
            view = self._open[name] = (open_shard(source, self.specs[d]) if isinstance(source, str)
                                       else ShardView(source.buffer, self.specs[d], name))
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(name)
        return view

    def forget(self, name: str) -> None:
        """Drop the views of a released in-memory shard, so that its buffer is freed now."""
        self._open.pop(name, None)

    def __getitem__(self, task: dict) -> dict:
        views = [self._view(p, d) for p, d in zip(task["sources"], task["path_dataset"].tolist())]
        if self.transform is None and self.collate is None:
            batch = self._columnar(views, task)
        else:
            batch = self._per_sample(views, task)
        batch["sample_id"] = torch.as_tensor(task["sample_id"], dtype=torch.int64)
        if task.get("valid") is not None:
            batch["_valid"] = torch.as_tensor(task["valid"], dtype=torch.bool)
        return batch

    def _columnar(self, views, task: dict) -> dict:
        """No transform: whole columns gathered with a few vectorised index operations per shard (fixed
        fields stacked; ragged fields concatenated with ``<name>_counts``), as ``default_collate`` would,
        without per-sample Python work. Ragged fields with identical offsets share one row index."""
        index = task["index"]
        groups = [None] if len(views) == 1 else [np.flatnonzero(task["path_idx"] == v) for v in range(len(views))]
        out, rows = {}, {}
        for f in self.fields:
            spec = views[0].fields[f]
            if not spec.ragged:
                out[f] = _gather_fixed(views, groups, index, f, spec)
                continue
            key = _offsets_key(views, f)
            if key not in rows:
                rows[key] = _ragged_rows(views, groups, index, key)
            counts, parts = rows[key]
            out[f] = _gather_rows(views, parts, f, spec, int(counts.sum()))
            out[f + "_counts"] = torch.from_numpy(counts)
        return out

    def _per_sample(self, views, task: dict) -> dict:
        examples = []
        datasets = task["path_dataset"].tolist()
        for v, idx, sid, epoch in zip(task["path_idx"].tolist(), task["index"].tolist(), task["sample_id"].tolist(),
                                      task["epoch"].tolist()):
            transform = self.transform
            if isinstance(transform, (list, tuple)):  # one per dataset of a mixture (own normalisation)
                transform = transform[datasets[v]]
            cached = self._examples.get((datasets[v], sid))
            if cached is not None:
                examples.append(cached)
                continue
            sample = views[v].sample(idx)
            if transform is not None:
                sample = transform(sample, np.random.default_rng([self.seed, epoch, sid]))
                if getattr(transform, "cacheable", False) and self._cache_room > 0:
                    self._cache_room -= _nbytes(sample)
                    self._examples[(datasets[v], sid)] = sample
            examples.append(sample)
        if self.collate is not None:
            return self.collate(examples)
        return default_collate(examples, ragged={f for f, spec in views[0].fields.items() if spec.ragged})

    def __len__(self) -> int:  # tasks come from the sampler; DataLoader never asks for a length here
        raise TypeError("ShardSampleDataset is indexed by task dicts from the StepLoader")


def _nbytes(example: dict) -> int:
    """Memory an example holds: its arrays' bytes plus a small charge for each entry."""
    return sum(getattr(value, "nbytes", 0) + 64 for value in example.values())


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for every (s, n), vectorised."""
    total = int(lengths.sum())
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)


_LOOP_COPY_BYTES = 16 << 10  # rows this large: one memcpy each beats a fancy gather plus a scatter


def _as_rows(a: np.ndarray) -> np.ndarray:
    """``a`` [n, ...] as a 1-D array of n opaque rows: numpy's take on one item per row is several times
    faster than fancy indexing of a 2-D array."""
    if a.ndim == 1:
        return a
    return a.reshape(len(a), -1).view(np.dtype((np.void, a.itemsize * int(np.prod(a.shape[1:])))))[:, 0]


def _as_matrix(a: np.ndarray) -> np.ndarray:
    """``a`` [n, ...] as [n, row bytes] of uint8 (large rows: numpy copies each with one memmove)."""
    return a.reshape(len(a), -1).view(np.uint8)


def _empty(shape: tuple, dtype) -> tuple[torch.Tensor, np.ndarray]:
    """An uninitialised batch column (tensor, numpy view). In a DataLoader worker process it is allocated in
    shared memory, so that handing it to the training process copies nothing (torch would otherwise copy
    every tensor a worker returns into a new shared-memory segment)."""
    if torch.utils.data.get_worker_info() is None:
        tensor = torch.from_numpy(np.empty(shape, dtype))
    else:
        tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).share_memory_()
    return tensor, tensor.numpy()


def _gather_fixed(views, groups, index: np.ndarray, f: str, spec: FieldSpec) -> torch.Tensor:
    """``[n, *shape]`` rows of a fixed field in batch order, each copied once from its mapped shard."""
    out, col = _empty((len(index), *spec.shape), spec.dtype)
    if len(views) == 1 and spec.row_bytes() >= _LOOP_COPY_BYTES:  # one memmove per row, 2x the void take
        np.take(_as_matrix(views[0].arrays[f]), index, axis=0, out=_as_matrix(col))
    elif len(views) == 1:
        np.take(_as_rows(views[0].arrays[f]), index, out=_as_rows(col))
    elif spec.row_bytes() >= _LOOP_COPY_BYTES:
        arrays = [v.arrays[f] for v in views]
        for v, g in enumerate(groups):
            for i, j in zip(g.tolist(), index[g].tolist()):
                col[i] = arrays[v][j]
    else:
        rows = _as_rows(col)
        for v, g in zip(views, groups):
            rows[g] = np.take(_as_rows(v.arrays[f]), index[g])
    return out


def _offsets_key(views, f: str) -> str:
    """The first ragged field whose offsets equal ``f``'s in every shard of the batch (often all share)."""
    for view in views:
        if not hasattr(view, "offsets_alias"):
            view.offsets_alias = _offsets_aliases(view)
    keys = {view.offsets_alias[f] for view in views}
    return keys.pop() if len(keys) == 1 else f


def _offsets_aliases(view) -> dict[str, str]:
    alias: dict[str, str] = {}
    ragged = [f for f, spec in view.fields.items() if spec.ragged]
    for f in ragged:
        off = view.arrays[f + ".offsets"]
        alias[f] = next((g for g in ragged[:ragged.index(f)] if alias[g] == g
                         and np.array_equal(view.arrays[g + ".offsets"], off)), f)
    return alias


def _ragged_rows(views, groups, index: np.ndarray, key: str) -> tuple[np.ndarray, list]:
    """Per-sample row counts and, per shard, (source rows, destination rows or None when in order)."""
    if len(views) == 1:
        off = views[0].arrays[key + ".offsets"]
        start = off[index]
        counts = (off[index + 1] - start).astype(np.int64)
        return counts, [(_ranges(start, counts), None)]
    counts, start = np.empty(len(index), np.int64), np.empty(len(index), np.int64)
    for v, g in zip(views, groups):
        off, i = v.arrays[key + ".offsets"], index[g]
        start[g] = off[i]
        counts[g] = off[i + 1] - start[g]
    dest = np.cumsum(counts) - counts
    return counts, [(_ranges(start[g], counts[g]), _ranges(dest[g], counts[g])) for g in groups]


def _gather_rows(views, parts: list, f: str, spec: FieldSpec, total: int) -> torch.Tensor:
    out, col = _empty((total, *spec.shape), spec.dtype)
    rows = _as_rows(col)
    for v, (src, dst) in zip(views, parts):
        if dst is None:
            np.take(_as_rows(v.arrays[f]), src, out=rows)
        else:
            rows[dst] = np.take(_as_rows(v.arrays[f]), src)
    return out


def default_collate(examples: list[dict], ragged: set[str] = frozenset()) -> dict:
    """Stack fixed-shape fields; concatenate ragged ones (and any of varying shape) with ``<name>_counts``."""
    out = {}
    for key in examples[0]:
        arrays = [np.asarray(e[key]) for e in examples]
        if key not in ragged and all(a.shape == arrays[0].shape for a in arrays):
            out[key] = torch.from_numpy(np.stack(arrays))
        else:
            out[key] = torch.from_numpy(np.concatenate(arrays))
            out[key + "_counts"] = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
    return out


def _identity(batch):
    return batch


class StepLoader:
    """Iterate: train yields one list of ``accum`` micro-batches per global step; val yields micro-batches."""

    def __init__(self, plan: Plan, cache: ShardCache, reader: ShardSampleDataset, *, split: str, rank: int,
                 world_size: int, micro_batch: int, start_step: int, prefetch: int, num_workers: int,
                 cache_limit: int | None) -> None:
        self.plan, self.cache, self.reader, self.split = plan, cache, reader, split
        self.rank, self.world_size, self.micro_batch = rank, world_size, micro_batch
        self.start_step, self.prefetch, self.num_workers, self.cache_limit = start_step, prefetch, num_workers, cache_limit
        self.accum = plan.global_batch // (micro_batch * world_size) if split == "train" else 1
        self._releases: dict[int, list[Visit]] = collections.defaultdict(list)
        self._ahead: collections.deque[Visit] = collections.deque()
        self._loader: DataLoader | None = None
        # shards of all datasets numbered globally: dataset d's shard k is _shard_base[d] + k
        self._shard_base = np.cumsum([0] + [len(src.shard_counts) for src in plan.sources[:-1]])
        self._global_starts = np.concatenate(plan.shard_starts)
        if split == "val":
            counts = [s.num_samples for s in plan.sources]
            self._val = val_assignment(counts, rank, world_size, micro_batch)
            self.num_batches = self._val[0].shape[0]
            """Micro-batches this rank yields in the val pass (equal on every rank; padding has _valid False)."""
            shards = np.empty_like(self._val[0])
            for d in range(len(plan.sources)):
                m = self._val[0] == d
                shards[m] = np.searchsorted(plan.shard_starts[d], self._val[1][m], side="right") - 1
            self._val_shards = shards
            self._visits: Iterator[Visit] = iter(block_visits(self._val[0], shards))
        else:
            self._visits = iter(RankSchedule(plan, rank, world_size, start_step))
        self._peeked: Visit | None = None

    # ---------------------------------------------------------------------------------------------- state
    def state(self, step: int) -> dict:
        """Resume state for a checkpoint taken after ``step`` global steps (pass it back with start_step)."""
        return resume_state(self.plan, step)

    # ---------------------------------------------------------------------------------------------- visits
    def _peek(self) -> Visit | None:
        if self._peeked is None:
            self._peeked = next(self._visits, None)
        return self._peeked

    def _acquire_next(self) -> Visit:
        v, self._peeked = self._peeked, None
        self.cache.acquire(v.dataset, v.shard)
        self._releases[v.last_step].append(v)
        return v

    def _prepare(self, step: int) -> None:
        """Acquire every visit starting by ``step`` and up to ``prefetch`` later ones (within the limit)."""
        while self._ahead and self._ahead[0].first_step <= step:
            self._ahead.popleft()
        while (v := self._peek()) is not None and v.first_step <= step:
            self._acquire_next()
        if self.cache_limit is not None and self.cache.held_bytes > self.cache_limit:
            raise ValueError(f"rank {self.rank}, step {step}: the shards in use need {self.cache.held_bytes} bytes, "
                             f"more than data.cache_limit_bytes={self.cache_limit}; raise the limit (at least "
                             "(canonical_streams / world size) x (shuffle_window + 2) shards) or lower shuffle_window")
        while len(self._ahead) < self.prefetch and (v := self._peek()) is not None:
            size = self.cache.shard_bytes(v.dataset, v.shard)
            if self.cache_limit is not None and self.cache.held_bytes + size > self.cache_limit:
                break
            self._ahead.append(self._acquire_next())

    def _release(self, step: int) -> None:
        for v in self._releases.pop(step, []):
            if self.cache.release(v.dataset, v.shard) and self.cache.in_memory:
                self.reader.forget(self.cache.local_path(v.dataset, v.shard))  # the reader is in this process

    # ---------------------------------------------------------------------------------------------- tasks
    def _task(self, dataset, local, shard, epoch, valid=None) -> dict:
        """One micro-batch task: the batch's shards (as global shard numbers, in order) and per sample its
        shard's slot in ``sources`` and its index inside that shard; no sorting, O(batch)."""
        keys = shard if len(self._shard_base) == 1 else self._shard_base[dataset] + shard
        seen = np.zeros(len(self._global_starts), bool)
        seen[keys] = True
        uniq = np.flatnonzero(seen)
        lookup = np.empty(len(seen), np.int64)
        lookup[uniq] = np.arange(len(uniq))
        path_dataset = np.searchsorted(self._shard_base, uniq, side="right") - 1
        sources = [self.cache.wait(d, k - self._shard_base[d]) for d, k in zip(path_dataset.tolist(), uniq.tolist())]
        return {"sources": sources, "path_idx": lookup[keys], "path_dataset": path_dataset, "dataset": dataset,
                "index": local - self._global_starts[keys], "sample_id": encode_ids(dataset, local),
                "epoch": epoch, "valid": valid}

    def _train_tasks(self) -> Iterator[dict]:
        step, block_steps = self.start_step, 16
        while True:
            block = self.plan.rank_block(self.rank, self.world_size, step, block_steps)
            for row in range(block_steps):
                self._prepare(step + row)
                for m in range(self.accum):
                    sl = slice(m * self.micro_batch, (m + 1) * self.micro_batch)
                    yield self._task(block["dataset"][row, sl], block["local"][row, sl], block["shard"][row, sl],
                                     block["epoch"][row, sl])
            step += block_steps

    def _val_tasks(self) -> Iterator[dict]:
        dataset, local, valid = self._val
        for i in range(self.num_batches):
            self._prepare(i)
            yield self._task(dataset[i], local[i], self._val_shards[i], np.zeros(len(local[i]), np.int64), valid[i])

    # ---------------------------------------------------------------------------------------------- iterate
    def _dataloader(self, tasks: Iterator[dict]) -> DataLoader:
        return DataLoader(self.reader, batch_size=None, sampler=tasks, num_workers=self.num_workers,
                          collate_fn=_identity, prefetch_factor=2 if self.num_workers else None)

    def __iter__(self):
        if self._loader is not None:
            raise RuntimeError("a StepLoader is iterated once; build a new one to restart")
        self._loader = self._dataloader(self._train_tasks() if self.split == "train" else self._val_tasks())
        self._batches = batches = iter(self._loader)
        if self.split == "val":
            for i, batch in enumerate(batches):
                yield batch
                self._release(i)
            return
        step = self.start_step
        while True:
            micro = [next(batches) for _ in range(self.accum)]
            yield micro
            self._release(step)
            step += 1

    def close(self) -> None:
        """Stop the DataLoader workers and the download threads; delete the cached shards."""
        iterator, self._batches = getattr(self, "_batches", None), None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.cache.close()

    def __enter__(self) -> "StepLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
