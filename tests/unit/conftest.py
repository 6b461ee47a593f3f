"""Shared unit-test helpers: a few optimiser steps of a model family on a converted dataset."""

from __future__ import annotations

import pytest


def few_training_steps(family_name: str, spec, url: str, *, steps: int = 3, batch: int = 4,
                       lr: float = 1e-3) -> list[float]:
    """Train ``steps`` AdamW steps of the family's model on the dataset at ``url`` through the real path:
    ``load_family``, ``prepare_model``, ``build_loader`` with the family's transform and collate, the family
    loss. Asserts that every loss is finite and that every step has finite, non-zero gradients; returns the
    losses."""
    import torch

    from data.format import read_manifest
    from data.loader import build_loader
    from data.spec import DataSpec
    from models import load_family

    family = load_family(family_name)
    manifest = read_manifest(url)
    torch.manual_seed(0)
    model = family.build_model(spec)
    if family.prepare_model is not None:
        family.prepare_model(model, spec, manifest)
    data = DataSpec(train=[{"url": url}], canonical_streams=1, shuffle_window=1, prefetch=1, num_workers=0)
    loader = build_loader(data, data.train, split="train", rank=0, world_size=1, global_batch=batch,
                          micro_batch=batch, seed=0, transform=family.make_transform(spec, manifest),
                          collate=family.collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    try:
        for _, micro_batches in zip(range(steps), loader):
            losses.append(_step(family, model, optimizer, micro_batches[0], spec))
    finally:
        loader.close()
    assert len(losses) == steps
    return losses


def _step(family, model, optimizer, batch: dict, spec) -> float:
    import torch

    optimizer.zero_grad()
    loss = family.loss(model(batch), batch, spec)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss), f"loss {float(loss)} is not finite"
    assert grads and all(torch.isfinite(g).all() for g in grads), "non-finite gradients"
    assert any(g.abs().sum() > 0 for g in grads), "all gradients are zero"
    optimizer.step()
    return float(loss)


@pytest.fixture
def train_steps():
    """:func:`few_training_steps`, as a fixture so that tests in every subfolder can use it."""
    return few_training_steps
