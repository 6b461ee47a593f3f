import glob
from collections import Counter

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from data.converters import ase_db, extxyz
from data.converters._atoms import fit_reference_energies
from data.format import open_shard, read_manifest


def _read_all(url):
    manifest = read_manifest(url)
    samples = []
    for shard in manifest.shards:
        view = open_shard(f"{url}/{shard.key}", manifest.fields)
        samples += [{k: np.array(v) for k, v in view.sample(i).items()} for i in range(view.num_samples)]
    return manifest, samples


def _frames(n=3):
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 1 + i % 2))
        atoms.set_chemical_symbols(["Cu", "Ni"] * (len(atoms) // 2))
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        frames.append((atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    return frames


def test_fit_recovers_per_element_energies():
    comps = [Counter({29: 4, 28: 0}), Counter({29: 2, 28: 6}), Counter({28: 3, 13: 1}), Counter({13: 5})]
    truth = {29: -3.5, 28: -5.0, 13: -2.0}
    energies = np.array([sum(truth[z] * c for z, c in comp.items()) for comp in comps])
    refs = fit_reference_energies(comps, energies)
    assert refs == pytest.approx({"Cu": -3.5, "Ni": -5.0, "Al": -2.0}, abs=1e-6)


def test_extxyz_with_mace_ref_keys(tmp_path):
    frames, path = _frames(), tmp_path / "train.xyz"
    plain = []
    for atoms, e, f, s in frames:
        copy = atoms.copy()
        copy.info["REF_energy"], copy.arrays["REF_forces"], copy.info["REF_stress"] = e, f, s
        plain.append(copy)
    write(path, plain, format="extxyz")
    manifest = extxyz.convert(str(path), str(tmp_path / "ds"), progress=False)
    _, samples = _read_all(str(tmp_path / "ds"))
    assert manifest.num_samples == 3 and manifest.attrs["mean_atoms"] == pytest.approx(np.mean([4, 8, 4]))
    for (atoms, e, f, s), sample in zip(frames, samples):
        assert sample["energy"].item() == pytest.approx(e)
        np.testing.assert_allclose(sample["forces"], f, atol=1e-6)
        np.testing.assert_allclose(sample["stress"], s, atol=1e-10)
        np.testing.assert_allclose(sample["positions"], atoms.positions, atol=1e-6)


def test_extxyz_with_ase_keys_and_missing_labels(tmp_path):
    frames = _frames(2)
    write(tmp_path / "ase.xyz", [f[0] for f in frames], format="extxyz")  # ASE writes its calculator results
    extxyz.convert(str(tmp_path / "ase.xyz"), str(tmp_path / "ds"), progress=False)
    _, samples = _read_all(str(tmp_path / "ds"))
    assert samples[1]["energy"].item() == pytest.approx(frames[1][1])
    bare = bulk("Cu")
    write(tmp_path / "bare.xyz", bare, format="extxyz")
    with pytest.raises(ValueError, match="frame 0: no energy label"):
        extxyz.convert(str(tmp_path / "bare.xyz"), str(tmp_path / "ds2"), progress=False)


@pytest.mark.parametrize("suffix", ["db", "aselmdb"])
def test_ase_db_sqlite_and_lmdb(tmp_path, suffix):
    import ase.db

    path = str(tmp_path / f"structures.{suffix}")
    frames = _frames()
    with ase.db.connect(path, type="aselmdb" if suffix == "aselmdb" else "db") as db:
        for atoms, *_ in frames:
            db.write(atoms)
    manifest = ase_db.convert(path, str(tmp_path / "ds"), progress=False)
    _, samples = _read_all(str(tmp_path / "ds"))
    assert manifest.num_samples == 3 and set(manifest.attrs["reference_energies"]) == {"Cu", "Ni"}
    np.testing.assert_allclose(samples[2]["forces"], frames[2][2], atol=1e-6)
    np.testing.assert_allclose(samples[0]["stress"], frames[0][3], atol=1e-10)
    assert len(glob.glob(str(tmp_path / "ds" / "shards" / "*"))) == 1
    assert manifest.attrs["label_keys"] == ase_db.LABEL_KEYS and manifest.attrs["labels"]["stress"] == 3
