"""MACE's avg_num_neighbors measured from the data: histogram against a direct count, and prepare_model."""

import numpy as np
import pytest
import torch

from data.format import read_manifest
from data.generators.emt import generate
from models import load_family
from models.atoms import build_model, measured_avg_num_neighbors, prepare_model
from models.atoms.config import AtomsModelSpec
from models.atoms.neighbors import mean_neighbor_count

pytest.importorskip("mace")


@pytest.fixture(scope="module")
def emt_set(tmp_path_factory):
    """Bulk, vacancy, slab (pbc T T F) and MD structures."""
    url = str(tmp_path_factory.mktemp("emt") / "train")
    generate(url, 8, seed=3, md_steps=2, progress=False)
    return url, read_manifest(url)


def _direct_mean(url, manifest, cutoff):
    """Edges per atom as mace-torch builds its graph (mace.data.neighborhood, matscipy underneath)."""
    from mace.data.neighborhood import get_neighborhood

    from data.format import open_shard

    edges = atoms = 0
    for shard in manifest.shards:
        view = open_shard(f"{url}/{shard.key}", manifest.fields)
        for i in range(view.num_samples):
            s = view.sample(i)
            pbc = tuple(bool(p) for p in s["pbc"])
            edge_index, *_ = get_neighborhood(np.array(s["positions"]), cutoff, pbc, np.array(s["cell"]))
            edges, atoms = edges + edge_index.shape[1], atoms + len(s["numbers"])
    return edges / atoms


def test_measured_neighbour_count_equals_a_direct_count(emt_set):
    url, manifest = emt_set
    counts = manifest.attrs["neighbor_counts"]
    assert counts["max_radius"] == 20.0 and counts["atoms"] == manifest.attrs["num_atoms"]
    assert manifest.attrs["periodic"]["all"] + manifest.attrs["periodic"]["mixed"] == 8
    for cutoff in (3.0, 4.0, 5.5):  # bin edges: exact
        assert mean_neighbor_count(counts, cutoff) == pytest.approx(_direct_mean(url, manifest, cutoff), rel=1e-12)
    between = mean_neighbor_count(counts, 4.02)  # inside a bin: interpolated between its edges
    assert mean_neighbor_count(counts, 4.0) <= between <= mean_neighbor_count(counts, 4.05)
    with pytest.raises(ValueError, match="measured up to 20 A, but the cutoff is 25 A"):
        mean_neighbor_count(counts, 25.0)


def _spec(**kw):
    return AtomsModelSpec(family="atoms", arch="mace", cutoff=4.0, max_neighbors=24, elements=["Cu"], **kw)


def test_prepare_model_sets_the_measured_value_and_it_takes_effect(emt_set):
    _, manifest = emt_set
    spec = _spec()
    expected = mean_neighbor_count(manifest.attrs["neighbor_counts"], 4.0)
    model = build_model(spec)  # built with a placeholder, set from the manifest afterwards
    prepare_model(model, spec, manifest)
    assert [b.avg_num_neighbors for b in model.mace.interactions] == [pytest.approx(expected)] * 2
    built_with = build_model(_spec(mace_avg_num_neighbors=expected))  # given at construction instead
    built_with.load_state_dict({k: v for k, v in model.state_dict().items() if k != "avg_num_neighbors"})
    batch = load_family("atoms").example_batch(spec, 2)
    model.eval(), built_with.eval()
    energy = model(batch)["energy"]
    torch.testing.assert_close(energy, built_with(batch)["energy"])
    built_with.set_avg_num_neighbors(1.0)
    assert not torch.allclose(energy, built_with(batch)["energy"])  # the blocks read the value at run time
    built_with.load_state_dict(model.state_dict())  # as the calculator and the export restore a trained model
    assert built_with.mace.interactions[1].avg_num_neighbors == pytest.approx(expected)
    torch.testing.assert_close(energy, built_with(batch)["energy"])


def test_missing_neighbour_counts_say_what_to_do(emt_set):
    _, manifest = emt_set
    attrs = {k: v for k, v in manifest.attrs.items() if k != "neighbor_counts"}
    with pytest.raises(ValueError, match=r"model.mace_avg_num_neighbors is null .* no attrs.neighbor_counts; "
                                         r"hint: regenerate or convert"):
        measured_avg_num_neighbors(attrs, 4.0)
    counts = manifest.attrs["neighbor_counts"]
    assert measured_avg_num_neighbors(manifest.attrs, 4.0) == mean_neighbor_count(counts, 4.0)
    with pytest.raises(ValueError, match=r"model.cutoff vs the training manifest's neighbor_counts: .* "
                                         r"--neighbor-radius >= 21"):
        measured_avg_num_neighbors(manifest.attrs, 21.0)
