import numpy as np
import pytest
from ase.build import bulk, fcc111
from ase.neighborlist import neighbor_list as ase_neighbor_list

from models.atoms.neighbors import neighbor_list, pad_neighbors, padded_neighbors


def _triclinic_cell():
    atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 3, 2))
    atoms.set_cell(atoms.cell @ np.array([[1.0, 0.15, 0.0], [0.0, 1.0, -0.1], [0.05, 0.0, 1.0]]), scale_atoms=True)
    atoms.rattle(0.1, seed=3)
    return atoms


def _pairs(i, j, shifts):
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, np.asarray(shifts).tolist())))


@pytest.mark.parametrize("make", [_triclinic_cell, lambda: fcc111("Pt", (2, 2, 3), vacuum=5.0)])
def test_vesin_list_matches_ase(make):
    atoms = make()
    i, j, shifts, d = neighbor_list(atoms.positions, atoms.cell, atoms.pbc, 5.0)
    ai, aj, ashift, ad = ase_neighbor_list("ijSd", atoms, 5.0)
    assert _pairs(i, j, shifts) == _pairs(ai, aj, ashift)
    vec = atoms.positions[j] - atoms.positions[i] + shifts @ np.asarray(atoms.cell)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), d, atol=1e-10)


def test_padding_keeps_the_nearest_and_counts_truncation():
    atoms = _triclinic_cell()
    i, j, shifts, d = neighbor_list(atoms.positions, atoms.cell, atoms.pbc, 5.0)
    full = np.bincount(i)
    nbrs = pad_neighbors(i, j, shifts, d, len(atoms), max_neighbors=12)
    assert nbrs.index.shape == (len(atoms), 12) and nbrs.mask.all()
    assert nbrs.truncated == int((full > 12).sum())
    for atom in range(len(atoms)):
        kept = np.linalg.norm(atoms.positions[nbrs.index[atom]] - atoms.positions[atom]
                              + nbrs.shift[atom] @ np.asarray(atoms.cell), axis=1)
        assert np.all(np.diff(kept) >= -1e-9)  # nearest first
        np.testing.assert_allclose(kept, np.sort(d[i == atom])[:12], atol=1e-6)


def test_isolated_atoms_get_an_all_padding_row():
    positions = np.array([[0.0, 0, 0], [10.0, 0, 0], [11.0, 0, 0]])
    nbrs = padded_neighbors(positions, np.zeros((3, 3)), [False] * 3, 3.0, 8)
    assert nbrs.mask.tolist() == [[False], [True], [True]]
    assert nbrs.index[0, 0] == 0 and nbrs.index[1, 0] == 2


def test_periodic_without_cell_is_an_actionable_error():
    with pytest.raises(ValueError, match="non-degenerate cell"):
        neighbor_list(np.zeros((1, 3)), np.zeros((3, 3)), [True] * 3, 3.0)
