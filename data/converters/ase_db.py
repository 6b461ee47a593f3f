"""Convert an ASE database (.db SQLite, .json, or .aselmdb as OMat24 ships it) to sciscale atoms shards.

Labels are the rows' calculator results (energy, forces, stress); ``config_type`` and MACE's per-structure
weights (``config_weight``, ``config_<label>_weight``) are read from a row's key-value pairs when present.
"""

from __future__ import annotations

import argparse
import os

from data.converters._atoms import (NEIGHBOR_MAX_RADIUS, AtomsShardWriter, add_neighbor_argument, atoms_sample,
                                   frame_meta)
from data.converters.extxyz import _local_copy


def _connect(path: str):
    import ase.db

    if path.endswith(".aselmdb"):
        try:
            import ase_db_backends  # noqa: F401  (registers the aselmdb backend with ase.db)
        except ImportError as exc:
            raise ValueError(f"ase-db: {path} is an .aselmdb database, which needs the package ase-db-backends; "
                             "hint: pip install ase-db-backends") from exc
        return ase.db.connect(path, type="aselmdb", readonly=True)
    return ase.db.connect(path)


LABEL_KEYS = {"energy": "calc:energy", "forces": "calc:forces", "stress": "calc:stress"}
"""Where the labels of a row come from: its calculator results."""


def db_records(path: str, selection: str | None = None):
    """Yield (sample, meta, row name) from the rows of an ASE database (rows are named by id in errors)."""
    db = _connect(path)
    for row in db.select(selection):
        where = f"ase-db {path} row {row.id}"
        atoms = row.toatoms()
        results = atoms.calc.results if atoms.calc is not None else {}
        if "energy" not in results or "forces" not in results:
            raise ValueError(f"{where}: energy and forces are required, the row's calculator results are "
                             f"{sorted(results)}; hint: select labelled rows with --select, e.g. 'energy'")
        sample = atoms_sample(atoms, results["energy"], results["forces"], results.get("stress"), where)
        yield sample, frame_meta(row.key_value_pairs, where), where


def count(path: str, selection: str | None = None) -> int:
    """Rows matching ``selection``."""
    return _connect(path).count(selection)


def convert(source: str, out: str, *, selection: str | None = None, storage_options: dict | None = None,
            source_options: dict | None = None, progress: bool = True, neighbor_radius: float = NEIGHBOR_MAX_RADIUS):
    """Convert one ASE database (local path or URL) to a dataset at ``out``; returns the manifest."""
    path, tmp = _local_copy(source, source_options)
    try:
        if not os.path.exists(path):
            raise ValueError(f"ase-db: input {source!r} does not exist; check the path")
        attrs = {"converter": "ase-db", "source": source, "selection": selection}
        total = count(path, selection)
        with AtomsShardWriter(out, attrs=attrs, storage_options=storage_options, progress=progress,
                              total=total, label_keys=LABEL_KEYS, neighbor_radius=neighbor_radius) as w:
            for sample, meta, where in db_records(path, selection):
                w.append(sample, meta, where)
        return w.writer.manifest
    finally:
        if tmp:
            os.unlink(tmp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sciscale data convert ase-db``."""
    parser.add_argument("source", help="ASE database (.db, .json or .aselmdb): a local path or a URL")
    parser.add_argument("--out", required=True, help="dataset URL to write: a local path or s3://bucket/prefix")
    parser.add_argument("--select", default=None, help="rows to convert, in ASE-DB syntax, e.g. 'natoms<100,energy<0'")
    add_neighbor_argument(parser)
    parser.add_argument("--endpoint-url", default=None,
                        help="S3 endpoint for s3:// input and output (default: AWS_ENDPOINT_URL)")


def run(args: argparse.Namespace) -> int:
    """CLI entry point; returns the process exit code."""
    from data.spec import StorageSpec
    from data.storage import storage_options

    spec = StorageSpec(endpoint_url=args.endpoint_url)
    manifest = convert(args.source, args.out, selection=args.select, storage_options=storage_options(args.out, spec),
                       source_options=storage_options(args.source, spec), neighbor_radius=args.neighbor_radius)
    print(f"wrote {manifest.num_samples} structures to {args.out}")
    return 0

