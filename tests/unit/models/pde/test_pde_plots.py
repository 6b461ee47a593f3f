"""Figures for MLflow and the error-against-lead-time curves behind them."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.format import FieldSpec
from models import load_family
from models.pde.config import PdeModelSpec
from models.pde.loss import lead_time_errors


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: more threads only spin
    yield
    torch.set_num_threads(before)


def _val_batch(spec, n=2, t_len=5):
    rng = np.random.default_rng(0)
    attrs = {"channel_mean": [0.1] * spec.in_channels, "channel_std": [2.0] * spec.in_channels, "split": "val"}
    fields = {"u": FieldSpec(dtype="float32", shape=(t_len, spec.in_channels, 16, 16)),
              "t": FieldSpec(dtype="float32", shape=(t_len,))}
    transform = load_family("pde").make_transform(spec, SimpleNamespace(attrs=attrs, fields=fields))
    samples = [{"u": rng.normal(size=(t_len, spec.in_channels, 16, 16)).astype(np.float32),
                "t": np.linspace(0, 1, t_len).astype(np.float32)} for _ in range(n)]
    return load_family("pde").collate([transform(s, rng) for s in samples])


def test_lead_time_errors_with_coefficient_channels():
    spec = PdeModelSpec(family="pde", arch="fno", in_channels=3, out_channels=2, resolution=16, time_stride=1)
    model = load_family("pde").build_model(spec)  # residual + zero last layer: it predicts persistence
    curves = lead_time_errors(model.eval(), _val_batch(spec), spec)
    assert curves["lead_time"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(curves["direct"], curves["persistence"], rtol=1e-5)
    np.testing.assert_allclose(curves["rollout"], curves["persistence"], rtol=1e-5)
    assert curves["persistence"][0] == 0.0 and curves["persistence"][-1] > 10.0


def test_plots_make_field_and_lead_time_figures():
    spec = PdeModelSpec(family="pde", arch="fno", in_channels=2, resolution=16)
    family = load_family("pde")
    model = family.build_model(spec)
    batch = _val_batch(spec, n=3)
    figures = family.plots(model, batch, model(batch), spec)
    assert set(figures) == {"fields", "error_vs_lead_time"}
    assert len(figures["fields"].axes) == 3 * 4 * 2  # 3 samples x 4 panels, each with a colour bar
    assert model.training  # restored after the curves ran in eval mode
    train_batch = {k: v for k, v in batch.items() if k not in ("traj", "traj_lead")}
    assert set(family.plots(model, train_batch, model(train_batch), spec)) == {"fields"}
