"""Energy conservation and relaxation with a trained sciscale potential as an ASE calculator.

    python benchmarks/atoms_md.py --weights W.safetensors --spec spec.yaml      # a trained run's files
    python benchmarks/atoms_md.py --mlflow runs:/RUN_ID                          # or straight from MLflow

Runs NVE velocity-Verlet MD of a 32-atom fcc cell initialised at 300 K and reports the total-energy drift
per atom (end minus start, and the largest excursion), then relaxes a strained, rattled cell with FIRE and
a FrechetCellFilter and reports whether it converged. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def nve_drift(calc, *, steps: int, dt_fs: float, temperature: float, element: str, seed: int) -> dict:
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = bulk(element, "fcc", cubic=True).repeat((2, 2, 2))  # 32 atoms
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    totals, temps = [], []
    dyn = VelocityVerlet(atoms, dt_fs * units.fs)
    dyn.attach(lambda: (totals.append(atoms.get_total_energy()), temps.append(atoms.get_temperature())), interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - start
    totals = np.array(totals)
    n = len(atoms)
    return {"atoms": n, "steps": steps, "dt_fs": dt_fs, "mean_T_K": float(np.mean(temps)),
            "drift_mev_atom": 1000 * float(totals[-1] - totals[0]) / n,
            "max_excursion_mev_atom": 1000 * float(np.abs(totals - totals[0]).max()) / n,
            "steps_per_s": steps / wall}


def relax(calc, *, element: str, seed: int, fmax: float, max_steps: int) -> dict:
    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = bulk(element, "fcc", cubic=True).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell * 1.03, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    converged = opt.run(fmax=fmax, steps=max_steps)
    return {"converged": bool(converged), "steps": opt.nsteps, "energy_drop_ev": float(e0 - atoms.get_potential_energy()),
            "final_fmax": float(np.abs(atoms.get_forces()).max()), "a_final": float(atoms.cell.lengths()[0] / 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="weights.safetensors of a trained run")
    parser.add_argument("--spec", help="the run's spec.yaml (or its model section)")
    parser.add_argument("--mlflow", help="MLflow URI instead: runs:/RUN_ID or models:/NAME/VERSION")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--dt-fs", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--element", default="Cu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fmax", type=float, default=0.01)
    args = parser.parse_args(argv)
    from models.atoms.calculator import SciscaleCalculator

    if args.mlflow:
        calc = SciscaleCalculator.from_mlflow(args.mlflow)
    elif args.weights and args.spec:
        calc = SciscaleCalculator.from_checkpoint(args.weights, args.spec)
    else:
        parser.error("give --weights and --spec, or --mlflow")
    md = nve_drift(calc, steps=args.steps, dt_fs=args.dt_fs, temperature=args.temperature, element=args.element,
                   seed=args.seed)
    rx = relax(calc, element=args.element, seed=args.seed, fmax=args.fmax, max_steps=500)
    print(f"{'check':<12}{'quantity':<26}{'value':>12}")
    for name, table in (("nve", md), ("relaxation", rx)):
        for key, value in table.items():
            print(f"{name:<12}{key:<26}{value:>12.4g}" if isinstance(value, float) else f"{name:<12}{key:<26}{value!s:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
