"""Neighbour-list time: ASE's neighbor_list against vesin (raw list, and sciscale's padded matrix).

    OMP_NUM_THREADS=1 python benchmarks/atoms_neighbors.py [--cutoff 5] [--repeats 5]

Rattled fcc Cu supercells from 32 to 4,000 atoms (a cubic supercell close to each size). Prints a table
of median milliseconds per call; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _cell(target: int):
    from ase.build import bulk

    reps = max(1, round((target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.05, seed=0)
    return atoms


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (first calls allocate)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--max-neighbors", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="32,108,500,2048,4000")
    args = parser.parse_args(argv)
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    from models.atoms.neighbors import neighbor_list, padded_neighbors

    print(f"{'atoms':>7}{'pairs':>10}{'ase ms':>10}{'vesin ms':>10}{'padded ms':>11}{'ase/vesin':>11}")
    for size in (int(s) for s in args.sizes.split(",")):
        atoms = _cell(size)
        pos, cell, pbc = atoms.positions, np.asarray(atoms.cell), atoms.pbc
        pairs = len(neighbor_list(pos, cell, pbc, args.cutoff)[0])
        t_ase = _median_ms(lambda: ase_neighbor_list("ijS", atoms, args.cutoff), args.repeats)
        t_vesin = _median_ms(lambda: neighbor_list(pos, cell, pbc, args.cutoff), args.repeats)
        t_pad = _median_ms(lambda: padded_neighbors(pos, cell, pbc, args.cutoff, args.max_neighbors), args.repeats)
        print(f"{len(atoms):>7}{pairs:>10}{t_ase:>10.2f}{t_vesin:>10.2f}{t_pad:>11.2f}{t_ase / t_vesin:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
