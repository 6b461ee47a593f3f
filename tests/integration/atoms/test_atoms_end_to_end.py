"""EMT data to SeaweedFS S3, a real `sciscale launch` of EScAIP, then the trained run as an ASE calculator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

pytestmark = pytest.mark.integration

SPEC = str(Path(__file__).resolve().parents[1] / "specs" / "atoms_escaip.yaml")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def s3_data(seaweedfs, tmp_path_factory):
    from ase.io import write

    from data.converters import extxyz
    from data.generators import emt
    from orchestrator.services import create_bucket

    create_bucket(seaweedfs.endpoint, "atoms")
    emt.generate("s3://atoms/emt/train", 24, seed=0, max_atoms=8, md_steps=2, progress=False,
                 storage_options=_options(seaweedfs))
    frames = [emt.make_structure(1, i, max_atoms=8, md_steps=2) for i in range(8)]
    for atoms in frames:  # ASE's own keys, read back into a calculator by ase.io
        atoms.get_forces()
    local = tmp_path_factory.mktemp("xyz") / "val.xyz"
    write(local, frames, format="extxyz")
    extxyz.convert(str(local), "s3://atoms/emt/val", storage_options=_options(seaweedfs), progress=False)
    return "s3://atoms/emt"


def _options(seaweedfs):
    from data.spec import StorageSpec
    from data.storage import storage_options

    return storage_options("s3://atoms", StorageSpec(endpoint_url=seaweedfs.endpoint))


def test_manifest_on_s3_has_atom_statistics(s3_data, seaweedfs):
    from data.format import read_manifest

    manifest = read_manifest(f"{s3_data}/train", _options(seaweedfs))
    assert manifest.num_samples == 24 and manifest.attrs["mean_atoms"] <= 8
    assert set(manifest.attrs["reference_energies"]) <= {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"}


def test_launch_trains_and_the_run_is_a_calculator(s3_data, seaweedfs, ray_head, mlflow_server, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "orchestrator.cli", "launch", SPEC]
    for item in (f"data.train.0.url={s3_data}/train", f"data.val.0.url={s3_data}/val",
                 f"storage.endpoint_url={seaweedfs.endpoint}", f"storage.runs_root={tmp_path / 'runs'}",
                 f"tracking.uri={mlflow_server.endpoint}"):
        argv += ["--set", item]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_server.endpoint)
    run = client.search_runs([client.get_experiment_by_name("atoms-tests").experiment_id])[0]
    metrics = run.data.metrics
    assert np.isfinite(metrics["val/force_mae_mev_a"]) and metrics["val/force_zero_baseline_mae_mev_a"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"weights.safetensors", "spec.yaml", "plots"} <= artifacts
    from ase.build import bulk

    from models.atoms.calculator import SciscaleCalculator

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    # a runs:/ URI is read through the default tracking URI; set it for this call only (and its env var)
    with pytest.MonkeyPatch.context() as env, _use_tracking_uri(mlflow_server.endpoint):
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server.endpoint)
        atoms.calc = SciscaleCalculator.from_mlflow(f"runs:/{run.info.run_id}")
    assert atoms.get_forces().shape == (4, 3) and np.isfinite(atoms.get_potential_energy())
