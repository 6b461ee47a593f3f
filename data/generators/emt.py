"""Generate structures of Al, Cu, Ag, Au, Ni, Pd and Pt labelled with ASE's EMT (energy, forces, stress).

Kinds (mixed by ``--mix``): rattled and strained fcc/bcc bulk cells and random alloys, bulk cells with a
vacancy, rattled fcc(111)/(100) slabs, and snapshots of short Langevin MD of alloys. Every structure is a
pure function of (seed, structure index), so a dataset is reproducible and can be regenerated in parts.
The structure kind is stored as the ``config_type`` meta field (names in the manifest attrs ``config_types``).
"""

from __future__ import annotations

import argparse

import numpy as np

from data.converters._atoms import AtomsShardWriter, atoms_sample

METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
KINDS = ("bulk", "vacancy", "surface", "md")
DEFAULT_MIX = {"bulk": 0.35, "vacancy": 0.15, "surface": 0.15, "md": 0.35}
LABEL_KEYS = {"energy": "emt:energy", "forces": "emt:forces", "stress": "emt:stress"}
"""The labels' source: ase.calculators.emt.EMT (stress for fully periodic cells only)."""


def _lattice_constant(symbols: list[str]) -> float:
    from ase.data import atomic_numbers, reference_states

    return float(np.mean([reference_states[atomic_numbers[s]]["a"] for s in symbols]))


def _alloy_bulk(rng, max_atoms: int):
    from ase.build import bulk

    species = list(rng.choice(METALS, size=rng.integers(1, 4), replace=False))
    a_fcc = _lattice_constant(species) * rng.uniform(0.97, 1.04)
    if rng.random() < 0.75:
        atoms = bulk("Cu", "fcc", a=a_fcc, cubic=True)
    else:  # same volume per atom as the fcc cell
        atoms = bulk("Fe", "bcc", a=a_fcc * 0.5 ** (1 / 3), cubic=True)
    per_cell = len(atoms)
    options = [r for r in [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2), (3, 3, 3)]
               if per_cell * np.prod(r) <= max_atoms]
    atoms = atoms.repeat(options[rng.integers(len(options))])
    atoms.set_chemical_symbols(list(rng.choice(species, size=len(atoms))))
    return atoms


def _strain_and_rattle(atoms, rng, strain: float, rattle: float):
    deform = np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))
    atoms.set_cell(atoms.cell @ (0.5 * (deform + deform.T)), scale_atoms=True)
    atoms.positions += rng.normal(0, rattle, atoms.positions.shape)
    return atoms


def _surface(rng, max_atoms: int):
    from ase.build import fcc100, fcc111

    species = list(rng.choice(METALS, size=rng.integers(1, 3), replace=False))
    layers = int(rng.integers(3, 5))
    size = (2, 2, layers) if 4 * layers <= max_atoms else (1, 1, layers)
    build = fcc111 if rng.random() < 0.5 else fcc100
    atoms = build(species[0], size=size, a=_lattice_constant(species), vacuum=6.0, periodic=False)
    atoms.set_chemical_symbols(list(rng.choice(species, size=len(atoms))))
    atoms.pbc = (True, True, False)
    atoms.positions += rng.normal(0, rng.uniform(0.02, 0.12), atoms.positions.shape)
    return atoms


def _md_snapshot(rng, max_atoms: int, steps: int):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    atoms = _alloy_bulk(rng, max_atoms)
    atoms.calc = _emt()
    temperature = float(rng.uniform(200, 1200))
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=temperature, friction=0.02, rng=rng, fixcm=False)
    dyn.run(steps)
    return atoms


def _emt():
    from ase.calculators.emt import EMT

    return EMT()


def make_structure(seed: int, index: int, *, mix: dict[str, float] = DEFAULT_MIX, max_atoms: int = 32,
                   md_steps: int = 20):
    """Structure ``index`` of the dataset with ``seed``, labelled with EMT (a pure function of both)."""
    rng = np.random.default_rng([seed, index])
    kinds = list(mix)
    kind = kinds[rng.choice(len(kinds), p=np.array([mix[k] for k in kinds]) / sum(mix.values()))]
    if kind == "surface":
        atoms = _surface(rng, max_atoms)
    elif kind == "md":
        atoms = _md_snapshot(rng, max_atoms, md_steps)
    else:
        atoms = _strain_and_rattle(_alloy_bulk(rng, max_atoms), rng, rng.uniform(0, 0.04), rng.uniform(0.01, 0.15))
        if kind == "vacancy" and len(atoms) > 2:
            del atoms[int(rng.integers(len(atoms)))]
    atoms.calc = _emt()
    atoms.info["kind"] = kind
    return atoms


def structure_record(atoms, where: str) -> dict:
    """The stored sample of an EMT-labelled structure (stress only for fully periodic cells)."""
    stress = atoms.get_stress(voigt=True) if atoms.pbc.all() else None
    return atoms_sample(atoms, atoms.get_potential_energy(), atoms.get_forces(), stress, where)


def generate(url: str, num: int, *, seed: int = 0, mix: dict[str, float] = DEFAULT_MIX, max_atoms: int = 32,
             md_steps: int = 20, storage_options: dict | None = None, progress: bool = True):
    """Write ``num`` EMT structures to a dataset at ``url``; returns the manifest."""
    if num < 1:
        raise ValueError(f"emt: --num must be >= 1, got {num}")
    unknown = sorted(set(mix) - set(KINDS))
    if unknown:
        raise ValueError(f"emt: unknown structure kinds {unknown} in --mix; expected some of {list(KINDS)}")
    attrs = {"generator": "emt", "seed": seed, "mix": mix, "max_cell_atoms": max_atoms, "md_steps": md_steps}
    with AtomsShardWriter(url, attrs=attrs, storage_options=storage_options, progress=progress, total=num,
                          label_keys=LABEL_KEYS) as w:
        for index in range(num):
            atoms = make_structure(seed, index, mix=mix, max_atoms=max_atoms, md_steps=md_steps)
            where = f"emt structure {index} (seed {seed})"
            w.append(structure_record(atoms, where), {"config_type": atoms.info["kind"]}, where)
    return w.writer.manifest


def _parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"emt: --mix entry {part!r} is not NAME=WEIGHT, e.g. bulk=1,md=2") from None
    return mix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sciscale data generate emt``."""
    parser.add_argument("--out", required=True, help="dataset URL to write: a local path or s3://bucket/prefix")
    parser.add_argument("--num", type=int, default=1000, help="number of structures to generate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (use different seeds for train and val)")
    parser.add_argument("--max-atoms", type=int, default=32, help="largest cell, in atoms")
    parser.add_argument("--md-steps", type=int, default=20,
                        help="Langevin steps of 5 fs before an MD snapshot is taken")
    parser.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()),
                        help="structure kinds and their weights, e.g. bulk=0.35,vacancy=0.15,surface=0.15,md=0.35")
    parser.add_argument("--endpoint-url", default=None,
                        help="S3 endpoint for an s3:// output (default: AWS_ENDPOINT_URL)")


def run(args: argparse.Namespace) -> int:
    """CLI entry point; returns the process exit code."""
    from data.storage import storage_options
    from data.spec import StorageSpec

    options = storage_options(args.out, StorageSpec(endpoint_url=args.endpoint_url))
    manifest = generate(args.out, args.num, seed=args.seed, mix=_parse_mix(args.mix), max_atoms=args.max_atoms,
                        md_steps=args.md_steps, storage_options=options)
    print(f"wrote {manifest.num_samples} structures to {args.out} (mean {manifest.attrs['mean_atoms']:.1f} atoms)")
    return 0
