"""The Navier-Stokes solver against an analytic solution and conservation laws; the generator's output."""

import numpy as np
import pytest

from data.format import read_manifest
from data.generators.navier_stokes import (SpectralNS2D, generate, random_vorticity, taylor_green_vorticity)


@pytest.mark.parametrize("k", [1, 3])
def test_taylor_green_decays_as_the_analytic_solution(k):
    n, nu, t_end = 32, 0.01, 0.5
    solver = SpectralNS2D(n, nu)
    w0 = taylor_green_vorticity(n, k=k, amplitude=0.1)[None]
    traj = solver.trajectory(w0, np.array([0.0, 0.25, t_end]))
    x = np.arange(n) / n
    kk = 2 * np.pi * k
    # psi = A sin(kk x) sin(kk y) solves -lap(psi) = omega; u = d psi / dy, v = -d psi / dx; arrays are [y, x]
    decay = np.exp(-2 * nu * kk**2 * t_end)
    u_exact = 0.1 * kk * np.sin(kk * x)[None, :] * np.cos(kk * x)[:, None] * decay
    v_exact = -0.1 * kk * np.cos(kk * x)[None, :] * np.sin(kk * x)[:, None] * decay
    np.testing.assert_allclose(traj[0, -1, 0], u_exact, atol=1e-9 * kk)
    np.testing.assert_allclose(traj[0, -1, 1], v_exact, atol=1e-9 * kk)
    assert abs(np.abs(traj[0, -1]).max() / np.abs(traj[0, 0]).max() - decay) < 1e-9


def test_inviscid_flow_conserves_energy_and_enstrophy():
    n = 32
    solver = SpectralNS2D(n, 0.0)
    w0 = random_vorticity("sines", n, np.random.default_rng(1))
    # Keep only resolved modes: the dealiased Galerkin system conserves both invariants exactly in time
    # up to the RK4 error, so a few hundredths of a time unit must leave them nearly unchanged.
    w_hat = np.fft.rfft2(w0)[None] * solver.dealias
    w_end = solver.advance(w_hat, 0.2)
    energy = lambda wh: float((np.abs(solver.velocity(wh)) ** 2).sum())
    enstrophy = lambda wh: float((np.fft.irfft2(wh, s=(n, n)) ** 2).sum())
    assert energy(w_end) == pytest.approx(energy(w_hat), rel=1e-5)
    assert enstrophy(w_end) == pytest.approx(enstrophy(w_hat), rel=1e-3)
    assert np.abs(w_end - w_hat).max() > 1e-3 * np.abs(w_hat).max()  # the flow did evolve


def test_time_step_refinement_converges():
    n = 32
    w0 = random_vorticity("gauss", n, np.random.default_rng(2))[None]
    coarse = SpectralNS2D(n, 1e-3, cfl=0.8).trajectory(w0, np.array([0.0, 0.3]))[:, -1]
    fine = SpectralNS2D(n, 1e-3, cfl=0.1).trajectory(w0, np.array([0.0, 0.3]))[:, -1]
    assert np.abs(coarse - fine).max() < 1e-3 * np.abs(fine).max()


@pytest.mark.parametrize("family", ["sines", "gauss", "shear"])
def test_initial_conditions_are_scaled_and_zero_mean(family):
    w = random_vorticity(family, 32, np.random.default_rng(0), velocity_scale=1.0)
    u = SpectralNS2D(32, 0.0).velocity(np.fft.rfft2(w)[None])
    assert abs(w.mean()) < 1e-10
    assert np.abs(u).max() == pytest.approx(1.0, rel=1e-6)


def test_generator_writes_train_and_val_with_training_statistics(tmp_path):
    out = generate(str(tmp_path / "ns"), n_train=3, n_val=2, resolution=16, seed=0, snapshots=5,
                   progress=False, ic="sines,gauss", forcing=0.1)
    train, val = read_manifest(str(tmp_path / "ns" / "train")), read_manifest(str(tmp_path / "ns" / "val"))
    assert (train.num_samples, val.num_samples) == (3, 2)
    assert train.fields["u"].shape == (5, 2, 16, 16) and train.fields["t"].shape == (5,)
    assert val.attrs["channel_std"] == train.attrs["channel_std"] == out["train"].attrs["channel_std"]
    assert train.attrs["equation"] == "navier-stokes-2d" and train.attrs["time_span"] == 1.0
    assert all(s > 0 for s in train.attrs["channel_std"])


def test_generator_rejects_unknown_initial_condition(tmp_path):
    with pytest.raises(ValueError, match="expected a comma-separated subset"):
        generate(str(tmp_path / "ns"), n_train=1, resolution=16, ic="sines,vortex")
