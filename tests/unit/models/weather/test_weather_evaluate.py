"""The weather eval suite: WeatherBench2 RMSE and ACC by rollout against a numpy hand computation, and the
whole suite on a converted WeatherBench2-layout store with a fresh debug ClimaX."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.family import EvalOptions
from models.weather.config import WeatherModelSpec
from models.weather.evaluate import eval_leads, evaluate

VARS = ["geopotential_500", "temperature_500"]  # a headline variable and another one
WEIGHTS = np.array([0.5, 1.5])  # 2 latitudes, mean 1, so that the area weighting matters
STD = np.array([2.0, 0.5])


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Drift(torch.nn.Module):
    """Predicts the last input plus a fixed field: after k rollout steps, x0 + k * step."""

    def __init__(self, step: np.ndarray):
        super().__init__()
        self.step = torch.as_tensor(step, dtype=torch.float32)

    def forward(self, batch):
        return batch["inputs"][:, -1] + self.step


def _tiny(seed=0):
    """3 held-out times on a 2x4 grid, 2 variables, targets at leads 6, 12, 24 h (normalised units)."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(3, 2, 2, 4))
    truth = rng.normal(size=(3, 3, 2, 2, 4))
    clim = rng.normal(size=(3, 3, 2, 2, 4)) * 0.3
    step = rng.normal(size=(2, 2, 4)) * 0.2
    return x0, truth, clim, step


def _batches(x0, truth, clim):
    """Two micro-batches of 2: times (0, 1) and (2, padding); the padding sample holds garbage."""
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    out = []
    for rows, valid in (([0, 1], [True, True]), ([2, 0], [True, False])):
        inputs, targets, cl = x0[rows][:, None].copy(), truth[rows].copy(), clim[rows].copy()
        if not valid[1]:
            inputs[1], targets[1] = 1e3, -1e3
        out.append({"inputs": t(inputs), "targets": t(targets), "clim": t(cl),
                    "lead_hours": torch.full((2,), 6.0), "std": t(np.tile(STD, (2, 1))),
                    "lat_weights": t(np.tile(WEIGHTS, (2, 1))), "time": torch.zeros(2, dtype=torch.int64),
                    "sample_id": torch.tensor(rows), "_valid": torch.tensor(valid)})
    return out


def _hand_rmse_acc(pred, truth, clim):
    """WeatherBench2 by hand: per time, the area-weighted spatial MSE (weights over latitude, mean over the
    grid) and the anomaly correlation; RMSE = sqrt(time mean of MSE) in physical units, ACC = time mean."""
    w = WEIGHTS[:, None]
    mse = (w * (pred - truth) ** 2).mean(axis=(-2, -1)) * STD ** 2          # [T, V]
    fa, oa = pred - clim, truth - clim
    total = lambda a: a.sum(axis=(-2, -1))  # noqa: E731
    acc = total(w * fa * oa) / np.sqrt(total(w * fa ** 2) * total(w * oa ** 2))
    return np.sqrt(mse.mean(0)), acc.mean(0)


def _spec():
    return WeatherModelSpec(variables=VARS, grid=(2, 4), patch_size=2, lead_hours=6)


def _manifest():
    return SimpleNamespace(attrs={"lead_hours": [6, 12, 18, 24, 36], "history_step_hours": 6})


def test_eval_leads_are_the_stored_multiples_of_the_model_lead():
    assert eval_leads(_spec(), _manifest()) == [6, 12, 18, 24, 36]
    twelve = WeatherModelSpec(variables=VARS, grid=(2, 4), patch_size=2, lead_hours=12)
    assert eval_leads(twelve, _manifest()) == [12, 24, 36]
    direct_only = WeatherModelSpec(variables=VARS, out_variables=VARS[:1], grid=(2, 4), patch_size=2, lead_hours=6)
    assert eval_leads(direct_only, _manifest()) == [6]


