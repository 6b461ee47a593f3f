"""The wave solver against a standing-wave solution and its conserved energy; the generator's output."""

import numpy as np
import pytest

from data.format import read_manifest
from data.generators.wave import SpectralWave2D, generate, layered_speed


def test_standing_wave_oscillates_at_the_analytic_frequency():
    n, k, c = 32, 2, 0.7
    x = np.arange(n) / n
    u0 = (np.sin(2 * np.pi * k * x)[None, :] * np.sin(2 * np.pi * k * x)[:, None])[None]
    times = np.array([0.0, 0.13, 0.4])
    traj = SpectralWave2D(n, cfl=0.1).trajectory(u0, np.full_like(u0, c), times)
    omega = c * 2 * np.pi * k * np.sqrt(2)
    for i, t in enumerate(times):
        np.testing.assert_allclose(traj[0, i, 0], np.cos(omega * t) * u0[0], atol=2e-4)
        np.testing.assert_allclose(traj[0, i, 1], -omega * np.sin(omega * t) * u0[0], atol=2e-3)
    assert np.all(traj[0, :, 2] == c)


def test_energy_is_conserved_in_a_layered_medium():
    n = 32
    rng = np.random.default_rng(0)
    solver = SpectralWave2D(n)
    c = layered_speed(n, rng)[None]
    x = np.arange(n) / n
    u0 = np.exp(-((x[None, :] - 0.5) ** 2 + (x[:, None] - 0.5) ** 2) / 0.01)[None]
    u, v = solver.advance(u0, np.zeros_like(u0), c**2, 0.5)
    e0, e1 = solver.energy(u0, np.zeros_like(u0), c), solver.energy(u, v, c)
    assert e1 == pytest.approx(e0, rel=2e-2)
    assert np.abs(u - u0).max() > 0.1  # the wave moved


def test_layered_speed_stays_in_range():
    c = layered_speed(32, np.random.default_rng(3), 0.3, 1.0)
    assert c.min() > 0.29 and c.max() < 1.01 and c.std() > 0


def test_generator_writes_three_channels(tmp_path):
    generate(str(tmp_path / "wave"), n_train=2, n_val=1, resolution=16, snapshots=4, progress=False)
    train = read_manifest(str(tmp_path / "wave" / "train"))
    assert train.fields["u"].shape == (4, 3, 16, 16)
    assert train.attrs["channel_names"] == ["u", "u_t", "c"] and len(train.attrs["channel_std"]) == 3
    assert read_manifest(str(tmp_path / "wave" / "val")).attrs["split"] == "val"


def test_generator_rejects_bad_speed_range(tmp_path):
    with pytest.raises(ValueError, match="c-min"):
        generate(str(tmp_path / "w"), n_train=1, c_min=1.0, c_max=0.5)
