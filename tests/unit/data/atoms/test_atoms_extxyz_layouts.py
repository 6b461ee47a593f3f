"""extxyz in the layouts MACE, fairchem and ASE write: each converts and trains the atoms family a few steps."""

import re

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import write

from data.converters import extxyz
from data.format import open_shard, read_manifest, read_meta
from models.atoms.config import AtomsModelSpec


def _read_all(url):
    manifest = read_manifest(url)
    samples = []
    for shard in manifest.shards:
        view = open_shard(f"{url}/{shard.key}", manifest.fields)
        samples += [{k: np.array(v) for k, v in view.sample(i).items()} for i in range(view.num_samples)]
    return manifest, samples


def _cells(n=6):
    """Rattled Cu/Ni fcc cells of 4 and 8 atoms with EMT attached."""
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 1 + i % 2))
        atoms.set_chemical_symbols(["Cu", "Ni"] * (len(atoms) // 2))
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        frames.append(atoms)
    return frames


def _labelled(atoms, **extra):
    """A copy without calculator carrying MACE-style REF_* labels (stress as 9 numbers, row-major)."""
    out = atoms.copy()
    out.info["REF_energy"] = atoms.get_potential_energy()
    out.arrays["REF_forces"] = atoms.get_forces()
    out.info.update(extra)
    return out


def _spec(arch="escaip", elements=("Cu", "Ni")):
    extra = {"elements": list(elements)} if arch == "mace" else {}
    return AtomsModelSpec(family="atoms", arch=arch, cutoff=4.0, max_neighbors=24, **extra)


def test_mace_ref_keys_with_nine_stress_numbers_convert_and_train(tmp_path, train_steps):
    frames = _cells()
    plain = [_labelled(a, REF_stress=a.get_stress(voigt=False).reshape(9)) for a in frames]
    plain[1].info.update({"config_type": "strained", "config_weight": 2.0, "config_forces_weight": 0.5})
    write(tmp_path / "train.xyz", plain, format="extxyz")
    comment = (tmp_path / "train.xyz").read_text().splitlines()[1]
    assert len(re.search(r'REF_stress="([^"]*)"', comment).group(1).split()) == 9  # the layout MACE sets use
    url = str(tmp_path / "ds")
    manifest = extxyz.convert(str(tmp_path / "train.xyz"), url, progress=False)
    _, samples = _read_all(url)
    for atoms, sample in zip(frames, samples):
        np.testing.assert_allclose(sample["stress"], atoms.get_stress(), atol=1e-12)
        np.testing.assert_allclose(sample["forces"], atoms.get_forces(), atol=1e-6)
    attrs = manifest.attrs
    assert attrs["label_keys"] == {"energy": "info:REF_energy", "forces": "arrays:REF_forces",
                                   "stress": "info:REF_stress"}
    assert attrs["labels"] == {"energy": 6, "forces": 6, "stress": 6} and attrs["elements"] == ["Cu", "Ni"]
    assert attrs["periodic"] == {"all": 6, "none": 0, "mixed": 0} and attrs["max_atomic_number"] == 29
    assert attrs["config_types"] == ["Default", "strained"]
    assert read_meta(url, manifest, "config_type").tolist() == [0, 1, 0, 0, 0, 0]
    assert read_meta(url, manifest, "config_weight")[1] == 2.0 and read_meta(url, manifest, "forces_weight")[1] == 0.5
    assert read_meta(url, manifest, "energy_weight").tolist() == [1.0] * 6
    assert all(np.isfinite(train_steps("atoms", _spec(), url)))  # MACE trains in the molecule test (builds are slow)


def test_virials_become_stress(tmp_path, train_steps):
    frames = _cells()
    virial = [(-a.get_stress(voigt=False) * a.get_volume()).reshape(9) for a in frames]
    write(tmp_path / "v.xyz", [_labelled(a, REF_virials=v) for a, v in zip(frames, virial)], format="extxyz")
    url = str(tmp_path / "ds")
    manifest = extxyz.convert(str(tmp_path / "v.xyz"), url, progress=False)
    _, samples = _read_all(url)
    np.testing.assert_allclose(samples[3]["stress"], frames[3].get_stress(), atol=1e-12)  # -virial / volume
    assert manifest.attrs["label_keys"]["stress"] == "info:REF_virials"
    assert all(np.isfinite(train_steps("atoms", _spec(), url)))


def _molecules():
    frames = []
    for i, name in enumerate(["CH4", "NH3", "H2O", "C2H6", "CH3OH", "HCN"]):
        atoms = molecule(name)
        if i % 2:  # a molecule in a box, still non-periodic: the cell is arbitrary
            atoms.center(vacuum=4.0)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()  # ASE's EMT has (rough) H, C, N, O parameters: enough for labels
        atoms.get_forces()
        atoms.calc.results.pop("stress", None)  # EMT also gives boxed molecules a stress; molecule sets have none
        frames.append(atoms)
    return frames


def test_non_periodic_molecules_with_ase_keys_train_escaip_and_mace(tmp_path, train_steps):
    frames = _molecules()
    write(tmp_path / "mol.xyz", frames, format="extxyz")  # pbc="F F F"; no Lattice for the unboxed ones
    assert "Lattice" not in (tmp_path / "mol.xyz").read_text().splitlines()[1]
    url = str(tmp_path / "ds")
    manifest = extxyz.convert(str(tmp_path / "mol.xyz"), url, progress=False)
    attrs = manifest.attrs
    assert attrs["label_keys"] == {"energy": "calc:energy", "forces": "calc:forces", "stress": None}
    assert attrs["labels"]["stress"] == 0 and attrs["periodic"] == {"all": 0, "none": 6, "mixed": 0}
    assert attrs["elements"] == ["C", "H", "N", "O"]
    _, samples = _read_all(url)
    assert np.all(samples[0]["cell"] == 0) and np.all(np.isnan(samples[0]["stress"]))
    assert np.linalg.det(samples[1]["cell"]) > 0 and not samples[1]["pbc"].any()
    assert all(np.isfinite(train_steps("atoms", _spec(), url)))
    # MACE divides the virial by the cell volume: a zero cell must not turn its gradients into NaN
    assert all(np.isfinite(train_steps("atoms", _spec("mace", ["H", "C", "N", "O"]), url)))


def test_ase_keys_of_periodic_cells(tmp_path, train_steps):
    frames = _cells()
    for atoms in frames:
        atoms.get_stress()
    write(tmp_path / "ase.xyz", frames, format="extxyz")  # energy=, forces and stress= from the calculator
    url = str(tmp_path / "ds")
    manifest = extxyz.convert(str(tmp_path / "ase.xyz"), url, progress=False)
    assert manifest.attrs["label_keys"] == {"energy": "calc:energy", "forces": "calc:forces",
                                            "stress": "calc:stress"}
    _, samples = _read_all(url)
    assert samples[2]["energy"] == pytest.approx(frames[2].get_potential_energy())
    np.testing.assert_allclose(samples[2]["stress"], frames[2].get_stress(), atol=1e-12)
    assert all(np.isfinite(train_steps("atoms", _spec(), url)))


def test_forced_keys_and_optional_stress(tmp_path):
    frames = _cells(3)
    plain = []
    for i, a in enumerate(frames):
        p = a.copy()
        p.info["DFT_energy"], p.arrays["my_forces"] = a.get_potential_energy(), a.get_forces()
        if i != 1:  # stress is optional per frame
            p.info["DFT_stress"] = a.get_stress()  # 6 Voigt numbers
        plain.append(p)
    write(tmp_path / "d.xyz", plain, format="extxyz")
    url = str(tmp_path / "ds")
    manifest = extxyz.convert(str(tmp_path / "d.xyz"), url, keys={"forces": "my_forces"}, progress=False)
    assert manifest.attrs["label_keys"] == {"energy": "info:DFT_energy", "forces": "arrays:my_forces",
                                            "stress": "info:DFT_stress"}
    _, samples = _read_all(url)
    assert np.all(np.isnan(samples[1]["stress"])) and manifest.attrs["labels"]["stress"] == 2
    np.testing.assert_allclose(samples[2]["stress"], frames[2].get_stress(), atol=1e-12)


def test_a_frame_without_energy_or_forces_is_named(tmp_path):
    frames = [_labelled(a) for a in _cells(3)]
    del frames[2].info["REF_energy"]
    write(tmp_path / "e.xyz", frames, format="extxyz")
    with pytest.raises(ValueError, match=r"e\.xyz frame 2: no energy label under 'info:REF_energy'.*--energy-key"):
        extxyz.convert(str(tmp_path / "e.xyz"), str(tmp_path / "a"), progress=False)
    frames = [_labelled(a) for a in _cells(2)]
    frames[1].arrays["DFT_forces"] = frames[1].arrays.pop("REF_forces")
    write(tmp_path / "f.xyz", frames, format="extxyz")
    with pytest.raises(ValueError, match=r"frame 1: no forces label .* it holds \['arrays:DFT_forces'\]"):
        extxyz.convert(str(tmp_path / "f.xyz"), str(tmp_path / "b"), progress=False)
    write(tmp_path / "n.xyz", [a.copy() for a in _cells(1)], format="extxyz")
    with pytest.raises(ValueError, match=r"frame 0: no energy label; looked for \['info:REF_energy'"):
        extxyz.convert(str(tmp_path / "n.xyz"), str(tmp_path / "c"), progress=False)
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_key_candidates_and_stress_shapes():
    assert extxyz.key_candidates("energy", "energy") == ("info:energy", "calc:energy")
    assert extxyz.key_candidates("forces", "REF_forces") == ("arrays:REF_forces",)
    assert extxyz.key_candidates("stress", "calc:stress") == ("calc:stress",)
    assert extxyz.candidates({"virials": "virial"})["stress"] == ("info:virial",)
    assert extxyz.candidates({"stress": "stress", "virials": "V"})["stress"] == ("info:stress", "calc:stress",
                                                                                "info:V")
    assert extxyz.candidates(None)["stress"][-1] == "info:virial"
    from data.converters._atoms import voigt_stress

    full = np.array([[1.0, 6, 5], [6, 2, 4], [5, 4, 3]])
    for given in (full, full.reshape(9), np.array([1.0, 2, 3, 4, 5, 6])):
        np.testing.assert_allclose(voigt_stress(given, "x"), [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match=r"x: REF_stress has shape \(4,\); expected 9 values"):
        voigt_stress(np.zeros(4), "x", "REF_stress")
