"""Specs that do not fit their data are refused by `sciscale launch` and `validate` before anything starts:
one screen naming the field, the spec's value, the dataset's value and the fix; exit 2; no Ray, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[3]
EMT_ELEMENTS = ["Ag", "Al", "Au", "Cu", "Ni", "Pd", "Pt"]  # what the EMT generator draws from


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """One small dataset per family, written by the project's own generators and converters."""
    from data.converters.weatherbench2 import convert
    from data.generators.emt import generate as emt
    from data.generators.navier_stokes import generate as navier_stokes

    base = tmp_path_factory.mktemp("preflight")
    navier_stokes(str(base / "ns"), n_train=2, n_val=1, resolution=16, snapshots=5, seed=0, progress=False)
    times = pd.date_range("2021-01-01", periods=12, freq="6h")
    rng = np.random.default_rng(0)
    store = xr.Dataset({"geopotential": (("time", "level", "latitude", "longitude"),
                                         rng.normal(size=(12, 2, 4, 8)).astype(np.float32)),
                        "2m_temperature": (("time", "latitude", "longitude"),
                                           rng.normal(size=(12, 4, 8)).astype(np.float32))},
                       coords={"time": times, "level": [500, 850], "latitude": [67.5, 22.5, -22.5, -67.5],
                               "longitude": np.arange(8) * 45.0})
    store.to_zarr(base / "era5.zarr", zarr_format=2, consolidated=True)
    convert(str(base / "era5.zarr"), str(base / "wx"), variables=["geopotential_500", "2m_temperature"],
            splits={"train": ("2021-01-01", "2021-01-03T18")}, leads=[6, 12])
    emt(str(base / "emt"), 6, max_atoms=8, md_steps=2, mix={"bulk": 1.0}, progress=False)
    _molecules(base)
    return base


def _molecules(base: Path) -> None:
    """Molecules labelled with energy and forces but no stress, written by ase.io.write, then converted."""
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from data.converters.extxyz import convert

    frames = []
    for name in ("CH4", "H2O", "NH3", "CO"):
        atoms = molecule(name)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    write(base / "molecules.xyz", frames, format="extxyz")
    convert(str(base / "molecules.xyz"), str(base / "mol"), progress=False)


