"""extxyz -> sciscale atoms shards. Labels come from ASE's own keys (energy/forces/stress, read into a
calculator) or from named info/arrays keys such as MACE's REF_energy / REF_forces / REF_stress."""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from data.converters._atoms import AtomsShardWriter, atoms_sample

DEFAULT_KEYS = {"energy": "REF_energy", "forces": "REF_forces", "stress": "REF_stress"}


def _label(atoms, key: str, kind: str, where: str, required: bool):
    """A label from atoms.info / atoms.arrays under ``key``, else ASE's own calculator results."""
    source = atoms.arrays if kind == "forces" else atoms.info
    if key in source:
        return np.asarray(source[key], dtype=np.float64)
    calc_results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if kind in calc_results:
        return np.asarray(calc_results[kind], dtype=np.float64)
    if required:
        raise ValueError(f"{where}: no {kind} label: key {key!r} is absent and ASE's {kind!r} is not set "
                         f"(info keys {sorted(atoms.info)}, arrays {sorted(atoms.arrays)}); hint: pass "
                         f"--{kind}-key with the right name")
    return None


def atoms_records(frames, keys: dict[str, str] = DEFAULT_KEYS, where: str = "extxyz"):
    """Yield stored samples from an iterable of ASE Atoms (frame numbers name errors)."""
    for i, atoms in enumerate(frames):
        at = f"{where} frame {i}"
        energy = _label(atoms, keys["energy"], "energy", at, True)
        forces = _label(atoms, keys["forces"], "forces", at, True)
        stress = _label(atoms, keys["stress"], "stress", at, False)
        yield atoms_sample(atoms, float(np.asarray(energy).reshape(-1)[0]), forces, stress, at)


def _local_copy(url: str, options: dict | None) -> tuple[str, str | None]:
    """A local path for ``url`` (remote files are downloaded to a temporary file first)."""
    if "://" not in url or url.startswith("file://"):
        return url.removeprefix("file://"), None
    import fsspec

    tmp = tempfile.NamedTemporaryFile(delete=False, suffix=os.path.splitext(url)[1])
    tmp.close()
    fsspec.filesystem(url.split("://", 1)[0], **(options or {})).get(url.split("://", 1)[1], tmp.name)
    return tmp.name, tmp.name


def convert(source: str, out: str, *, keys: dict[str, str] = DEFAULT_KEYS, index: str = ":",
            storage_options: dict | None = None, source_options: dict | None = None, progress: bool = True):
    """Convert one extxyz file (local path or URL) to a dataset at ``out``; returns the manifest."""
    from ase.io import iread

    path, tmp = _local_copy(source, source_options)
    try:
        if not os.path.exists(path):
            raise ValueError(f"extxyz: input {source!r} does not exist; check the path")
        attrs = {"converter": "extxyz", "source": source, "keys": keys}
        with AtomsShardWriter(out, attrs=attrs, storage_options=storage_options, progress=progress) as w:
            for sample in atoms_records(iread(path, index=index, format="extxyz"), keys, f"extxyz {source}"):
                w.append(sample)
        return w.writer.manifest
    finally:
        if tmp:
            os.unlink(tmp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="extxyz file (local path or URL)")
    parser.add_argument("--out", required=True, help="dataset URL (local path or s3://bucket/prefix)")
    parser.add_argument("--energy-key", default=DEFAULT_KEYS["energy"], help="info key of the energy (eV)")
    parser.add_argument("--forces-key", default=DEFAULT_KEYS["forces"], help="arrays key of the forces (eV/A)")
    parser.add_argument("--stress-key", default=DEFAULT_KEYS["stress"], help="info key of the stress (eV/A^3)")
    parser.add_argument("--index", default=":", help="frames to convert, ASE slice syntax (default all)")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL)")


def run(args: argparse.Namespace) -> int:
    from data.spec import StorageSpec
    from data.storage import storage_options

    spec = StorageSpec(endpoint_url=args.endpoint_url)
    keys = {"energy": args.energy_key, "forces": args.forces_key, "stress": args.stress_key}
    manifest = convert(args.source, args.out, keys=keys, index=args.index,
                       storage_options=storage_options(args.out, spec),
                       source_options=storage_options(args.source, spec))
    print(f"wrote {manifest.num_samples} structures to {args.out}")
    return 0
