"""Periodic neighbour lists (vesin) and the per-atom padded neighbour matrix that EScAIP attends over.

Numpy only: it runs in DataLoader workers (the family's transform) and in the ASE calculator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vesin


@dataclass
class PaddedNeighbors:
    """Neighbours of each atom, nearest first, padded to ``k`` columns."""

    index: np.ndarray
    """[n, k] int64 index of the neighbour atom (the centre atom itself in padded slots)."""
    shift: np.ndarray
    """[n, k, 3] float32 integer cell shifts: vector = pos[index] - pos[i] + shift @ cell."""
    mask: np.ndarray
    """[n, k] bool, True where a real neighbour sits."""
    truncated: int
    """Atoms that had more neighbours inside the cutoff than max_neighbors (the farthest were dropped)."""


def neighbor_list(positions, cell, pbc, cutoff: float):
    """Full neighbour list within ``cutoff``: (i, j, S, d), vector_ij = pos[j] - pos[i] + S @ cell.

    Triclinic cells and mixed periodicity (e.g. slabs with pbc [T, T, F]) are handled by vesin.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = [bool(p) for p in np.asarray(pbc).reshape(3)]
    if any(pbc) and abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError(f"neighbor_list: periodic boundaries {pbc} need a non-degenerate cell, got {cell.tolist()}; "
                         "hint: set the cell or pbc=False")
    if not any(pbc):
        cell = np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts, d = nl.compute(points=positions, box=cell, periodic=pbc if any(pbc) else False, quantities="ijSd")
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64), d


def pad_neighbors(i, j, shifts, d, n_atoms: int, max_neighbors: int) -> PaddedNeighbors:
    """Group a full pair list by centre atom, keep the ``max_neighbors`` nearest, pad to a rectangle."""
    # one float sort key (centre atom first, then distance) sorts about 3x faster than np.lexsort
    order = np.argsort(i * (float(d.max(initial=0.0)) + 1.0) + d)
    i, j, shifts = i[order], j[order], shifts[order]
    counts = np.bincount(i, minlength=n_atoms)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(i)) - starts[i]
    keep = rank < max_neighbors
    k = int(min(counts.max(initial=0), max_neighbors))
    index = np.repeat(np.arange(n_atoms, dtype=np.int64)[:, None], max(k, 1), axis=1)
    shift = np.zeros((n_atoms, max(k, 1), 3), dtype=np.float32)
    mask = np.zeros((n_atoms, max(k, 1)), dtype=bool)
    rows, cols = i[keep], rank[keep]
    index[rows, cols] = j[keep]
    shift[rows, cols] = shifts[keep]
    mask[rows, cols] = True
    return PaddedNeighbors(index, shift, mask, int((counts > max_neighbors).sum()))


def padded_neighbors(positions, cell, pbc, cutoff: float, max_neighbors: int) -> PaddedNeighbors:
    """Neighbour list and padding in one call."""
    i, j, shifts, d = neighbor_list(positions, cell, pbc, cutoff)
    return pad_neighbors(i, j, shifts, d, len(positions), max_neighbors)


def mean_neighbor_count(counts: dict, cutoff: float, where: str = "neighbor_counts") -> float:
    """Mean number of neighbours per atom within ``cutoff`` from a manifest's ``neighbor_counts`` attrs
    (cumulative pair counts at multiples of ``bin_width``, interpolated linearly between bin edges)."""
    radius, width = float(counts["max_radius"]), float(counts["bin_width"])
    if not 0 < cutoff <= radius:
        raise ValueError(f"{where}: neighbour counts were measured up to {radius:g} A, but the cutoff is "
                         f"{cutoff:g} A; hint: convert the data again with --neighbor-radius >= {cutoff:g}, "
                         "or set model.mace_avg_num_neighbors")
    cumulative = np.asarray(counts["cumulative"], dtype=np.float64)
    pairs = np.interp(cutoff / width, np.arange(len(cumulative)), cumulative)
    return float(pairs) / max(int(counts["atoms"]), 1)
