"""Format and writer: round trip, alignment, columnar ragged fields, atomic publish, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from data.format import ALIGN, FieldSpec, open_shard, read_manifest, read_meta
from data.writer import DatasetWriter

FIELDS = {"u": FieldSpec(dtype="float32", shape=(2, 4)), "pos": FieldSpec(dtype="float64", shape=(3,), ragged=True)}


def _sample(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {"u": np.full((2, 4), i, np.float32), "pos": rng.normal(size=(1 + i % 5, 3))}


def _write(url, n=50, shard_bytes=1000, **kw):
    with DatasetWriter(url, FIELDS, meta_fields={"n_atoms": "int64"}, attrs={"grid": [2, 4]},
                       shard_bytes=shard_bytes, progress=False, **kw) as w:
        for i in range(n):
            w.append(_sample(i), {"n_atoms": 1 + i % 5})
    return w.manifest


def test_round_trip_is_zero_copy_and_aligned(tmp_path):
    url = str(tmp_path / "ds")
    written = _write(url)
    m = read_manifest(url)
    assert m == written and m.num_samples == 50 and len(m.shards) > 3
    assert m.attrs == {"grid": [2, 4]}
    for shard in m.shards:
        view = open_shard(os.path.join(url, shard.key), m.fields)
        assert view.num_samples == shard.num_samples
        for name, arr in view.arrays.items():
            assert arr.ctypes.data % ALIGN == 0, name
            assert not arr.flags.owndata  # a view into the map, not a copy
        for j in range(shard.num_samples):
            got, want = view.sample(j), _sample(shard.first_sample_id + j)
            np.testing.assert_array_equal(got["u"], want["u"])
            np.testing.assert_array_equal(got["pos"], want["pos"])
    np.testing.assert_array_equal(read_meta(url, m, "n_atoms"), 1 + np.arange(50) % 5)


def test_ragged_field_is_columnar(tmp_path):
    url = str(tmp_path / "ds")
    m = _write(url, n=10, shard_bytes=10**6)
    view = open_shard(os.path.join(url, m.shards[0].key), m.fields)
    assert set(view.arrays) == {"u", "pos", "pos.offsets"}
    assert view.arrays["pos"].shape == (sum(1 + i % 5 for i in range(10)), 3)
    np.testing.assert_array_equal(np.diff(view.arrays["pos.offsets"]), 1 + np.arange(10) % 5)


def test_version_is_content_id(tmp_path):
    assert _write(str(tmp_path / "a")).version == _write(str(tmp_path / "b")).version
    assert _write(str(tmp_path / "c"), n=49).version != _write(str(tmp_path / "d")).version


def test_published_version_is_immutable(tmp_path):
    url = str(tmp_path / "ds")
    _write(url)
    with pytest.raises(ValueError, match="immutable"):
        DatasetWriter(url, FIELDS, progress=False)


def test_exception_inside_writer_publishes_nothing_and_rerun_works(tmp_path):
    url = str(tmp_path / "ds")
    with pytest.raises(RuntimeError):
        with DatasetWriter(url, FIELDS, shard_bytes=500, progress=False) as w:
            for i in range(40):
                w.append(_sample(i))
            raise RuntimeError("generator crashed")
    assert os.listdir(os.path.join(url, "shards"))  # shards were written ...
    with pytest.raises(ValueError, match="no finished dataset version"):
        read_manifest(url)  # ... but no readable version
    m = _write(url, n=5, shard_bytes=10**6)
    assert sorted(os.listdir(os.path.join(url, "shards"))) == [s.key.split("/")[1] for s in m.shards]


def test_killed_writer_leaves_no_readable_version(tmp_path):
    url = str(tmp_path / "ds")
    script = textwrap.dedent(f"""
        import time, numpy as np
        from data.writer import DatasetWriter
        w = DatasetWriter({url!r}, {{"x": {{"dtype": "float32", "shape": [256]}}}}, shard_bytes=4096,
                          progress=False)
        for i in range(10**6):
            w.append({{"x": np.zeros(256, np.float32)}})
            if i % 4 == 3:
                time.sleep(0.01)
        w.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    shard_dir = os.path.join(url, "shards")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(os.listdir(shard_dir) if os.path.isdir(shard_dir) else []) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(os.listdir(shard_dir)) >= 3
    with pytest.raises(ValueError, match="no finished dataset version"):
        read_manifest(url)
    m = _write(url, n=3)
    assert read_manifest(url) == m


@pytest.mark.parametrize("sample, match", [
    ({"u": np.zeros((2, 4), np.float32)}, "do not match the schema"),
    ({"u": np.zeros((2, 5), np.float32), "pos": np.zeros((1, 3))}, r"shape \(2, 5\), expected \(2, 4\)"),
    ({"u": np.zeros((2, 4), np.float32), "pos": np.zeros((1, 2))}, r"expected \[n, 3\]"),
    ({"u": np.zeros((2, 4), np.complex64), "pos": np.zeros((1, 3))}, "cannot be stored as float32"),
])
def test_append_rejects_bad_samples(tmp_path, sample, match):
    w = DatasetWriter(str(tmp_path / "ds"), FIELDS, progress=False)
    with pytest.raises(ValueError, match=match):
        w.append(sample)


def test_corrupt_manifest_is_named(tmp_path):
    url = str(tmp_path / "ds")
    _write(url)
    path = os.path.join(url, "manifest.json")
    doc = json.load(open(path))
    doc["num_samples"] += 1
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(ValueError, match="manifest.json.*corrupt"):
        read_manifest(url)
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="manifest.json"):
        read_manifest(url)


def test_field_spec_rejects_object_dtype():
    with pytest.raises(ValueError, match="cannot be stored raw"):
        FieldSpec(dtype="object")
    with pytest.raises(ValueError, match="unknown numpy dtype"):
        FieldSpec(dtype="float33")


def test_scalar_field_keeps_its_shape(tmp_path):
    url = str(tmp_path / "ds")
    with DatasetWriter(url, {"energy": FieldSpec(dtype="float32")}, progress=False) as w:
        for i in range(4):
            w.append({"energy": np.float64(i)})
    m = read_manifest(url)
    view = open_shard(os.path.join(url, m.shards[0].key), m.fields)
    assert view.arrays["energy"].shape == (4,) and view.sample(2)["energy"] == 2.0
