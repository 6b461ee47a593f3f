"""2D acoustic wave equation with a layered wave speed on the periodic unit square, pseudo-spectral.

    u_tt = c(x, y)^2 laplace(u),   u(0) = sum of Gaussian bumps,   u_t(0) = 0

The Laplacian is spectral; time stepping is velocity Verlet (symplectic: the energy
1/2 int(u_t^2 / c^2 + |grad u|^2) stays bounded) with a CFL-limited step landing on every output time.
Stored channels: (u, u_t, c). A hyperbolic equation with a coefficient field, unlike the Navier-Stokes
pretraining data: the unseen downstream task for fine-tuning (Poseidon's Wave-Layer, in spirit).
"""

from __future__ import annotations

import argparse

import numpy as np

from data.pde_io import TrajectorySource, add_common_arguments, report, write_trajectories
from data.storage import storage_options


class SpectralWave2D:
    """Batched solver on an n x n grid; arrays [batch, y, x]; ``c`` is [batch, n, n]."""

    def __init__(self, n: int, cfl: float = 0.4):
        self.n, self.cfl = n, cfl
        k = 2 * np.pi * np.fft.fftfreq(n, d=1.0 / n)
        self.k2 = k[:, None] ** 2 + k[None, :] ** 2
        self.k_max = float(np.sqrt(self.k2.max()))

    def laplacian(self, u: np.ndarray) -> np.ndarray:
        return np.fft.ifft2(-self.k2 * np.fft.fft2(u)).real

    def advance(self, u: np.ndarray, v: np.ndarray, c2: np.ndarray, duration: float):
        """Velocity Verlet; the step keeps dt * c_max * k_max below the stability bound 2 with margin."""
        dt_max = self.cfl * 2.0 / (np.sqrt(c2.max()) * self.k_max)
        steps = max(1, int(np.ceil(duration / dt_max)))
        dt = duration / steps
        acc = c2 * self.laplacian(u)
        for _ in range(steps):
            v = v + 0.5 * dt * acc
            u = u + dt * v
            acc = c2 * self.laplacian(u)
            v = v + 0.5 * dt * acc
        return u, v

    def trajectory(self, u0: np.ndarray, c: np.ndarray, times: np.ndarray) -> np.ndarray:
        """[batch, T, 3, n, n] with channels (u, u_t, c)."""
        u, v, c2 = u0.copy(), np.zeros_like(u0), c**2
        frames = [np.stack([u, v, c], 1)]
        for t0, t1 in zip(times[:-1], times[1:]):
            u, v = self.advance(u, v, c2, float(t1 - t0))
            frames.append(np.stack([u, v, c], 1))
        return np.stack(frames, 1)

    def energy(self, u: np.ndarray, v: np.ndarray, c: np.ndarray) -> np.ndarray:
        """1/2 int(u_t^2 / c^2 + |grad u|^2), conserved by the continuous equation."""
        grad2 = (self.k2 * np.abs(np.fft.fft2(u)) ** 2).sum((-2, -1)) / self.n**2
        return 0.5 * ((v / c) ** 2).sum((-2, -1)) + 0.5 * grad2


def _smooth(field: np.ndarray, width: float) -> np.ndarray:
    n = field.shape[-1]
    k = np.fft.fftfreq(n, d=1.0 / n)
    kernel = np.exp(-0.5 * (2 * np.pi * width) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    return np.fft.ifft2(np.fft.fft2(field) * kernel).real


def layered_speed(n: int, rng: np.random.Generator, c_min: float = 0.3, c_max: float = 1.0) -> np.ndarray:
    """Horizontal layers of random speed with slightly tilted, smoothed interfaces."""
    x, y = np.arange(n)[None, :] / n, np.arange(n)[:, None] / n
    cuts = np.sort(rng.uniform(0, 1, rng.integers(2, 6)))
    depth = (y + rng.uniform(-0.15, 0.15) * np.sin(2 * np.pi * (x + rng.uniform()))) % 1.0
    speeds = rng.uniform(c_min, c_max, len(cuts) + 1)
    c = speeds[np.searchsorted(cuts, depth)]
    return _smooth(c, 1.0 / n)


def gaussian_bumps(n: int, rng: np.random.Generator) -> np.ndarray:
    x, y = np.arange(n)[None, :] / n, np.arange(n)[:, None] / n
    u = np.zeros((n, n))
    for _ in range(rng.integers(2, 7)):
        cx, cy, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.1)
        dx, dy = (x - cx + 0.5) % 1.0 - 0.5, (y - cy + 0.5) % 1.0 - 0.5
        u += rng.uniform(-1, 1) * np.exp(-(dx**2 + dy**2) / (2 * s * s))
    return u


class WaveSource(TrajectorySource):
    """Gaussian initial displacements in a layered medium."""

    equation = "wave-2d-layered"
    channel_names = ("u", "u_t", "c")

    def __init__(self, resolution: int, t_final: float, snapshots: int, c_min: float, c_max: float,
                 batch: int = 16):
        if not 0 < c_min <= c_max:
            raise ValueError(f"wave: need 0 < --c-min <= --c-max, got {c_min} and {c_max}")
        self.n, self.batch, self.c_range = resolution, batch, (c_min, c_max)
        self.solver = SpectralWave2D(resolution)
        self.times = np.linspace(0.0, t_final, snapshots)
        self.params = {"c_min": c_min, "c_max": c_max, "initial_velocity": 0.0}

    def simulate(self, rng: np.random.Generator, count: int) -> np.ndarray:
        u0 = np.stack([gaussian_bumps(self.n, rng) for _ in range(count)])
        c = np.stack([layered_speed(self.n, rng, *self.c_range) for _ in range(count)])
        return self.solver.trajectory(u0, c, self.times).astype(np.float32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, resolution=64)
    parser.add_argument("--c-min", type=float, default=0.3, help="smallest layer wave speed")
    parser.add_argument("--c-max", type=float, default=1.0, help="largest layer wave speed")


def generate(out_url: str, n_train: int, n_val: int = 0, resolution: int = 64, seed: int = 0,
             t_final: float = 1.0, snapshots: int = 21, c_min: float = 0.3, c_max: float = 1.0,
             storage_options: dict | None = None, progress: bool = True) -> dict:
    """Write ``out_url``/train (and ``out_url``/val if n_val > 0); returns {split: Manifest}."""
    source = WaveSource(resolution, t_final, snapshots, c_min, c_max)
    return write_trajectories(source, out_url, n_train, n_val, seed, storage_options, progress)


def run(args: argparse.Namespace) -> int:
    out = generate(args.out, args.n_train, args.n_val, args.resolution, args.seed, args.t_final, args.snapshots,
                   args.c_min, args.c_max, storage_options=storage_options(args.out))
    report(args.out, out)
    return 0
