"""Overrides, flattening for MLflow params, redaction, the plan's memory arithmetic."""

from __future__ import annotations

import pytest

from orchestrator.plan import zero_memory
from orchestrator.specload import SpecError, apply_overrides, flatten, redact


def test_override_nested_and_list_items():
    raw = {"train": {"max_steps": 1}, "data": {"train": [{"url": "a"}]}}
    apply_overrides(raw, ["train.max_steps=50", "data.train.0.url=s3://b/c", "optim.lr=1e-4", "tracking.tags.team=x"])
    assert raw["train"]["max_steps"] == 50 and raw["data"]["train"][0]["url"] == "s3://b/c"
    assert raw["optim"]["lr"] == pytest.approx(1e-4) and raw["tracking"]["tags"]["team"] == "x"


def test_override_list_items_as_users_write_them():
    raw = {"data": {"train": [{"url": "a"}, {"url": "b"}]}}
    apply_overrides(raw, ["data.train[1].url=s3://b/second", "data.train[0].weight=2"])
    assert raw["data"]["train"] == [{"url": "a", "weight": 2}, {"url": "s3://b/second"}]
    with pytest.raises(SpecError, match="out of range"):
        apply_overrides(raw, ["data.train[2].url=x"])


def test_override_bad_index():
    with pytest.raises(SpecError, match="out of range"):
        apply_overrides({"data": {"train": [{"url": "a"}]}}, ["data.train.3.url=x"])


def test_flatten_and_redact():
    flat = flatten({"a": {"b": 1, "secret_key": "s3cr3t"}, "l": [{"u": "x"}, {"u": "y"}], "t": [1, 2]})
    assert flat == {"a.b": "1", "a.secret_key": "***", "l.0.u": "x", "l.1.u": "y", "t": "[1, 2]"}
    assert redact({"token": "abc", "nested": {"password": "p", "ok": 1}}) == {"token": "***", "nested": {"password": "***", "ok": 1}}


def test_zero_memory_sharding():
    p = 1_000_000
    assert zero_memory(p, p, 0, 4) == {"params": 4e6, "grads": 4e6, "optimizer": 8e6}
    assert zero_memory(p, p, 1, 4) == {"params": 4e6, "grads": 4e6, "optimizer": 2e6}
    assert zero_memory(p, p, 2, 4) == {"params": 4e6, "grads": 1e6, "optimizer": 2e6}
    assert zero_memory(p, p, 3, 4) == {"params": 1e6, "grads": 1e6, "optimizer": 2e6}
