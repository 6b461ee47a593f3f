"""ASE Atoms to columnar shards, shared by the atoms generator and converters (numpy, ASE and vesin, no torch).

Besides the samples, the writer fits per-element reference energies and measures what the training preflight
and the models need from the data (manifest attrs, see docs/atoms.md): elements, label counts and sources,
periodicity, and the neighbour-distance histogram from which MACE's average neighbour count is derived.
"""

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

WEIGHT_FIELDS = ("config_weight", "energy_weight", "forces_weight", "stress_weight", "virials_weight")
"""Per-structure loss weights kept as metadata (MACE's config_weight and config_<label>_weight), default 1."""
META_FIELDS = {"n_atoms": "int32", "config_type": "int32", **{name: "float32" for name in WEIGHT_FIELDS}}
"""config_type indexes the manifest attrs ``config_types`` (meta fields hold numbers only)."""

NEIGHBOR_BIN_WIDTH = 0.05
"""Angstrom per bin of the neighbour-distance histogram."""
NEIGHBOR_MAX_RADIUS = 20.0
"""Largest distance histogrammed: the largest model.cutoff the atoms spec allows."""


def fit_reference_energies(compositions: list[Counter], energies: np.ndarray, ridge: float = 1e-8) -> dict:
    """Least-squares per-element energies: E_s ~ sum_z count_sz * e_z ({symbol: eV})."""
    from ase.data import chemical_symbols

    zs = sorted({z for c in compositions for z in c})
    counts = np.array([[c.get(z, 0) for z in zs] for c in compositions], dtype=np.float64)
    gram = counts.T @ counts + ridge * np.eye(len(zs))
    coef = np.linalg.solve(gram, counts.T @ np.asarray(energies, dtype=np.float64))
    return {chemical_symbols[z]: float(e) for z, e in zip(zs, coef)}


def voigt_stress(value, where: str, key: str = "stress") -> np.ndarray:
    """A stress-like tensor given as 9 values (row-major 3x3), 6 Voigt values (ASE order xx yy zz yz xz xy)
    or a 3x3 matrix, as 6 Voigt values (the 3x3 form is symmetrised)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == (9,):
        arr = arr.reshape(3, 3)
    if arr.shape == (3, 3):
        sym = 0.5 * (arr + arr.T)
        return sym[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    if arr.shape == (6,):
        return arr
    raise ValueError(f"{where}: {key} has shape {arr.shape}; expected 9 values (row-major 3x3), 6 Voigt values "
                     "(xx yy zz yz xz xy) or a 3x3 matrix; hint: check the key names the stress")


def virials_to_stress(value, atoms, where: str, key: str = "virials") -> np.ndarray:
    """Stress = -virial / cell volume (mace-torch's convention), 6 Voigt values."""
    volume = abs(float(np.linalg.det(np.asarray(atoms.get_cell(), dtype=np.float64))))
    if not atoms.pbc.all() or volume < 1e-9:
        raise ValueError(f"{where}: {key} needs a periodic cell to become a stress, but pbc is "
                         f"{atoms.pbc.tolist()} and the cell volume {volume:.3g} A^3; hint: drop the virials of "
                         "non-periodic structures or give the Lattice")
    return -voigt_stress(value, where, key) / volume


def atoms_sample(atoms, energy, forces, stress, where: str) -> dict:
    """One stored sample; ``stress`` is None or already in Voigt order; ``where`` names the structure."""
    n = len(atoms)
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (n, 3):
        raise ValueError(f"{where}: forces have shape {forces.shape}, expected ({n}, 3) for {n} atoms")
    stress = np.full(6, np.nan) if stress is None else voigt_stress(stress, where)
    energy = np.asarray(energy, dtype=np.float64).reshape(-1)
    if energy.shape != (1,) or not np.isfinite(energy[0]):
        raise ValueError(f"{where}: energy {energy.tolist()} is not one finite number")
    return {"positions": atoms.get_positions(), "numbers": atoms.get_atomic_numbers().astype(np.int32),
            "forces": forces, "cell": np.asarray(atoms.get_cell(), dtype=np.float64),
            "pbc": np.asarray(atoms.get_pbc(), dtype=bool), "energy": np.float64(energy[0]), "stress": stress}


def frame_meta(info: dict, where: str) -> dict:
    """MACE's per-structure ``config_type`` and weights (``config_weight``, ``config_<label>_weight``)."""
    meta = {"config_type": str(info.get("config_type", "Default"))}
    for name in WEIGHT_FIELDS:
        key = name if name == "config_weight" else f"config_{name}"
        try:
            meta[name] = float(info.get(key, 1.0))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {key} = {info.get(key)!r} is not a number; expected a loss weight "
                             "such as 1.0") from None
    return meta


def add_neighbor_argument(parser) -> None:
    """The converters' ``--neighbor-radius`` option."""
    parser.add_argument("--neighbor-radius", type=float, default=NEIGHBOR_MAX_RADIUS,
                        help=f"largest neighbour distance (A) histogrammed for the manifest's neighbor_counts "
                             f"(default {NEIGHBOR_MAX_RADIUS:g}, the largest model.cutoff; a smaller radius is faster "
                             "on large datasets but limits the cutoffs MACE's neighbour count is known for)")


