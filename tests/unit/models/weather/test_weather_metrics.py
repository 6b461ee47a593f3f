"""WeatherBench2 metrics against values worked out by hand on tiny grids."""

import math

import numpy as np
import pytest
import torch

from models.weather.metrics import lat_weights, rmse_over_time, weighted_acc, weighted_mse, weighted_mse_loss


def test_lat_weights_are_cell_areas_normalised_to_mean_one():
    # cells [-90,-30], [-30,30], [30,90]: areas 0.5, 1, 0.5 (sin differences), mean 2/3
    np.testing.assert_allclose(lat_weights(np.array([-60.0, 0.0, 60.0])), [0.75, 1.5, 0.75], rtol=1e-6)


def test_lat_weights_descending_latitude_gives_the_same_cells():
    np.testing.assert_allclose(lat_weights(np.array([60.0, 0.0, -60.0])), [0.75, 1.5, 0.75], rtol=1e-6)


def test_lat_weights_pole_points_get_half_cells():
    # 90, 0, -90 with step 90: caps [45,90] and [-90,-45], equator cell [-45,45]
    cap, mid = 1 - math.sin(math.radians(45)), 2 * math.sin(math.radians(45))
    expected = np.array([cap, mid, cap]) / np.mean([cap, mid, cap])
    np.testing.assert_allclose(lat_weights(np.array([90.0, 0.0, -90.0])), expected, rtol=1e-6)


def test_lat_weights_reject_unequal_spacing():
    with pytest.raises(ValueError, match="equal spacing"):
        lat_weights(np.array([0.0, 10.0, 30.0]))


def test_weighted_mse_by_hand():
    w = torch.tensor([0.75, 1.5, 0.75])
    pred = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 2.0]])
    truth = torch.zeros(3, 2)
    # squared errors rows: [1,1], [0,0], [0,4]; weighted: 0.75*2 + 0 + 0.75*4 = 4.5 over 6 points
    assert weighted_mse(pred, truth, w).item() == pytest.approx(0.75)


def test_weighted_mse_per_example_weights_and_batch_shape():
    w = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    pred = torch.tensor([[[[1.0]], [[3.0]]]]).reshape(1, 1, 2, 1).expand(2, 1, 2, 1)
    out = weighted_mse(pred, torch.zeros_like(pred), w)
    assert out.shape == (2, 1)
    np.testing.assert_allclose(out[:, 0].numpy(), [1.0, 9.0])  # (2*1+0)/2 and (0+2*9)/2


def test_weighted_acc_by_hand():
    w = torch.tensor([1.0, 3.0])
    clim = torch.tensor([[1.0], [1.0]])
    pred = torch.tensor([[2.0], [0.0]])  # anomalies +1, -1
    truth = torch.tensor([[3.0], [1.0]])  # anomalies +2, 0
    # num = 1*1*2 + 3*(-1)*0 = 2; den = sqrt((1+3) * (4 + 0)) = 4
    assert weighted_acc(pred, truth, clim, w).item() == pytest.approx(0.5)


def test_weighted_acc_of_a_perfect_forecast_is_one_and_of_climatology_zero():
    w = torch.tensor(lat_weights(np.array([45.0, 15.0, -15.0, -45.0])))
    truth = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    clim = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    assert weighted_acc(truth, truth, clim, w).item() == pytest.approx(1.0)
    assert weighted_acc(clim, truth, clim, w).item() == pytest.approx(0.0)


def test_rmse_is_the_root_of_the_time_mean_mse_not_the_mean_of_rmses():
    mse = torch.tensor([1.0, 9.0])
    assert rmse_over_time(mse).item() == pytest.approx(math.sqrt(5.0))  # not (1 + 3) / 2 = 2


def test_descending_latitude_gives_the_same_scores_as_ascending():
    lat = np.array([-67.5, -22.5, 22.5, 67.5])
    g = torch.Generator().manual_seed(3)
    pred, truth, clim = (torch.randn(2, 4, 6, generator=g) for _ in range(3))
    asc_w, desc_w = torch.tensor(lat_weights(lat)), torch.tensor(lat_weights(lat[::-1].copy()))
    flip = lambda x: x.flip(-2)  # noqa: E731
    torch.testing.assert_close(weighted_mse(pred, truth, asc_w), weighted_mse(flip(pred), flip(truth), desc_w))
    torch.testing.assert_close(weighted_acc(pred, truth, clim, asc_w),
                               weighted_acc(flip(pred), flip(truth), flip(clim), desc_w))
    # weights must follow the rows: pairing descending data with ascending weights would only match by symmetry
    assert not torch.allclose(weighted_mse(pred, truth, asc_w), weighted_mse(pred, truth, torch.ones(4)))


def test_loss_is_mean_of_weighted_mse():
    w = torch.tensor([[0.5, 1.5]])
    pred = torch.ones(1, 2, 2, 3)
    truth = torch.zeros(1, 2, 2, 3)
    assert weighted_mse_loss(pred, truth, w).item() == pytest.approx(1.0)


def test_rmse_is_square_root_of_time_mean_mse():
    from models.weather import derived_metrics

    out = derived_metrics({"wmse/geopotential_500/24h": 16.0, "wmse_persistence/2m_temperature/24h": 2.25,
                           "acc/geopotential_500/24h": 0.9})
    assert out == {"rmse/geopotential_500/24h": 4.0, "rmse_persistence/2m_temperature/24h": 1.5}
