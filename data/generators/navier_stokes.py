"""2D periodic incompressible Navier-Stokes on [0, 1]^2 in vorticity form, pseudo-spectral.

    d(omega)/dt + u . grad(omega) = nu * laplace(omega) + f,    u = (d psi/dy, -d psi/dx),  -laplace(psi) = omega

Nonlinear term evaluated on the grid with the 2/3 rule; time stepping is the integrating-factor RK4 scheme
(diffusion exact, advection fourth order) with a CFL-limited step that lands exactly on every output time.
Stored field: velocity (u, v), like Poseidon's NS datasets; 21 snapshots on t in [0, t_final].
"""

from __future__ import annotations

import argparse

import numpy as np

from data.pde_io import TrajectorySource, add_common_arguments, report, write_trajectories
from data.storage import storage_options

IC_FAMILIES = ("sines", "gauss", "shear")


class SpectralNS2D:
    """Batched vorticity solver on an n x n grid; arrays are [batch, y, x] (rfft over x)."""

    def __init__(self, n: int, viscosity: float, forcing: np.ndarray | None = None, cfl: float = 0.5):
        self.n, self.nu, self.cfl = n, float(viscosity), cfl
        ky = 2 * np.pi * np.fft.fftfreq(n, d=1.0 / n)
        kx = 2 * np.pi * np.fft.rfftfreq(n, d=1.0 / n)
        self.ky, self.kx = ky[:, None], kx[None, :]
        self.k2 = self.ky**2 + self.kx**2
        self.inv_k2 = np.where(self.k2 > 0, 1.0 / np.where(self.k2 > 0, self.k2, 1.0), 0.0)
        cut = n // 3  # 2/3 rule: keep integer wavenumbers |k| <= n/3 in each direction
        iy, ix = np.fft.fftfreq(n, d=1.0 / n)[:, None], np.fft.rfftfreq(n, d=1.0 / n)[None, :]
        self.dealias = (np.abs(iy) <= cut) & (np.abs(ix) <= cut)
        self.f_hat = None if forcing is None else np.fft.rfft2(forcing) * self.dealias

    def velocity_hat(self, w_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        psi_hat = w_hat * self.inv_k2
        return 1j * self.ky * psi_hat, -1j * self.kx * psi_hat

    def velocity(self, w_hat: np.ndarray) -> np.ndarray:
        """Grid velocity [batch, 2, n, n] from spectral vorticity."""
        u_hat, v_hat = self.velocity_hat(w_hat)
        return np.stack([np.fft.irfft2(u_hat, s=(self.n, self.n)), np.fft.irfft2(v_hat, s=(self.n, self.n))], 1)

    def nonlinear(self, w_hat: np.ndarray) -> np.ndarray:
        """-u . grad(omega) + f in spectral space, dealiased."""
        s = (self.n, self.n)
        w_hat = w_hat * self.dealias
        u_hat, v_hat = self.velocity_hat(w_hat)
        u, v = np.fft.irfft2(u_hat, s=s), np.fft.irfft2(v_hat, s=s)
        wx, wy = np.fft.irfft2(1j * self.kx * w_hat, s=s), np.fft.irfft2(1j * self.ky * w_hat, s=s)
        out = -np.fft.rfft2(u * wx + v * wy) * self.dealias
        return out if self.f_hat is None else out + self.f_hat

    def stable_dt(self, w_hat: np.ndarray) -> float:
        umax = float(np.abs(self.velocity(w_hat)).max()) + 1e-8
        return self.cfl * (1.0 / self.n) / umax

    def advance(self, w_hat: np.ndarray, duration: float) -> np.ndarray:
        """Integrate for ``duration`` with equal IF-RK4 sub-steps no longer than the CFL step."""
        steps = max(1, int(np.ceil(duration / self.stable_dt(w_hat))))
        dt = duration / steps
        e = np.exp(-self.nu * self.k2 * dt / 2)
        e2 = e * e
        for _ in range(steps):
            a = dt * self.nonlinear(w_hat)
            b = dt * self.nonlinear(e * (w_hat + a / 2))
            c = dt * self.nonlinear(e * w_hat + b / 2)
            d = dt * self.nonlinear(e2 * w_hat + e * c)
            w_hat = e2 * w_hat + (e2 * a + 2 * e * (b + c) + d) / 6
        return w_hat

    def trajectory(self, w0: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Velocity at each of ``times`` (times[0] is the initial time): [batch, T, 2, n, n]."""
        w_hat = np.fft.rfft2(w0)
        frames = [self.velocity(w_hat)]
        for t0, t1 in zip(times[:-1], times[1:]):
            w_hat = self.advance(w_hat, float(t1 - t0))
            frames.append(self.velocity(w_hat))
        return np.stack(frames, 1)


def taylor_green_vorticity(n: int, k: int = 1, amplitude: float = 1.0) -> np.ndarray:
    """Taylor-Green vortex on [0,1]^2: omega = 2 (2 pi k)^2 A sin(2 pi k x) sin(2 pi k y); decays as
    exp(-2 nu (2 pi k)^2 t) and is an exact steady-shape solution (its advection term vanishes)."""
    x = np.arange(n) / n
    kk = 2 * np.pi * k
    return 2 * kk**2 * amplitude * np.sin(kk * x)[None, :] * np.sin(kk * x)[:, None]


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(n) / n
    return x[None, :], x[:, None]


def _ic_sines(n: int, rng: np.random.Generator, modes: int = 8) -> np.ndarray:
    # Random sines with a decaying spectrum, like Poseidon's NS-Sines (vorticity here, so u is div-free).
    x, y = _grid(n)
    w = np.zeros((n, n))
    for i in range(1, modes + 1):
        for j in range(-modes, modes + 1):
            c = rng.normal() / (i * i + j * j)
            w += c * np.sin(2 * np.pi * (i * x + j * y) + rng.uniform(0, 2 * np.pi))
    return w


def _ic_gauss(n: int, rng: np.random.Generator) -> np.ndarray:
    # A few Gaussian vortices of random sign, width and place; periodic images included.
    x, y = _grid(n)
    w = np.zeros((n, n))
    for _ in range(rng.integers(3, 9)):
        cx, cy, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.04, 0.12)
        dx = (x - cx + 0.5) % 1.0 - 0.5
        dy = (y - cy + 0.5) % 1.0 - 0.5
        w += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * np.exp(-(dx**2 + dy**2) / (2 * s * s))
    return w


def _ic_shear(n: int, rng: np.random.Generator) -> np.ndarray:
    # Two perturbed shear layers (Poseidon's NS-SL); vorticity of u = tanh profile, v = small sine.
    x, y = _grid(n)
    rho, delta = rng.uniform(0.02, 0.06), rng.uniform(0.02, 0.08)
    shift = delta * np.sin(2 * np.pi * (x + rng.uniform(0, 1)))
    yy = (y - shift) * np.ones_like(x)
    u_dy = np.where(yy <= 0.5, (1 - np.tanh((yy - 0.25) / rho) ** 2), -(1 - np.tanh((0.75 - yy) / rho) ** 2))
    return -u_dy / rho * np.ones((n, n))


def random_vorticity(family: str, n: int, rng: np.random.Generator, velocity_scale: float = 1.0) -> np.ndarray:
    """One initial vorticity of the given family, zero mean, scaled so that max |u| = velocity_scale."""
    w = {"sines": _ic_sines, "gauss": _ic_gauss, "shear": _ic_shear}[family](n, rng)
    w = w - w.mean()
    solver = SpectralNS2D(n, 0.0)
    umax = float(np.abs(solver.velocity(np.fft.rfft2(w)[None])).max()) + 1e-12
    return w * velocity_scale / umax


def kolmogorov_forcing(n: int, amplitude: float) -> np.ndarray:
    """The forcing of Li et al.'s FNO benchmark, A (sin 2 pi (x + y) + cos 2 pi (x + y))."""
    x, y = _grid(n)
    return amplitude * (np.sin(2 * np.pi * (x + y)) + np.cos(2 * np.pi * (x + y)))


class NavierStokesSource(TrajectorySource):
    """Simulates batches of trajectories with initial conditions drawn from the given families."""

    equation = "navier-stokes-2d"
    channel_names = ("u", "v")

    def __init__(self, resolution: int, families: tuple[str, ...], viscosity: float, forcing: float,
                 t_final: float, snapshots: int, batch: int = 16):
        bad = [f for f in families if f not in IC_FAMILIES]
        if bad or not families:
            raise ValueError(f"navier-stokes --ic: got {list(families)}, expected a comma-separated subset "
                             f"of {list(IC_FAMILIES)}")
        self.n, self.families, self.batch = resolution, families, batch
        force = kolmogorov_forcing(resolution, forcing) if forcing else None
        self.solver = SpectralNS2D(resolution, viscosity, force)
        self.times = np.linspace(0.0, t_final, snapshots)
        self.params = {"viscosity": viscosity, "forcing_amplitude": forcing, "ic_families": list(families)}

    def simulate(self, rng: np.random.Generator, count: int) -> np.ndarray:
        fams = [self.families[i % len(self.families)] for i in range(count)]
        w0 = np.stack([random_vorticity(f, self.n, rng) for f in fams])
        return self.solver.trajectory(w0, self.times).astype(np.float32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, resolution=64)
    parser.add_argument("--ic", default="sines,gauss", help=f"initial-condition families, from {IC_FAMILIES}")
    parser.add_argument("--viscosity", type=float, default=4e-4, help="kinematic viscosity nu")
    parser.add_argument("--forcing", type=float, default=0.0, help="Kolmogorov forcing amplitude (0: none)")


def generate(out_url: str, n_train: int, n_val: int = 0, resolution: int = 64, seed: int = 0,
             ic: str = "sines,gauss", viscosity: float = 4e-4, forcing: float = 0.0, t_final: float = 1.0,
             snapshots: int = 21, storage_options: dict | None = None, progress: bool = True) -> dict:
    """Write ``out_url``/train (and ``out_url``/val if n_val > 0); returns {split: Manifest}."""
    source = NavierStokesSource(resolution, tuple(s.strip() for s in ic.split(",") if s.strip()),
                                viscosity, forcing, t_final, snapshots)
    return write_trajectories(source, out_url, n_train, n_val, seed, storage_options, progress)


def run(args: argparse.Namespace) -> int:
    out = generate(args.out, args.n_train, args.n_val, args.resolution, args.seed, args.ic, args.viscosity,
                   args.forcing, args.t_final, args.snapshots,
                   storage_options=storage_options(args.out))
    report(args.out, out)
    return 0