class NeighborHistogram:
    """Histogram of all neighbour distances (full list, both directions) up to ``max_radius``."""

    def __init__(self, bin_width: float = NEIGHBOR_BIN_WIDTH, max_radius: float = NEIGHBOR_MAX_RADIUS):
        if not 0 < bin_width <= max_radius:
            raise ValueError(f"neighbour histogram: need 0 < bin width <= max radius, got {bin_width} and "
                             f"{max_radius} A; hint: pass a positive --neighbor-radius")
        self.bin_width, self.max_radius = bin_width, max_radius
        self.bins = int(round(max_radius / bin_width))
        self.pairs = np.zeros(self.bins, dtype=np.int64)
        self.max_per_atom = np.zeros(self.bins, dtype=np.int64)
        self.atoms = 0

    def add(self, positions, cell, pbc, where: str) -> None:
        """Count the neighbour distances of one structure (vesin, periodic per axis as the structure)."""
        import vesin

        pbc = [bool(p) for p in np.asarray(pbc).reshape(3)]
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3) if any(pbc) else np.zeros((3, 3))
        if any(pbc) and abs(np.linalg.det(cell)) < 1e-9:
            raise ValueError(f"{where}: periodic boundaries {pbc} need a non-degenerate cell, got "
                             f"{cell.tolist()}; hint: set the cell or make the structure non-periodic")
        nl = vesin.NeighborList(cutoff=self.max_radius, full_list=True)
        i, d = nl.compute(points=np.asarray(positions, dtype=np.float64), box=cell,
                          periodic=pbc if any(pbc) else False, quantities="id")
        slot = np.minimum((d / self.bin_width).astype(np.int64), self.bins - 1)
        n = len(positions)
        self.pairs += np.bincount(slot, minlength=self.bins)
        per_atom = np.bincount(i.astype(np.int64) * self.bins + slot, minlength=n * self.bins)
        self.max_per_atom = np.maximum(self.max_per_atom, per_atom.reshape(n, self.bins).cumsum(1).max(0))
        self.atoms += n

    def attrs(self) -> dict:
        """``cumulative[k]``: pairs closer than k * bin_width; mean count at cutoff c = cumulative(c) / atoms."""
        return {"bin_width": self.bin_width, "max_radius": self.max_radius, "atoms": int(self.atoms),
                "cumulative": [0] + np.cumsum(self.pairs).tolist(),
                "max_per_atom": [0] + self.max_per_atom.tolist()}


class AtomsShardWriter:
    """DatasetWriter for structures that also fits reference energies and measures the data for the manifest.

    ``label_keys`` ({label: where it was read}) is set by the caller, at the latest before ``close()``.
    """

    def __init__(self, url: str, *, attrs: dict | None = None, storage_options: dict | None = None,
                 progress: bool = True, total: int | None = None, shard_bytes: int = 64 * 1024 * 1024,
                 label_keys: dict | None = None, neighbor_radius: float = NEIGHBOR_MAX_RADIUS):
        self.writer = DatasetWriter(url, ATOMS_FIELDS, meta_fields=META_FIELDS, attrs=attrs,
                                    storage_options=storage_options, progress=progress, total=total,
                                    shard_bytes=shard_bytes)
        self.label_keys = dict(label_keys or {})
        self.compositions: list[Counter] = []
        self.energies: list[float] = []
        self.config_types: list[str] = []
        self.with_stress = 0
        self.periodic = {"all": 0, "none": 0, "mixed": 0}
        self.neighbors = NeighborHistogram(max_radius=neighbor_radius)

    def append(self, sample: dict, meta: dict | None = None, where: str | None = None) -> None:
        """Add one structure; ``meta`` holds ``config_type`` and weights (see :func:`frame_meta`)."""
        where = where or f"structure {len(self.energies)}"
        meta = {**frame_meta({}, where), **(meta or {})}
        if meta["config_type"] not in self.config_types:
            self.config_types.append(meta["config_type"])
        stored = {**meta, "config_type": self.config_types.index(meta["config_type"]),
                  "n_atoms": len(sample["numbers"])}
        self.neighbors.add(sample["positions"], sample["cell"], sample["pbc"], where)
        self.writer.append(sample, stored)
        self.compositions.append(Counter(int(z) for z in sample["numbers"]))
        self.energies.append(float(sample["energy"]))
        self.with_stress += bool(np.all(np.isfinite(sample["stress"])))
        pbc = np.asarray(sample["pbc"], dtype=bool)
        self.periodic["all" if pbc.all() else "none" if not pbc.any() else "mixed"] += 1

    def _attrs(self) -> dict:
        from ase.data import chemical_symbols

        sizes = [sum(c.values()) for c in self.compositions]
        zs = sorted({z for c in self.compositions for z in c})
        return {
            "kind": "atoms",
            "reference_energies": fit_reference_energies(self.compositions, np.array(self.energies)),
            "mean_atoms": float(np.mean(sizes)), "min_atoms": int(min(sizes)), "max_atoms": int(max(sizes)),
            "num_atoms": int(sum(sizes)), "elements": sorted(chemical_symbols[z] for z in zs),
            "max_atomic_number": int(max(zs)), "config_types": list(self.config_types),
            "labels": {"energy": len(sizes), "forces": len(sizes), "stress": int(self.with_stress)},
            "label_keys": {k: self.label_keys.get(k) for k in ("energy", "forces", "stress")},
            "periodic": dict(self.periodic), "neighbor_counts": self.neighbors.attrs(),
        }

    def close(self) -> Manifest:
        if not self.compositions:
            self.writer.abort()
            raise ValueError(f"{self.writer.url}: no structures to write; check the input and its selection")
        # the writer reads attrs at close(), so statistics of the whole dataset can still go in
        self.writer.attrs.update(self._attrs())
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
