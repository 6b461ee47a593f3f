"""Shared by the atoms generator and converters: ASE Atoms -> columnar shards, plus the per-element
reference-energy fit stored in the manifest (numpy + ASE only, no torch)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from data.format import FieldSpec, Manifest
from data.writer import DatasetWriter

ATOMS_FIELDS = {
    "positions": FieldSpec(dtype="float64", shape=(3,), ragged=True),
    "numbers": FieldSpec(dtype="int32", shape=(), ragged=True),
    "forces": FieldSpec(dtype="float32", shape=(3,), ragged=True),
    "cell": FieldSpec(dtype="float64", shape=(3, 3)),
    "pbc": FieldSpec(dtype="bool", shape=(3,)),
    "energy": FieldSpec(dtype="float64", shape=()),
    "stress": FieldSpec(dtype="float64", shape=(6,)),
}
"""Stress in ASE's Voigt order (xx, yy, zz, yz, xz, xy), eV/A^3; NaN where a structure has none."""


def fit_reference_energies(compositions: list[Counter], energies: np.ndarray, ridge: float = 1e-8) -> dict:
    """Least-squares per-element energies: E_s ~ sum_z count_sz * e_z ({symbol: eV})."""
    from ase.data import chemical_symbols

    zs = sorted({z for c in compositions for z in c})
    counts = np.array([[c.get(z, 0) for z in zs] for c in compositions], dtype=np.float64)
    gram = counts.T @ counts + ridge * np.eye(len(zs))
    coef = np.linalg.solve(gram, counts.T @ np.asarray(energies, dtype=np.float64))
    return {chemical_symbols[z]: float(e) for z, e in zip(zs, coef)}


def atoms_sample(atoms, energy, forces, stress, where: str) -> dict:
    """One stored sample; ``where`` names the structure in error messages."""
    n = len(atoms)
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (n, 3):
        raise ValueError(f"{where}: forces have shape {forces.shape}, expected ({n}, 3)")
    if stress is None:
        stress = np.full(6, np.nan)
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (3, 3):
        stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    if stress.shape != (6,):
        raise ValueError(f"{where}: stress has shape {stress.shape}, expected (6,) Voigt or (3, 3)")
    return {"positions": atoms.get_positions(), "numbers": atoms.get_atomic_numbers().astype(np.int32),
            "forces": forces, "cell": np.asarray(atoms.get_cell(), dtype=np.float64),
            "pbc": np.asarray(atoms.get_pbc(), dtype=bool), "energy": np.float64(energy), "stress": stress}


class AtomsShardWriter:
    """DatasetWriter for structures that also fits reference energies and counts atoms for the manifest."""

    def __init__(self, url: str, *, attrs: dict | None = None, storage_options: dict | None = None,
                 progress: bool = True, total: int | None = None, shard_bytes: int = 64 * 1024 * 1024):
        self.writer = DatasetWriter(url, ATOMS_FIELDS, meta_fields={"n_atoms": "int32"}, attrs=attrs,
                                    storage_options=storage_options, progress=progress, total=total,
                                    shard_bytes=shard_bytes)
        self.compositions: list[Counter] = []
        self.energies: list[float] = []

    def append(self, sample: dict) -> None:
        self.writer.append(sample, {"n_atoms": len(sample["numbers"])})
        self.compositions.append(Counter(int(z) for z in sample["numbers"]))
        self.energies.append(float(sample["energy"]))

    def close(self) -> Manifest:
        if self.compositions:
            sizes = [sum(c.values()) for c in self.compositions]
            # the writer reads attrs at close(), so statistics of the whole dataset can still go in
            self.writer.attrs.update({
                "kind": "atoms",
                "reference_energies": fit_reference_energies(self.compositions, np.array(self.energies)),
                "mean_atoms": float(np.mean(sizes)), "min_atoms": int(min(sizes)), "max_atoms": int(max(sizes)),
                "num_atoms": int(sum(sizes)),
            })
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()

    def __enter__(self) -> "AtomsShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