def _spec(family: str, data: Path) -> dict:
    train = {"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 2}
    if family == "pde":
        return {"name": "pf", "model": {"family": "pde", "arch": "fno", "in_channels": 2, "resolution": 16},
                "data": {"train": [{"url": str(data / "ns" / "train")}], "val": [{"url": str(data / "ns" / "val")}],
                         "canonical_streams": 2}, "train": train}
    if family == "weather":
        return {"name": "wf", "model": {"family": "weather", "variables": ["geopotential_500", "2m_temperature"],
                                        "grid": [4, 8], "lead_hours": 6, "patch_size": 2},
                "data": {"train": [{"url": str(data / "wx" / "train")}], "canonical_streams": 2}, "train": train}
    if family == "molecules":
        return {"name": "mf", "model": {"family": "atoms", "arch": "escaip"},
                "data": {"train": [{"url": str(data / "mol")}], "canonical_streams": 2}, "train": train}
    return {"name": "af", "model": {"family": "atoms", "arch": "mace", "elements": EMT_ELEMENTS},
            "data": {"train": [{"url": str(data / "emt")}], "canonical_streams": 2}, "train": train}


# (family, --set overrides, field path named, text of the dataset's value or the fix)
MISMATCHES = [
    ("pde", ["model.in_channels=3"], "model.in_channels", "2 channels"),
    ("pde", ["model.arch=scot", "model.resolution=32"], "model.resolution", "a 16x16 grid"),
    ("pde", ["model.time_stride=8"], "model.time_stride", "5 snapshots per trajectory"),
    ("pde", ["data.fields=[u, pressure]"], "data.fields", "no field ['pressure']"),
    ("weather", ["model.grid=[32, 64]"], "model.grid", "set model.grid: [4, 8]"),
    ("weather", ["model.variables=[geopotential_500, temperature_850]"], "model.variables", "temperature_850"),
    ("weather", ["model.rollout_steps=3"], "model.lead_hours", "missing [18] h"),
    ("weather", ["model.history=2"], "model.history", "1 input step(s) per window"),
    ("weather", ["model.lead_hours=24"], "model.lead_hours", "set model.lead_hours to one of [6, 12]"),
    ("weather", ["model.lat_grid=equiangular"], "model.lat_grid", "set model.lat_grid: legendre-gauss"),
    ("atoms", ["model.elements=[H]"], "model.elements", "not in the spec"),
    ("atoms", ["model.arch=escaip", "model.max_atomic_number=20", "model.elements=null"],
     "model.max_atomic_number", "atomic numbers up to"),
    ("atoms", ["model.reference_energies={Al: -3.0}"], "model.reference_energies", "give a reference energy for"),
    ("molecules", [], "model.stress_weight", "no stress label in any of its frames"),
    ("molecules", ["model.stress_weight=0", "model.arch=mace", "model.elements=[C, H, N]"], "model.elements",
     "set model.elements: [C, H, N, O]"),
]


def _write(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("family, sets", [("pde", []), ("weather", []), ("atoms", []),
                                          ("molecules", ["model.stress_weight=0"])])
def test_fitting_specs_validate_against_their_data(family, sets, datasets, tmp_path, capsys):
    assert main(["validate", _write(tmp_path, _spec(family, datasets)), *[a for s in sets for a in ("--set", s)]]) == 0
    assert "fits its data" in capsys.readouterr().out


def test_mismatches_exit_2_before_ray_or_torch_is_imported(datasets, tmp_path):
    """Every case through `sciscale launch` in one fresh interpreter (a process per case would cost more
    than the checks): each exits 2 with its one screen, and neither Ray nor torch was ever imported."""
    cases = []
    for i, (family, sets, _, _) in enumerate(MISMATCHES):
        (tmp_path / str(i)).mkdir()
        cases.append((_write(tmp_path / str(i), _spec(family, datasets)), sets))
    probe = ("import contextlib, io, json, sys\nfrom orchestrator.cli import main\nout = []\n"
             "for path, sets in json.loads(sys.argv[1]):\n"
             "    err = io.StringIO()\n"
             "    with contextlib.redirect_stderr(err):\n"
             "        rc = main(['launch', path] + [a for s in sets for a in ('--set', s)])\n"
             "    out.append([rc, err.getvalue()])\n"
             "print(json.dumps({'results': out, 'ray': 'ray' in sys.modules, 'torch': 'torch' in sys.modules}))\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", probe, json.dumps(cases)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["ray"] and not report["torch"], report
    for (family, sets, field, text), (rc, err) in zip(MISMATCHES, report["results"]):
        assert rc == 2, (family, sets, err)
        assert "Traceback" not in err and f"\n  {field}\n" in err and text in err, (family, sets, err)
        assert "against its data" in err and "\n    fix: " in err, err
    print(f"{len(MISMATCHES)} mismatches refused in {seconds:.1f} s")


def test_launch_subprocess_one_screen_no_traceback(datasets, tmp_path):
    path = _write(tmp_path, _spec("weather", datasets))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", path, "--set", "model.grid=[8, 8]"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "model.grid\n    received: [8, 8]\n" in proc.stderr and "a 4x8 (lat x lon) grid" in proc.stderr
    assert len(proc.stderr.splitlines()) < 12, proc.stderr


def test_validate_no_data_skips_and_unreachable_data_is_a_note(datasets, tmp_path, capsys):
    spec = _spec("pde", datasets)
    spec["model"]["in_channels"] = 3
    path = _write(tmp_path, spec)
    assert main(["validate", path, "--no-data"]) == 0
    assert main(["validate", path]) == 2
    spec["data"] = {"train": [{"url": "s3://nobucket/x"}], "canonical_streams": 2}
    spec["storage"] = {"endpoint_url": "http://127.0.0.1:9"}  # nothing listens there
    assert main(["validate", _write(tmp_path, spec)]) == 0
    captured = capsys.readouterr()
    assert "data.train[0].url: not checked against the data" in captured.err and "fits the data that could" in \
        captured.out


def test_cluster_launch_refuses_local_paths_unless_shared(datasets, tmp_path, capsys):
    path = _write(tmp_path, _spec("pde", datasets))
    assert main(["launch", path, "--cluster", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    for field in ("data.train[0].url", "data.val[0].url", "storage.runs_root"):
        assert f"\n  {field}\n" in err
    assert "storage.shared_paths" in err and "object storage" in err
    from orchestrator import preflight
    from orchestrator.specload import load_spec

    spec = load_spec(path, [f"storage.shared_paths=[{datasets}, {tmp_path}]", f"storage.runs_root={tmp_path}/runs"])
    preflight.cluster_paths(spec, path)  # every local path under a shared directory: accepted
