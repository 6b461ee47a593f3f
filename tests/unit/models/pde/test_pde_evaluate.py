"""The PDE eval suite: Poseidon's median relative L1 against a numpy hand computation, direct and rollout
leads through ``evaluate`` with a model whose predictions are known, and the whole suite on generated
Navier-Stokes data with a fresh debug FNO."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.family import EvalOptions
from models.pde.config import PdeModelSpec
from models.pde.evaluate import evaluate, group_errors, poseidon_median


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hand_poseidon(pred, target, groups):
    """scOT/metrics.py relative_lp_error (p=1, %) per group, median over samples, mean over groups."""
    bounds = np.cumsum([0] + groups)
    per_group = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        err = np.abs(pred[:, a:b] - target[:, a:b]).reshape(len(pred), -1).sum(1)
        per_group.append(100 * err / np.abs(target[:, a:b]).reshape(len(pred), -1).sum(1))
    return np.mean([np.median(e) for e in per_group]), np.stack(per_group, 1)


def test_median_relative_l1_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    target = rng.uniform(1.0, 2.0, size=(5, 3, 2, 2)) * rng.choice([-1, 1], size=(5, 3, 2, 2))
    pred = target + rng.normal(scale=0.3, size=target.shape)
    expected, per = _hand_poseidon(pred, target, [1, 2])
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    errors = group_errors(t(pred), t(target), [1, 2], torch.ones(5, 3, dtype=torch.float64))
    np.testing.assert_allclose(errors, per, rtol=1e-10)
    assert poseidon_median(errors) == pytest.approx(expected, rel=1e-10)
    # the median of samples, not the mean, and per group before the mean over groups
    assert poseidon_median(errors) != pytest.approx(float(per.mean()), rel=1e-3)


class _Scale(torch.nn.Module):
    """x * (1 + lead_time): direct and rollout predictions differ, and both are known in closed form."""

    def forward(self, batch):
        return batch["x"][:, :1] * (1 + batch["lead_time"].reshape(-1, 1, 1, 1))


def _trajectories(rng, n=3, k=3):
    traj = rng.uniform(0.5, 1.5, size=(n, k, 2, 2, 2))  # two channels: the output and a coefficient field
    return traj, np.tile(np.linspace(0.0, 1.0, k), (n, 1))


def _batches(traj, leads, mean, std):
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    out = []
    for rows, valid in (([0, 1], [True, True]), ([2, 2], [True, False])):
        out.append({"x": t(traj[rows, 0]), "y": t(traj[rows, -1, :1]), "lead_time": t(leads[rows, -1]),
                    "mean": t(np.tile(mean, (2, 1))), "std": t(np.tile(std, (2, 1))), "traj": t(traj[rows]),
                    "traj_lead": t(leads[rows]), "sample_id": torch.tensor(rows), "_valid": torch.tensor(valid)})
    return out


def test_direct_rollout_and_persistence_errors_match_a_hand_computation():
    rng = np.random.default_rng(1)
    traj, leads = _trajectories(rng)
    mean, std = np.array([0.2, 0.0]), np.array([3.0, 1.0])
    spec = PdeModelSpec(family="pde", arch="fno", in_channels=2, out_channels=1, resolution=8)
    manifest = SimpleNamespace(attrs={"channel_names": ["w", "c"]})
    report = evaluate(_Scale(), _batches(traj, leads, mean, std), spec, manifest, EvalOptions(plots=False))
    phys = lambda a: a * std[0] + mean[0]  # noqa: E731
    x0 = traj[:, 0, :1]
    for k in (1, 2):
        target = phys(traj[:, k, :1])
        direct, _ = _hand_poseidon(phys(x0 * (1 + leads[0, k])), target, [1])
        rollout, _ = _hand_poseidon(phys(x0 * (1 + leads[0, 1]) ** k), target, [1])
        persistence, _ = _hand_poseidon(phys(x0), target, [1])
        assert report.scores[f"rel_l1_median/lead_{k}"] == pytest.approx(direct, rel=1e-5)
        assert report.scores[f"rel_l1_median_rollout/step_{k}"] == pytest.approx(rollout, rel=1e-5)
        assert report.scores[f"rel_l1_median_persistence/lead_{k}"] == pytest.approx(persistence, rel=1e-5)
    assert report.samples == 3
    assert report.scores["rel_l1_median"] == report.scores["rel_l1_median/lead_2"]
    assert set(report.scores) >= {"rel_l1_median_by_group/w", "rel_l1_mean", "rel_l1_median_persistence"}
    assert [r["lead"] for r in report.table] == [1, 2] and report.table[1]["lead_time"] == pytest.approx(1.0)


def test_max_samples_counts_real_samples_only():
    rng = np.random.default_rng(2)
    traj, leads = _trajectories(rng)
    spec = PdeModelSpec(family="pde", arch="fno", in_channels=2, out_channels=1, resolution=8)
    batches = _batches(traj, leads, np.zeros(2), np.ones(2))
    report = evaluate(_Scale(), batches, spec, SimpleNamespace(attrs={}), EvalOptions(max_samples=2, plots=False))
    direct, _ = _hand_poseidon(traj[:2, 0, :1] * 2, traj[:2, 2, :1], [1])
    assert report.samples == 2 and report.scores["rel_l1_median"] == pytest.approx(direct, rel=1e-5)
    assert "rel_l1_median_by_group/group_0" in report.scores


def test_suite_end_to_end_on_generated_navier_stokes(tmp_path):
    from data.generators.navier_stokes import generate
    from data.loader import build_loader
    from data.spec import DataSpec
    from models import load_family

    manifests = generate(str(tmp_path / "ns"), n_train=2, n_val=3, resolution=16, snapshots=5, progress=False)
    url, manifest = str(tmp_path / "ns" / "val"), manifests["val"]
    spec = PdeModelSpec(family="pde", arch="fno", in_channels=2, resolution=16, time_stride=1)
    family = load_family("pde")
    torch.manual_seed(0)
    model = family.build_model(spec).eval()
    data = DataSpec(train=[{"url": url}], val=[{"url": url}], prefetch=1, num_workers=0)
    loader = build_loader(data, data.val, split="val", rank=0, world_size=1, global_batch=2, micro_batch=2, seed=0,
                          transform=family.eval_suite.make_transform(spec, manifest), collate=family.collate)
    try:
        report = family.eval_suite.evaluate(model, loader, spec, manifest, EvalOptions())
    finally:
        loader.close()
    assert report.samples == 3
    leads = range(1, 5)
    expected = ({f"rel_l1_median/lead_{k}" for k in leads} | {f"rel_l1_mean/lead_{k}" for k in leads}
                | {f"rel_l1_median_rollout/step_{k}" for k in leads}
                | {f"rel_l1_median_persistence/lead_{k}" for k in leads}
                | {"rel_l1_median", "rel_l1_mean", "rel_l1_median_persistence", "rel_l1_median_by_group/u",
                   "rel_l1_median_by_group/v"})
    assert set(report.scores) == expected
    assert all(np.isfinite(v) for v in report.scores.values())
    assert len(report.table) == 4 and set(report.table[0]) == set(report.columns)
    assert set(report.figures) == {"error_vs_lead"}
    # one rollout step is the direct prediction at the smallest lead
    assert report.scores["rel_l1_median_rollout/step_1"] == pytest.approx(report.scores["rel_l1_median/lead_1"])
