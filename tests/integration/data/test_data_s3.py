"""The data layer against a real S3 server (SeaweedFS on loopback): streams, resume, corruption, errors."""

from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np
import pytest

from data.format import FieldSpec, read_manifest
from data.loader import build_loader
from data.spec import DataSpec, StorageSpec
from data.storage import filesystem, storage_options
from data.writer import DatasetWriter
from orchestrator.cli import main as cli_main

pytestmark = pytest.mark.integration
FIELDS = {"u": FieldSpec(dtype="float32", shape=(4, 4)), "z": FieldSpec(dtype="int32", shape=(), ragged=True)}
B, C = 16, 8


def _write(url: str, n: int = 150, **kw) -> None:
    with DatasetWriter(url, FIELDS, meta_fields={"n_atoms": "int64"}, shard_bytes=1200, progress=False,
                       storage_options=storage_options(url), **kw) as w:
        for i in range(n):
            w.append({"u": np.full((4, 4), i, np.float32), "z": np.arange(1 + i % 3, dtype=np.int32)},
                     {"n_atoms": 1 + i % 3})


@pytest.fixture(scope="module")
def dataset(s3) -> str:
    url = f"s3://{s3[1]}/{uuid.uuid4().hex[:8]}/ds-v1"
    _write(url)
    return url


def _spec(url: str, shard_cache: str = "auto") -> DataSpec:
    return DataSpec(train=[{"url": url}], canonical_streams=C, shuffle_window=2, prefetch=3, num_workers=0,
                    shard_cache=shard_cache)


def _stream(spec: DataSpec, world: int, start: int, steps: int, **kw) -> str:
    """sha256 of the sample-id stream of ``steps`` global steps, all ranks' micro-batches concatenated."""
    loaders = [build_loader(spec, spec.train, split="train", rank=r, world_size=world, global_batch=B,
                            micro_batch=2, seed=11, start_step=start, **kw) for r in range(world)]
    its, h = [iter(ld) for ld in loaders], hashlib.sha256()
    try:
        for _ in range(steps):
            for it in its:
                for mb in next(it):
                    assert (mb["u"][:, 0, 0].long() == mb["sample_id"]).all()
                    h.update(mb["sample_id"].numpy().tobytes())
    finally:
        for ld in loaders:
            ld.close()
    return h.hexdigest()


@pytest.mark.parametrize("client, shard_cache", [("fsspec", "memory"), ("obstore", "memory"), ("obstore", "disk")])
def test_identical_global_batches_for_w_1_2_4_8(dataset, client, shard_cache):
    spec, storage = _spec(dataset, shard_cache), StorageSpec(client=client)
    ref = _stream(spec, 1, 0, 24, storage=storage)
    assert [_stream(spec, w, 0, 24, storage=storage) for w in (2, 4, 8)] == [ref] * 3


def test_killed_at_random_step_and_resized_resume_same_stream(dataset):
    spec = _spec(dataset)
    ref = _stream(spec, 2, 0, 20)
    cut = int(np.random.default_rng().integers(1, 19))
    probe = build_loader(spec, spec.train, split="train", rank=0, world_size=2, global_batch=B, micro_batch=2,
                         seed=11)
    state = probe.state(cut)
    probe.close()
    loaders_hash = hashlib.sha256()
    for world, start, steps in ((2, 0, cut), (4, cut, 20 - cut)):
        loaders = [build_loader(spec, spec.train, split="train", rank=r, world_size=world, global_batch=B,
                                micro_batch=2, seed=11, start_step=start,
                                resume_state=state if start else None) for r in range(world)]
        its = [iter(ld) for ld in loaders]
        for _ in range(steps):
            for it in its:
                for mb in next(it):
                    loaders_hash.update(mb["sample_id"].numpy().tobytes())
        for ld in loaders:
            ld.close()
    assert loaders_hash.hexdigest() == ref, f"cut at step {cut}"


def test_flipped_byte_is_detected_and_named(s3, dataset, capsys):
    url = f"s3://{s3[1]}/{uuid.uuid4().hex[:8]}/ds-bad"
    _write(url)
    fs, root = filesystem(url, storage_options(url))
    key = read_manifest(url, storage_options(url)).shards[2].key
    raw = bytearray(fs.cat_file(f"{root}/{key}"))
    raw[100] ^= 0x01
    fs.pipe_file(f"{root}/{key}", bytes(raw))
    for shard_cache in ("memory", "disk"):
        with pytest.raises(ValueError, match=rf"{key}: checksum .* also after a re-fetch"):
            _stream(_spec(url, shard_cache=shard_cache), 1, 0, 30)
    assert cli_main(["data", "verify", url]) == 1
    assert f"BAD  {url}/{key}: checksum" in capsys.readouterr().out