def test_rmse_and_acc_by_rollout_match_a_hand_computation():
    x0, truth, clim, step = _tiny()
    manifest = SimpleNamespace(attrs={"lead_hours": [6, 12, 24], "history_step_hours": 6})
    report = evaluate(_Drift(step), _batches(x0, truth, clim), _spec(), manifest, EvalOptions(plots=False))
    assert report.samples == 3
    for k, hours in enumerate([6, 12, 24]):
        pred = x0 + (hours // 6) * step  # 1, 2 and 4 rollout steps
        rmse, acc = _hand_rmse_acc(pred, truth[:, k], clim[:, k])
        p_rmse, p_acc = _hand_rmse_acc(x0, truth[:, k], clim[:, k])
        c_rmse, _ = _hand_rmse_acc(clim[:, k], truth[:, k], clim[:, k] + 1.0)
        for v, name in enumerate(VARS):
            key = f"{name}/{hours}h"
            assert report.scores[f"rmse/{key}"] == pytest.approx(rmse[v], rel=1e-5)
            assert report.scores[f"acc/{key}"] == pytest.approx(acc[v], rel=1e-5)
            assert report.scores[f"rmse_persistence/{key}"] == pytest.approx(p_rmse[v], rel=1e-5)
            assert report.scores[f"acc_persistence/{key}"] == pytest.approx(p_acc[v], rel=1e-5)
            assert report.scores[f"rmse_climatology/{key}"] == pytest.approx(c_rmse[v], rel=1e-5)
    assert len(report.table) == 2 * 3 and report.table[0]["headline"] and not report.table[-1]["headline"]
    assert report.table[0]["lead_h"] == 6 and report.table[0]["note"] == ""


def test_max_samples_stops_at_that_many_real_samples():
    x0, truth, clim, step = _tiny()
    manifest = SimpleNamespace(attrs={"lead_hours": [6], "history_step_hours": 6})
    report = evaluate(_Drift(step), _batches(x0, truth, clim), _spec(), manifest,
                      EvalOptions(max_samples=2, plots=False))
    rmse, _ = _hand_rmse_acc(x0[:2] + step, truth[:2, 0], clim[:2, 0])
    assert report.samples == 2
    assert report.scores["rmse/temperature_500/6h"] == pytest.approx(rmse[1], rel=1e-5)


def test_outputs_that_cannot_be_fed_back_are_scored_at_the_direct_lead_and_the_table_says_so():
    spec = WeatherModelSpec(variables=VARS, out_variables=VARS[:1], grid=(2, 4), patch_size=2, lead_hours=6)
    x0, truth, clim, step = _tiny()
    batches = _batches(x0, truth, clim)
    for b in batches:  # one output variable
        b["targets"], b["clim"], b["std"] = b["targets"][:, :1, :1], b["clim"][:, :1, :1], b["std"][:, :1]

    class Direct(torch.nn.Module):
        def forward(self, batch):
            return batch["inputs"][:, -1, :1]

    report = evaluate(Direct(), batches, spec, _manifest(), EvalOptions(plots=False))
    assert {k.split("/")[-1] for k in report.scores} == {"6h"}
    assert "direct lead only" in report.table[0]["note"]


def test_suite_end_to_end_on_a_converted_store(tmp_path, wb2_store):
    from data.converters.weatherbench2 import convert
    from data.format import read_manifest
    from data.loader import build_loader
    from data.spec import DataSpec
    from models import load_family

    lat, lon = np.linspace(78.75, -78.75, 8), np.arange(16) * 22.5
    src = wb2_store(str(tmp_path / "era5.zarr"), lat, lon, times=20)
    convert(src, str(tmp_path / "ds"), variables=["geopotential_500", "temperature_850", "2m_temperature"],
            splits={"train": ("2020-01-01", "2020-01-03"), "val": ("2020-01-03T06", "2020-01-05T18")},
            leads=[6, 12, 24])
    url = str(tmp_path / "ds" / "val")
    manifest = read_manifest(url)
    spec = WeatherModelSpec(variables=["geopotential_500", "temperature_850", "2m_temperature"], grid=(8, 16),
                            lead_hours=6)
    family = load_family("weather")
    torch.manual_seed(0)
    model = family.build_model(spec).eval()
    data = DataSpec(train=[{"url": url}], val=[{"url": url}], prefetch=1, num_workers=0)
    loader = build_loader(data, data.val, split="val", rank=0, world_size=1, global_batch=4, micro_batch=4, seed=0,
                          transform=family.eval_suite.make_transform(spec, manifest), collate=family.collate)
    try:
        report = family.eval_suite.evaluate(model, loader, spec, manifest, EvalOptions(max_samples=5))
    finally:
        loader.close()
    assert report.samples == 5
    names = {"geopotential_500", "temperature_850", "2m_temperature"}
    expected = {f"{kind}/{v}/{h}h" for kind in ("rmse", "acc", "rmse_persistence", "acc_persistence",
                                                 "rmse_climatology") for v in names for h in (6, 12, 24)}
    assert set(report.scores) == expected
    assert all(np.isfinite(v) for v in report.scores.values())
    assert len(report.table) == 9 and set(report.table[0]) == set(report.columns)
    assert set(report.figures) == {"scorecard", "rmse_vs_lead"}
    # an untrained residual model predicts persistence at every lead
    assert report.scores["rmse/geopotential_500/24h"] == pytest.approx(
        report.scores["rmse_persistence/geopotential_500/24h"], rel=1e-4)
