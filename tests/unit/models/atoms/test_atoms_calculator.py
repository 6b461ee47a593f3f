import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from models.atoms import build_model
from models.atoms.calculator import SciscaleCalculator, load_model_spec
from models.atoms.config import AtomsModelSpec

SPEC = {"family": "atoms", "arch": "escaip", "size": "debug", "cutoff": 4.0, "max_neighbors": 24,
        "reference_energies": {"Cu": -0.5}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = build_model(AtomsModelSpec.model_validate(SPEC))
    with torch.no_grad():  # untrained forces are tiny; scale them so that the relaxation has work to do
        model.energy_head[1][2].weight.mul_(200.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "weights.safetensors"))
    (root / "spec.yaml").write_text(yaml.safe_dump({"name": "x", "model": SPEC}))
    return root


def _cell():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=2)
    return atoms


def test_calculator_forces_are_energy_gradients(checkpoint):
    calc = SciscaleCalculator.from_checkpoint(str(checkpoint / "weights.safetensors"), str(checkpoint / "spec.yaml"))
    atoms = _cell()
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert stress.shape == (6,) and np.isfinite(atoms.get_potential_energy())
    h = 1e-5
    moved = [atoms.copy() for _ in range(2)]
    for m, sign in zip(moved, (1, -1)):
        m.positions[1, 2] += sign * h
        m.calc = calc
    numeric = -(moved[0].get_potential_energy() - moved[1].get_potential_energy()) / (2 * h)
    assert forces[1, 2] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_relaxation_with_cell_filter_lowers_the_energy(checkpoint):
    calc = SciscaleCalculator.from_checkpoint(str(checkpoint / "weights.safetensors"), str(checkpoint / "spec.yaml"))
    atoms = _cell()
    atoms.calc = calc
    start, fmax0 = atoms.get_potential_energy(), np.abs(atoms.get_forces()).max()
    assert fmax0 > 0.01
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.005, steps=15)
    assert atoms.get_potential_energy() < start


def test_spec_loader_rejects_other_families(tmp_path):
    path = tmp_path / "pde.yaml"
    path.write_text(yaml.safe_dump({"model": {"family": "pde", "in_channels": 1}}))
    with pytest.raises(ValueError, match="not an atoms model spec"):
        load_model_spec(str(path))


def test_from_mlflow_run_uri_downloads_weights_and_spec(checkpoint, monkeypatch):
    import mlflow.artifacts

    asked = []

    def download(uri):  # stands in for the tracking server: runs:/RUN/<name> -> the file in the checkpoint
        asked.append(uri)
        return str(checkpoint / uri.rsplit("/", 1)[1])

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    atoms = _cell()
    atoms.calc = SciscaleCalculator.from_mlflow("runs:/abc123")
    reference = _cell()
    reference.calc = SciscaleCalculator.from_checkpoint(str(checkpoint / "weights.safetensors"),
                                                        str(checkpoint / "spec.yaml"))
    assert asked == ["runs:/abc123/weights.safetensors", "runs:/abc123/spec.yaml"]
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-10)
