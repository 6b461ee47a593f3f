"""Symmetry and derivative checks of EScAIP (float64, tiny model)."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from models.atoms import build_model
from models.atoms.batch import AtomsTransform, collate
from models.atoms.config import AtomsModelSpec


def _spec(**kw):
    return AtomsModelSpec(family="atoms", cutoff=4.0, max_neighbors=40, **kw)


def _atoms(seed=0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.set_chemical_symbols(["Cu", "Ni", "Au", "Cu"] * 2)
    atoms.set_cell(atoms.cell @ np.array([[1.0, 0.08, 0.0], [0.0, 1.0, 0.05], [0.0, 0.0, 1.02]]), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


def _batch(atoms, spec):
    sample = {"positions": atoms.positions, "numbers": atoms.numbers, "cell": np.asarray(atoms.cell),
              "pbc": atoms.pbc, "energy": 0.0, "forces": np.zeros((len(atoms), 3))}
    example = AtomsTransform(spec.cutoff, spec.max_neighbors)(sample)
    example["positions"], example["cell"] = atoms.positions.copy(), np.asarray(atoms.cell).copy()
    return {k: v.double() if v.is_floating_point() else v for k, v in collate([example]).items()}


def _model(spec):
    torch.manual_seed(0)
    model = build_model(spec).double().eval()
    with torch.no_grad():  # a random non-trivial energy scale so that the checks are not vacuous
        model.energy_head[1][2].weight.mul_(50.0)
    return model


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_energy_invariant_forces_and_stress_rotate(forces):
    spec = _spec(forces=forces)
    model, atoms = _model(spec), _atoms()
    ref = model(_batch(atoms, spec))
    rot = Rotation.random(random_state=7).as_matrix()
    moved = atoms.copy()
    moved.set_cell(atoms.cell @ rot.T)
    moved.positions = atoms.positions @ rot.T + np.array([1.3, -0.7, 2.1])
    out = model(_batch(moved, spec))
    assert abs(ref["forces"]).max() > 1e-3
    torch.testing.assert_close(out["energy"], ref["energy"], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out["forces"], ref["forces"] @ torch.tensor(rot.T), atol=1e-9, rtol=1e-7)
    R = torch.tensor(rot)
    torch.testing.assert_close(out["stress"][0], R @ ref["stress"][0] @ R.T, atol=1e-9, rtol=1e-7)


def test_conservative_forces_and_stress_are_energy_derivatives():
    spec = _spec()
    model, atoms = _model(spec), _atoms(1)
    out = model(_batch(atoms, spec))
    h, atom, axis = 1e-5, 3, 1
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * h
        energies.append(float(model(_batch(moved, spec))["energy"][0]))
    assert float(out["forces"][atom, axis]) == pytest.approx(-(energies[0] - energies[1]) / (2 * h), rel=1e-5, abs=1e-8)
    strained = []
    for sign in (1, -1):
        eps = np.eye(3) + sign * h * np.array([[0, 0, 0.5], [0, 0, 0], [0.5, 0, 0]])
        moved = atoms.copy()
        moved.set_cell(atoms.cell @ eps, scale_atoms=True)
        strained.append(float(model(_batch(moved, spec))["energy"][0]))
    dE = (strained[0] - strained[1]) / (2 * h)
    assert float(out["stress"][0, 0, 2]) == pytest.approx(dE / atoms.get_volume(), rel=1e-5, abs=1e-9)


def test_energy_is_continuous_when_a_neighbour_crosses_the_cutoff():
    spec = _spec()
    model = _model(spec)
    energies = []
    for r in (spec.cutoff - 1e-5, spec.cutoff + 1e-5, 2.5):  # inside, outside, well inside
        pair = Atoms("CuNi", positions=[[0, 0, 0], [r, 0, 0]], cell=np.zeros((3, 3)), pbc=False)
        energies.append(float(model(_batch(pair, spec))["energy"][0]))
    assert abs(energies[0] - energies[1]) < 1e-9
    assert abs(energies[2] - energies[1]) > 1e-4  # the pair does interact closer in
