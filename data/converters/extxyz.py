"""Convert an extxyz file (MACE, fairchem or ASE layout) to sciscale atoms shards.

Energy, forces and stress are found under the keys those projects write: MACE's ``REF_*`` (in ``info`` and
``arrays``), older ``energy``/``forces``/``stress`` keys, ``DFT_*``/``dft_*`` keys, and ASE's own results
(a SinglePointCalculator that ``ase.io.read`` fills from ``energy=``, ``forces`` and ``stress=``; fairchem
reads its extxyz files the same way). Without a ``--*-key`` option the first key of the ordered candidate
list below that the first labelled frame holds is used for every frame; the manifest's ``label_keys`` record
it. Stress may come as 9 numbers (row-major 3x3), 6 Voigt numbers or 3x3; virials become
stress = -virial / volume (mace-torch's convention). ``config_type`` and MACE's per-structure weights are
kept as meta fields.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from data.converters._atoms import (NEIGHBOR_MAX_RADIUS, AtomsShardWriter, add_neighbor_argument, atoms_sample,
                                   frame_meta, virials_to_stress)

CANDIDATES = {
    "energy": ("info:REF_energy", "info:DFT_energy", "info:dft_energy", "info:energy", "calc:energy"),
    "forces": ("arrays:REF_forces", "arrays:DFT_forces", "arrays:dft_forces", "arrays:forces", "calc:forces"),
    "stress": ("info:REF_stress", "info:DFT_stress", "info:dft_stress", "info:stress", "calc:stress"),
    "virials": ("info:REF_virials", "info:DFT_virials", "info:dft_virial", "info:virials", "info:virial"),
}
"""Where each label is looked for, in order: ``info:``/``arrays:`` keys of the frame, ``calc:`` ASE's results.
Stress is searched in the stress keys, then in the virial keys."""
_ASE_PROPERTIES = {"energy", "free_energy", "forces", "stress"}
_HOME = {"energy": "info", "forces": "arrays", "stress": "info", "virials": "info"}


def key_candidates(label: str, key: str) -> tuple[str, ...]:
    """The places a user-given key names: ``info:K``/``arrays:K``/``calc:K`` as written; a bare ``K`` is looked
    for in the label's usual place (info, or arrays for forces) and, for ASE's own names, in ASE's results."""
    if key.split(":", 1)[0] in ("info", "arrays", "calc") and ":" in key:
        return (key,)
    found = (f"{_HOME[label]}:{key}",)
    return found + ((f"calc:{key}",) if key in _ASE_PROPERTIES else ())


def candidates(keys: dict[str, str | None] | None) -> dict[str, tuple[str, ...]]:
    """Candidate lists per label from the user's keys (energy, forces, stress, virials; None = search);
    ``stress`` lists the stress keys and then the virial keys, which ``virials`` repeats alone."""
    keys = keys or {}
    out = {label: key_candidates(label, keys[label]) if keys.get(label) else CANDIDATES[label]
           for label in CANDIDATES}
    if keys.get("stress") or keys.get("virials"):  # a forced key replaces both searches
        out = {**out, **{label: key_candidates(label, keys[label]) if keys.get(label) else ()
                         for label in ("stress", "virials")}}
    return {**out, "stress": out["stress"] + out["virials"]}


def lookup(atoms, key: str):
    """The value stored under ``info:K``, ``arrays:K`` or ``calc:K`` (ASE's results), else None."""
    place, name = key.split(":", 1)
    if place == "calc":
        return (getattr(atoms.calc, "results", None) or {}).get(name) if atoms.calc is not None else None
    return (atoms.info if place == "info" else atoms.arrays).get(name)


def _holdings(atoms) -> str:
    calc = sorted((getattr(atoms.calc, "results", None) or {}) if atoms.calc is not None else {})
    return f"info keys {sorted(atoms.info)}, arrays {sorted(atoms.arrays)}, ASE results {calc}"


class LabelReader:
    """Reads one label from every frame under one key, chosen at the first frame that holds a candidate."""

    def __init__(self, label: str, keys: tuple[str, ...], required: bool):
        self.label, self.keys, self.required, self.key = label, keys, required, None

    def read(self, atoms, where: str):
        if self.key is None:
            self.key = next((k for k in self.keys if lookup(atoms, k) is not None), None)
        value = None if self.key is None else lookup(atoms, self.key)
        if value is not None:
            return np.asarray(value, dtype=np.float64)
        others = [k for k in self.keys if lookup(atoms, k) is not None]
        if self.required or others:
            raise ValueError(self._missing(atoms, where, others))
        return None  # stress is optional per frame: stored as NaN, masked in the loss

    def _missing(self, atoms, where: str, others: list[str]) -> str:
        flag = "--stress-key/--virials-key" if self.label == "stress" else f"--{self.label}-key"
        if self.key is None:
            return (f"{where}: no {self.label} label; looked for {list(self.keys)} and the frame has "
                    f"{_holdings(atoms)}. Hint: pass {flag} with the key your file uses")
        return (f"{where}: no {self.label} label under {self.key!r}, the key used since an earlier frame"
                + (f", but it holds {others}" if others else "") + f"; the frame has {_holdings(atoms)}. "
                f"Hint: a file should name each label one way; pass {flag} to choose the key")


