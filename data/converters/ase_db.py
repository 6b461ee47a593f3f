"""ASE databases (.db SQLite, .json, .aselmdb via ase-db-backends, as OMat24 ships) -> sciscale shards."""

from __future__ import annotations

import argparse
import os

from data.converters._atoms import AtomsShardWriter, atoms_sample
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


def db_records(path: str, selection: str | None = None):
    """Yield stored samples from the rows of an ASE database (rows are named by id in errors)."""
    db = _connect(path)
    for row in db.select(selection):
        where = f"ase-db {path} row {row.id}"
        atoms = row.toatoms()
        results = atoms.calc.results if atoms.calc is not None else {}
        if "energy" not in results or "forces" not in results:
            raise ValueError(f"{where}: energy and forces are required, the row has {sorted(results)}; "
                             "hint: select labelled rows with --select")
        yield atoms_sample(atoms, float(results["energy"]), results["forces"], results.get("stress"), where)


def count(path: str, selection: str | None = None) -> int:
    return _connect(path).count(selection)


def convert(source: str, out: str, *, selection: str | None = None, storage_options: dict | None = None,
            source_options: dict | None = None, progress: bool = True):
    """Convert one ASE database (local path or URL) to a dataset at ``out``; returns the manifest."""
    path, tmp = _local_copy(source, source_options)
    try:
        if not os.path.exists(path):
            raise ValueError(f"ase-db: input {source!r} does not exist; check the path")
        attrs = {"converter": "ase-db", "source": source, "selection": selection}
        total = count(path, selection)
        with AtomsShardWriter(out, attrs=attrs, storage_options=storage_options, progress=progress,
                              total=total) as w:
            for sample in db_records(path, selection):
                w.append(sample)
        return w.writer.manifest
    finally:
        if tmp:
            os.unlink(tmp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="ASE database: .db, .json or .aselmdb (local path or URL)")
    parser.add_argument("--out", required=True, help="dataset URL (local path or s3://bucket/prefix)")
    parser.add_argument("--select", default=None, help="ASE-DB selection, e.g. 'natoms<100,energy<0'")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL)")


def run(args: argparse.Namespace) -> int:
    from data.spec import StorageSpec
    from data.storage import storage_options

    spec = StorageSpec(endpoint_url=args.endpoint_url)
    manifest = convert(args.source, args.out, selection=args.select, storage_options=storage_options(args.out, spec),
                       source_options=storage_options(args.source, spec))
    print(f"wrote {manifest.num_samples} structures to {args.out}")
    return 0

