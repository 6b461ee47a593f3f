"""DeepSpeed checkpoints plus trainer state, loadable at any world size.

A checkpoint directory holds ``stepN/`` (DeepSpeed's files), ``latest``, ``stepN/rng_rank{r}.pt`` and
``trainer_state.json`` (step, world size, ZeRO stage, the data loader's resume state).

Commit protocol: each rank saves to a local directory, uploads its files, and writes ``commit-rank{r}.json``
(every file's size and xxh3-128 checksum) last. Ray Train registers the checkpoint only after every rank has
reported its upload, so a crash mid-save leaves the previous checkpoint the latest; on load every commit file
must be present and every checksum must match, or the load fails naming the file.
When the world size differs from the one that saved (elastic scaling), ZeRO-partitioned state is converted
with DeepSpeed's universal checkpointing (``ds_to_universal``, through trainers/universal.py so Muon's state
converts too) and loaded with ``load_universal``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import xxhash

from trainers import universal

STATE_FILE = "trainer_state.json"
COMMIT_PREFIX = "commit-rank"
METRICS_FILE = "metrics_unsent.jsonl"  # rank 0: metric points of steps <= the checkpoint's not yet in MLflow
_CHUNK = 8 << 20


def file_checksum(path: str) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def commit_record(directory: str, rank: int, step: int) -> tuple[str, dict]:
    """(file name, content) of this rank's commit file: the size and checksum of every file it saved."""
    files = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, directory)
            if not rel.startswith(COMMIT_PREFIX):
                files[rel] = {"bytes": os.path.getsize(path), "xxh3_128": file_checksum(path)}
    return f"{COMMIT_PREFIX}{rank}.json", {"rank": rank, "step": step, "files": files}


def commit_names(world: int) -> set[str]:
    """The commit files a checkpoint saved by ``world`` ranks has once it is complete."""
    return {f"{COMMIT_PREFIX}{r}.json" for r in range(world)}


def verify(directory: str) -> None:
    """Every rank's commit file is there and every file it lists matches its size and checksum."""
    state = read_state(directory)
    expected = commit_names(int(state["world_size"]))
    missing = sorted(expected - set(os.listdir(directory)))
    if missing:
        raise ValueError(f"checkpoint {directory} (step {state['step']}) is not committed: {', '.join(missing)} "
                         "missing. Hint: it was cut off mid-upload; resume from an earlier checkpoint")
    for name in sorted(expected):
        with open(os.path.join(directory, name)) as f:
            record = json.load(f)
        for rel, want in record["files"].items():
            path = os.path.join(directory, rel)
            if not os.path.exists(path):
                raise ValueError(f"checkpoint file {path} listed in {name} is missing")
            if os.path.getsize(path) != want["bytes"] or file_checksum(path) != want["xxh3_128"]:
                raise ValueError(f"checkpoint file {path} does not match its checksum in {name}: the checkpoint "
                                 "is damaged. Hint: delete this checkpoint directory to resume from the one before")


def save(engine, directory: str, step: int, rank: int, world: int, zero_stage: int, data_state: dict | None) -> None:
    tag = f"step{step}"
    state = {"step": step, "world_size": world, "zero_stage": zero_stage, "data": data_state}
    engine.save_checkpoint(directory, tag=tag, client_state={"step": step, "data": data_state})
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
               os.path.join(directory, tag, f"rng_rank{rank}.pt"))
    if rank == 0:
        with open(os.path.join(directory, STATE_FILE), "w") as f:
            json.dump(state, f)
    name, record = commit_record(directory, rank, step)
    with open(os.path.join(directory, name), "w") as f:  # last; uploads copy it last too
        json.dump(record, f)


def read_state(directory: str) -> dict:
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {directory} has no {STATE_FILE}; it was not written by sciscale")
    with open(path) as f:
        return json.load(f)


def load(engine, directory: str, rank: int, world: int) -> dict:
    """Load model, optimizer, schedule and RNG; returns the trainer state (step, data, world_size)."""
    verify(directory)
    state = read_state(directory)
    tag = f"step{state['step']}"
    if state["world_size"] != world and state["zero_stage"] > 0:
        with tempfile.TemporaryDirectory(prefix="sciscale-universal-") as tmp:
            _to_universal(os.path.join(directory, tag), os.path.join(tmp, tag))
            engine._config.load_universal_checkpoint = True  # set in config only at initialize otherwise
            try:
                engine.load_checkpoint(tmp, tag=tag)
                universal.restore_muon_momentum(engine, os.path.join(tmp, tag))
            finally:
                engine._config.load_universal_checkpoint = False
    else:
        engine.load_checkpoint(directory, tag=tag)
    rng_file = os.path.join(directory, tag, f"rng_rank{rank}.pt")
    if state["world_size"] == world and os.path.exists(rng_file):  # per-rank RNG only means something at equal W
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
    return state


def _to_universal(source: str, target: str) -> None:
    """DeepSpeed's converter, able to read Muon's state (trainers/universal.py), in a subprocess (it spawns its
    own worker pool)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "trainers.universal", "--input_folder", source,
           "--output_folder", target, "--num_extract_workers", "1", "--num_merge_workers", "1",
           "--inject_missing_state"]  # our models carry no universal_checkpoint_info of their own
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env={
        **os.environ, "PYTHONPATH": path, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")})
    if proc.returncode != 0:
        raise RuntimeError(f"converting {source} to a universal checkpoint failed:\n{proc.stderr[-3000:]}")
