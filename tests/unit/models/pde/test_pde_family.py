"""PDE family contract: spec validation, transform (all-to-all pairs), FNO forward, loss and metrics."""

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.format import FieldSpec
from models import load_family
from models.pde.config import PdeModelSpec
from models.pde.loss import relative_l1


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine is shared: two intra-op threads spin against other processes and run 50x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(**kw):
    return PdeModelSpec(**{"family": "pde", "arch": "fno", "in_channels": 2, "resolution": 16, **kw})


def _manifest(channels=2, split="train"):
    fields = {"u": FieldSpec(dtype="float32", shape=(5, channels, 16, 16)), "t": FieldSpec(dtype="float32", shape=(5,))}
    return SimpleNamespace(attrs={"channel_mean": [0.5] * channels, "channel_std": [2.0] * channels,
                                  "split": split}, fields=fields)


def _sample(t_len=5, channels=2, n=16):
    u = np.arange(t_len, dtype=np.float32)[:, None, None, None] * np.ones((t_len, channels, n, n), np.float32)
    return {"u": u, "t": np.linspace(0, 2.0, t_len).astype(np.float32)}


def test_spec_rejects_residual_with_channel_change_and_bad_groups():
    with pytest.raises(ValueError, match="residual"):
        _spec(out_channels=3)
    with pytest.raises(ValueError, match="channel_groups"):
        _spec(channel_groups=[1, 2])
    with pytest.raises(ValueError, match="not defined for model.arch 'fno'"):
        _spec(size="XL")
    with pytest.raises(ValueError, match="multiple of 32"):
        _spec(arch="scot", resolution=48)
    assert _spec(out_channels=3, residual=False).groups == [1, 1, 1]


def test_transform_draws_every_pair_i_le_j_with_normalised_lead_time():
    spec = _spec(time_stride=2)  # 5 stored snapshots -> kept 0, 2, 4 -> 6 pairs
    transform = pickle.loads(pickle.dumps(load_family("pde").make_transform(spec, _manifest())))
    seen = set()
    for seed in range(200):
        ex = transform(_sample(), np.random.default_rng(seed))
        i, j = ex["x"][0, 0, 0] * 2.0 + 0.5, ex["y"][0, 0, 0] * 2.0 + 0.5  # undo normalisation
        assert i <= j and ex["lead_time"] == pytest.approx((j - i) / 4.0)
        seen.add((int(i), int(j)))
    assert seen == {(0, 0), (0, 2), (0, 4), (2, 2), (2, 4), (4, 4)}


def test_validation_examples_use_the_largest_lead_time_and_carry_the_trajectory():
    transform = load_family("pde").make_transform(_spec(), _manifest(split="val"))
    ex = transform(_sample(), np.random.default_rng(0))
    assert ex["lead_time"] == 1.0 and ex["traj"].shape == (3, 2, 16, 16)
    np.testing.assert_allclose(ex["traj_lead"], [0.0, 0.5, 1.0])


def test_transform_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="model.in_channels=2 does not fit the data: the dataset has 3 channels"):
        load_family("pde").make_transform(_spec(), _manifest(channels=3))


def test_fno_trains_and_starts_at_persistence():
    family, spec = load_family("pde"), _spec()
    torch.manual_seed(0)
    model = family.build_model(spec)
    batch = family.example_batch(spec, 4)
    out = model(batch)
    torch.testing.assert_close(out, batch["x"])  # residual with a zero-initialised last layer
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = family.loss(model(batch), batch, spec)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # DeepSpeed rejects complex params


def test_metrics_per_example_and_persistence():
    family, spec = load_family("pde"), _spec()
    batch = family.example_batch(spec, 3)
    metrics = family.metrics(batch["x"], batch, spec)
    assert set(metrics) >= {"rel_l1", "persistence_rel_l1"} and metrics["rel_l1"].shape == (3,)
    torch.testing.assert_close(metrics["rel_l1"], metrics["persistence_rel_l1"])
    assert float(family.metrics(batch["y"], batch, spec)["rel_l1"].max()) == 0.0


def test_relative_l1_groups():
    target = torch.ones(1, 3, 2, 2)
    pred = target.clone()
    pred[:, 0] = 2.0  # 100% error in channel 0 only
    assert relative_l1(pred, target, [1, 2]).item() == pytest.approx(0.5)
    assert relative_l1(pred, target, [3]).item() == pytest.approx(1 / 3)


def test_relative_l1_floors_an_identically_zero_target():
    target = torch.zeros(2, 1, 4, 4)
    target[1] = 3.0
    pred = target + 0.5
    err = relative_l1(pred, target, [1], scale=torch.tensor([[2.0], [2.0]]))
    # zero target: 0.5 / (1% of scale 2) = 25; the non-zero target is unaffected: 0.5 / 3
    torch.testing.assert_close(err, torch.tensor([25.0, 0.5 / 3]))


def test_fno_builds_on_meta_device():
    with torch.device("meta"):
        model = load_family("pde").build_model(_spec(size="T"))
    assert all(p.is_meta for p in model.parameters())
