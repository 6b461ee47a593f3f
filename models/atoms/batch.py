"""Per-structure transform (neighbour list in the DataLoader worker), collate, and a synthetic batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.atoms.neighbors import padded_neighbors

_REQUIRED = ("positions", "numbers", "cell", "pbc", "energy", "forces")


def voigt_to_matrix(stress: np.ndarray) -> np.ndarray:
    """ASE Voigt order (xx, yy, zz, yz, xz, xy) to a symmetric 3x3 matrix; 3x3 input passes through."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (3, 3):
        return stress
    xx, yy, zz, yz, xz, xy = stress.reshape(6)
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


@dataclass
class AtomsTransform:
    """Stored structure -> training example with its padded neighbour matrix. Picklable."""

    cutoff: float
    max_neighbors: int
    mean_atoms: float | None = None
    """Mean atom count of the training set; the force loss divides by it (see docs/atoms.md)."""
    cacheable = True
    """The example depends on the stored structure alone (no augmentation): the loader keeps it for later epochs
    (data.transform_cache_mib), as mace-torch builds its neighbour lists once before training."""

    def __call__(self, sample: dict, rng=None) -> dict:
        missing = [k for k in _REQUIRED if k not in sample]
        if missing:
            raise ValueError(f"atoms sample is missing fields {missing}; got {sorted(sample)}. Hint: write the "
                             "dataset with data.generators.emt or data.converters.extxyz/ase_db")
        pos = np.asarray(sample["positions"], dtype=np.float32)
        nbrs = padded_neighbors(pos, sample["cell"], sample["pbc"], self.cutoff, self.max_neighbors)
        has_stress = "stress" in sample and np.all(np.isfinite(sample["stress"]))
        return {
            "positions": pos,
            "numbers": np.asarray(sample["numbers"], dtype=np.int64),
            "cell": np.asarray(sample["cell"], dtype=np.float32).reshape(3, 3),
            "pbc": np.broadcast_to(np.asarray(sample["pbc"], dtype=bool).reshape(-1), (3,)).copy(),
            "energy": np.float64(np.asarray(sample["energy"]).reshape(-1)[0]),
            "forces": np.asarray(sample["forces"], dtype=np.float32),
            "stress": voigt_to_matrix(sample["stress"]) if has_stress else np.zeros((3, 3)),
            "has_stress": bool(has_stress),
            "nbr_idx": nbrs.index, "nbr_shift": nbrs.shift, "nbr_mask": nbrs.mask,
            "mean_atoms": float(self.mean_atoms or len(pos)),
            "truncated": nbrs.truncated,
        }


def _pad_cols(array: np.ndarray, k: int, fill) -> np.ndarray:
    pad = [(0, 0), (0, k - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=fill)


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate atoms; neighbour indices become global; neighbour columns pad to the batch maximum."""
    k = max(e["nbr_idx"].shape[1] for e in examples)
    counts = [len(e["numbers"]) for e in examples]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nbr_idx = []
    for e, start in zip(examples, starts):
        own = np.arange(len(e["numbers"]))[:, None] + start
        nbr_idx.append(np.where(_pad_cols(e["nbr_mask"], k, False), _pad_cols(e["nbr_idx"], k, 0) + start, own))
    cat = lambda key: torch.from_numpy(np.concatenate([e[key] for e in examples]))  # noqa: E731
    stack = lambda key, dt: torch.as_tensor(np.stack([e[key] for e in examples]), dtype=dt)  # noqa: E731
    return {
        "positions": cat("positions"), "numbers": cat("numbers"), "forces": cat("forces"),
        "nbr_idx": torch.from_numpy(np.concatenate(nbr_idx)),
        "nbr_shift": torch.from_numpy(np.concatenate([_pad_cols(e["nbr_shift"], k, 0.0) for e in examples])),
        "nbr_mask": torch.from_numpy(np.concatenate([_pad_cols(e["nbr_mask"], k, False) for e in examples])),
        "batch": torch.repeat_interleave(torch.arange(len(examples)), torch.tensor(counts)),
        "n_atoms": torch.tensor(counts, dtype=torch.int64),
        "cell": torch.from_numpy(np.stack([e["cell"] for e in examples])), "energy": stack("energy", torch.float32),
        "stress": stack("stress", torch.float32), "has_stress": stack("has_stress", torch.bool),
        "mean_atoms": stack("mean_atoms", torch.float32),
        # periodicity per axis [b, 3]: the eval suite rebuilds ASE structures for its physical checks
        **({"pbc": stack("pbc", torch.bool)} if all("pbc" in e for e in examples) else {}),
    }


def structure_sample(atoms) -> dict:
    """An ASE Atoms object with a calculator attached -> the stored-sample dict (energy, forces, stress)."""
    sample = {"positions": atoms.get_positions(), "numbers": atoms.get_atomic_numbers(),
              "cell": np.asarray(atoms.get_cell()), "pbc": atoms.get_pbc(),
              "energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.cell.rank == 3:
        sample["stress"] = atoms.get_stress(voigt=True)
    return sample


def example_batch(spec, batch_size: int) -> dict[str, torch.Tensor]:
    """Rattled fcc Cu cells of 4 to 32 atoms with placeholder labels (shapes only matter)."""
    from ase.build import bulk

    transform = AtomsTransform(spec.cutoff, spec.max_neighbors)
    examples = []
    for b in range(batch_size):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1 + b % 2, 1 + (b // 2) % 2, 1 + (b // 4) % 2))
        atoms.rattle(0.05, seed=b)
        n = len(atoms)
        examples.append(transform({"positions": atoms.positions, "numbers": atoms.numbers,
                                   "cell": np.asarray(atoms.cell), "pbc": atoms.pbc, "energy": np.float64(0.0),
                                   "forces": np.zeros((n, 3)), "stress": np.zeros(6)}))
    return collate(examples)