class LabelledFrames:
    """Iterates (sample, meta, frame name) over ASE Atoms; ``label_keys`` says where each label was read."""

    def __init__(self, frames, keys: dict[str, str | None] | None = None, where: str = "extxyz"):
        wanted = candidates(keys)
        self.readers = {label: LabelReader(label, wanted[label], label != "stress")
                        for label in ("energy", "forces", "stress")}
        self.virial_keys = set(wanted["virials"])
        self.frames, self.where = frames, where

    def __iter__(self):
        for i, atoms in enumerate(self.frames):
            at = f"{self.where} frame {i}"
            energy = self.readers["energy"].read(atoms, at)
            forces = self.readers["forces"].read(atoms, at)
            stress = self._stress(atoms, at)
            yield atoms_sample(atoms, energy, forces, stress, at), frame_meta(atoms.info, at), at

    def _stress(self, atoms, where: str):
        reader = self.readers["stress"]
        value = reader.read(atoms, where)
        if value is None or reader.key not in self.virial_keys:
            return value
        return virials_to_stress(value, atoms, where, reader.key)

    @property
    def label_keys(self) -> dict[str, str | None]:
        return {label: reader.key for label, reader in self.readers.items()}


def _local_copy(url: str, options: dict | None) -> tuple[str, str | None]:
    """A local path for ``url`` (remote files are downloaded to a temporary file first)."""
    if "://" not in url or url.startswith("file://"):
        return url.removeprefix("file://"), None
    from data.storage import filesystem

    fs, path = filesystem(url, options)
    tmp = tempfile.NamedTemporaryFile(delete=False, suffix=os.path.splitext(url)[1])
    tmp.close()
    fs.get(path, tmp.name)
    return tmp.name, tmp.name


def convert(source: str, out: str, *, keys: dict[str, str | None] | None = None, index: str = ":",
            storage_options: dict | None = None, source_options: dict | None = None, progress: bool = True,
            neighbor_radius: float = NEIGHBOR_MAX_RADIUS):
    """Convert one extxyz file (local path or URL) to a dataset at ``out``; returns the manifest.

    ``keys``: {"energy"|"forces"|"stress"|"virials": key} forces where a label is read (see
    :func:`key_candidates`); a label left out is searched for in :data:`CANDIDATES`.
    """
    from ase.io import iread

    path, tmp = _local_copy(source, source_options)
    try:
        if not os.path.exists(path):
            raise ValueError(f"extxyz: input {source!r} does not exist; check the path")
        attrs = {"converter": "extxyz", "source": source, "index": index}
        frames = LabelledFrames(iread(path, index=index, format="extxyz"), keys, f"extxyz {source}")
        with AtomsShardWriter(out, attrs=attrs, storage_options=storage_options, progress=progress,
                              neighbor_radius=neighbor_radius) as w:
            for sample, meta, where in frames:
                w.append(sample, meta, where)
            w.label_keys = frames.label_keys
        return w.writer.manifest
    finally:
        if tmp:
            os.unlink(tmp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sciscale data convert extxyz``."""
    parser.add_argument("source", help="extxyz file: a local path or a URL such as s3://bucket/train.xyz")
    parser.add_argument("--out", required=True, help="dataset URL to write: a local path or s3://bucket/prefix")
    for label, unit in (("energy", "eV"), ("forces", "eV/A"), ("stress", "eV/A^3"), ("virials", "eV")):
        search = "the first found of " + ", ".join(CANDIDATES[label])
        search += ", after the stress keys" if label == "virials" else ""
        parser.add_argument(f"--{label}-key", default=None,
                            help=f"key of the {label} ({unit}): KEY, info:KEY, arrays:KEY or calc:NAME (ASE's "
                                 f"results); default: {search}")
    parser.add_argument("--index", default=":", help="frames to convert, in ASE's slice syntax (default: all)")
    add_neighbor_argument(parser)
    parser.add_argument("--endpoint-url", default=None,
                        help="S3 endpoint for s3:// input and output (default: AWS_ENDPOINT_URL)")


def run(args: argparse.Namespace) -> int:
    """CLI entry point; returns the process exit code."""
    from data.spec import StorageSpec
    from data.storage import storage_options

    spec = StorageSpec(endpoint_url=args.endpoint_url)
    keys = {"energy": args.energy_key, "forces": args.forces_key, "stress": args.stress_key,
            "virials": args.virials_key}
    manifest = convert(args.source, args.out, keys=keys, index=args.index, neighbor_radius=args.neighbor_radius,
                       storage_options=storage_options(args.out, spec),
                       source_options=storage_options(args.source, spec))
    print(f"wrote {manifest.num_samples} structures to {args.out}; labels from {manifest.attrs['label_keys']}")
    return 0