def test_interrupted_writer_leaves_no_readable_version(s3):
    url = f"s3://{s3[1]}/{uuid.uuid4().hex[:8]}/ds-partial"
    with pytest.raises(KeyboardInterrupt):
        with DatasetWriter(url, FIELDS, meta_fields=["n_atoms"], shard_bytes=1200, progress=False,
                           storage_options=storage_options(url)) as w:
            for i in range(100):
                w.append({"u": np.zeros((4, 4), np.float32), "z": np.zeros(2, np.int32)}, {"n_atoms": 2})
            raise KeyboardInterrupt
    fs, root = filesystem(url, storage_options(url))
    assert fs.ls(f"{root}/shards")
    with pytest.raises(ValueError, match="manifest.json: object not found"):
        read_manifest(url, storage_options(url))
    _write(url, n=20)  # a rerun publishes; leftovers from the first attempt are removed
    manifest = read_manifest(url, storage_options(url))
    assert len(fs.ls(f"{root}/shards", refresh=True)) == len(manifest.shards)


def test_missing_shard_and_schema_mismatch_are_named(s3, dataset):
    url = f"s3://{s3[1]}/{uuid.uuid4().hex[:8]}/ds-missing"
    _write(url)
    fs, root = filesystem(url, storage_options(url))
    fs.rm(f"{root}/shards/000001.shard")
    with pytest.raises(ValueError, match=r"shards/000001.shard: object not found"):
        _stream(_spec(url), 1, 0, 30)
    other = f"s3://{s3[1]}/{uuid.uuid4().hex[:8]}/ds-other"
    with DatasetWriter(other, {"u": FieldSpec(dtype="float64", shape=(4, 4))}, progress=False,
                       storage_options=storage_options(other)) as w:
        for _ in range(10):
            w.append({"u": np.zeros((4, 4))})
    spec = DataSpec(train=[{"url": dataset}, {"url": other}])
    with pytest.raises(ValueError, match="differs from"):
        build_loader(spec, spec.train, split="train", rank=0, world_size=1, global_batch=B, micro_batch=2, seed=0)


def test_unreachable_endpoint_is_named(monkeypatch):
    from orchestrator.services import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match=r"cannot reach the object store at http://127.0.0.1:\d+"):
        read_manifest("s3://sciscale-data/any/ds", storage_options("s3://sciscale-data/any/ds"))


def test_wrong_credentials_are_named(tmp_path, monkeypatch):
    from orchestrator import services

    config = tmp_path / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "admin", "actions": ["Admin", "Read", "Write", "List"],
                                                  "credentials": [{"accessKey": "good", "secretKey": "secret"}]}]}))
    ports = {k: services.free_port(avoid_offset=10000) for k in ("master", "volume", "filer", "s3")}
    argv = [services._binary("weed"), "server", f"-dir={tmp_path}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.config={config}", "-volume.max=0", "-s3.port.iceberg=0",
            "-s3.port.lance=0"]
    proc = services._spawn("weed-auth", argv, tmp_path)
    try:
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        services.wait_http(endpoint + "/", proc, "SeaweedFS S3 (auth)", tmp_path / "weed-auth.log")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
        with pytest.raises(ValueError, match="access denied.*AWS_ACCESS_KEY_ID"):
            read_manifest("s3://sciscale-data/ds", storage_options("s3://sciscale-data/ds"))
    finally:
        services.stop_group(proc.pid)


def test_cli_inspect_verify_bench(dataset, capsys):
    assert cli_main(["data", "inspect", dataset, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_samples"] == 150 and info["fields"]["z"]["ragged"] and info["meta_fields"] == {"n_atoms": "int64"}
    assert cli_main(["data", "verify", dataset]) == 0
    assert "verified" in capsys.readouterr().out
    assert cli_main(["data", "bench", dataset, "--steps", "5", "--global-batch", "16", "--raw"]) == 0
    out = capsys.readouterr().out
    assert "samples/s" in out and "raw GETs" in out
    assert cli_main(["data", "inspect", dataset + "-nope"]) == 2
