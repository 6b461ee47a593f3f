import numpy as np
import pytest
from ase.calculators.emt import EMT

from data.format import open_shard, read_manifest, read_meta
from data.generators.emt import KINDS, METALS, generate, make_structure


def test_structures_are_reproducible_and_labelled():
    a, b = make_structure(5, 7), make_structure(5, 7)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.get_potential_energy() == b.get_potential_energy()
    assert not np.array_equal(make_structure(5, 8).positions, a.positions) or len(a) != len(make_structure(5, 8))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_matches_emt(kind):
    atoms = make_structure(0, 1, mix={kind: 1.0}, max_atoms=16, md_steps=3)
    assert atoms.info["kind"] == kind and 1 <= len(atoms) <= 16
    fresh = atoms.copy()
    fresh.calc = EMT()
    np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-10)
    assert set(atoms.get_chemical_symbols()) <= {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"}
    if kind == "surface":
        assert list(atoms.pbc) == [True, True, False]


def test_generate_writes_shards_with_stats(tmp_path):
    url = str(tmp_path / "emt")
    generate(url, 6, seed=3, max_atoms=8, md_steps=2, progress=False)
    manifest = read_manifest(url)
    view = open_shard(f"{url}/{manifest.shards[0].key}", manifest.fields)
    sample = view.sample(0)
    n = len(sample["numbers"])
    assert sample["positions"].shape == (n, 3) and sample["forces"].shape == (n, 3)
    assert manifest.attrs["generator"] == "emt" and 1 <= manifest.attrs["mean_atoms"] <= 8
    assert "n_atoms" in manifest.meta_fields
    attrs = manifest.attrs
    assert attrs["label_keys"] == {"energy": "emt:energy", "forces": "emt:forces", "stress": "emt:stress"}
    kinds = [attrs["config_types"][i] for i in read_meta(url, manifest, "config_type")]
    assert set(kinds) <= {"bulk", "vacancy", "surface", "md"}
    # slabs (pbc T T F) carry no stress label and count as mixed periodicity
    assert attrs["labels"]["stress"] == attrs["periodic"]["all"] == 6 - kinds.count("surface")
    assert set(attrs["elements"]) <= set(METALS) and attrs["neighbor_counts"]["atoms"] == attrs["num_atoms"]
    with pytest.raises(ValueError, match="unknown structure kinds"):
        generate(str(tmp_path / "bad"), 1, mix={"liquid": 1.0}, progress=False)


def test_cli_module_interface(tmp_path, capsys):
    import argparse

    from data.generators import emt

    parser = argparse.ArgumentParser()
    emt.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "cli"), "--num", "3", "--max-atoms", "4", "--md-steps", "1",
                              "--mix", "bulk=1,md=1"])
    assert emt.run(args) == 0
    assert "wrote 3 structures" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not NAME=WEIGHT"):
        emt.run(parser.parse_args(["--out", str(tmp_path / "x"), "--mix", "bulk"]))
