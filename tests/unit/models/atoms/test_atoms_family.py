import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models import load_family
from models.atoms import build_model, prepare_model
from models.atoms.batch import AtomsTransform, collate, voigt_to_matrix
from models.atoms.config import AtomsModelSpec
from models.atoms.loss import loss, metrics


def _spec(**kw):
    return AtomsModelSpec(family="atoms", cutoff=4.0, max_neighbors=24, **kw)


def test_spec_rules_name_the_fields():
    with pytest.raises(ValidationError, match="model.elements"):
        AtomsModelSpec(family="atoms", arch="mace")
    with pytest.raises(ValidationError, match="not defined for model.arch 'mace'"):
        AtomsModelSpec(family="atoms", arch="mace", size="H512L10", elements=["Cu"])
    with pytest.raises(ValidationError, match="'Xx' is not a chemical symbol"):
        AtomsModelSpec(family="atoms", reference_energies={"Xx": 1.0})
    with pytest.raises(ValidationError, match="forces 'direct' is not available"):
        AtomsModelSpec(family="atoms", arch="mace", elements=["Cu"], forces="direct")


@pytest.mark.parametrize("size", ["H512L10", "1B"])
def test_large_sizes_build_on_meta(size):
    with torch.device("meta"):
        model = build_model(AtomsModelSpec(family="atoms", size=size))
    params = sum(p.numel() for p in model.parameters())
    assert (30e6 < params < 60e6) if size == "H512L10" else (0.9e9 < params < 1.1e9)


def test_collate_makes_neighbour_indices_global():
    transform = AtomsTransform(cutoff=3.0, max_neighbors=4, mean_atoms=2.0)
    samples = [{"positions": np.array([[0.0, 0, 0], [2.0, 0, 0]]), "numbers": np.array([29, 29]),
                "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool), "energy": np.array([1.0]),
                "forces": np.zeros((2, 3)), "stress": np.full(6, np.nan)} for _ in range(2)]
    samples[1]["positions"] = np.array([[0.0, 0, 0], [5.0, 0, 0]])  # too far apart: no neighbours
    batch = collate([transform(s) for s in samples])
    assert batch["nbr_idx"][:, 0].tolist() == [1, 0, 2, 3]
    assert batch["nbr_mask"][:, 0].tolist() == [True, True, False, False]
    assert batch["batch"].tolist() == [0, 0, 1, 1] and batch["has_stress"].tolist() == [False, False]
    np.testing.assert_allclose(voigt_to_matrix(np.arange(6.0)), [[0, 5, 4], [5, 1, 3], [4, 3, 2]])


def test_force_loss_weights_every_atom_equally_across_micro_batches():
    spec = _spec(energy_weight=0.0, stress_weight=0.0, loss="mae")
    batch = {"n_atoms": torch.tensor([2, 6]), "energy": torch.zeros(2), "forces": torch.zeros(8, 3),
             "mean_atoms": torch.tensor([4.0, 4.0]), "batch": torch.tensor([0, 0, 1, 1, 1, 1, 1, 1]),
             "stress": torch.zeros(2, 3, 3), "has_stress": torch.tensor([True, True])}
    outputs = {"energy": torch.zeros(2), "forces": torch.ones(8, 3)}
    assert float(loss(outputs, batch, spec)) == pytest.approx(spec.force_weight * 8 / 8)
    small = {**batch, "n_atoms": torch.tensor([2]), "mean_atoms": torch.tensor([4.0]), "forces": torch.zeros(2, 3),
             "energy": torch.zeros(1), "batch": torch.tensor([0, 0])}
    # a micro-batch with fewer atoms than average contributes proportionally less
    assert float(loss({"energy": torch.zeros(1), "forces": torch.ones(2, 3)}, small, spec)) == pytest.approx(
        spec.force_weight * 2 / 4)
    m = metrics(outputs, batch, spec)
    assert m["force_mae_mev_a"].tolist() == [1000.0, 1000.0] and m["force_zero_baseline_mae_mev_a"].sum() == 0


def test_reference_energies_from_manifest_and_spec():
    family = load_family("atoms")
    spec = _spec()
    model = family.build_model(spec)
    prepare_model(model, spec, {"attrs": {"reference_energies": {"Cu": -3.5, "Ni": -4.0}}})
    assert model.ref_energy[29].item() == pytest.approx(-3.5) and model.ref_energy[28].item() == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="training manifest has no attrs.reference_energies"):
        prepare_model(model, spec, {"attrs": {}})
    explicit = family.build_model(_spec(reference_energies={"Al": -2.0}))
    assert explicit.ref_energy[13].item() == pytest.approx(-2.0)


def test_family_contract_on_example_batch():
    family = load_family("atoms")
    spec = _spec()
    batch = family.example_batch(spec, 3)
    model = family.build_model(spec)
    out = model(batch)
    value = family.loss(out, batch, spec)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert all(v.shape == (3,) for v in family.metrics(out, batch, spec).values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    figures = family.plots(model, batch, out, spec)
    assert set(figures) == {"energy_parity", "force_parity"}


def test_mace_baseline_runs_in_the_same_format():
    pytest.importorskip("mace")
    spec = AtomsModelSpec(family="atoms", arch="mace", cutoff=4.0, max_neighbors=24, elements=["Cu", "Ni"],
                          reference_energies={"Cu": -1.0, "Ni": -2.0})
    family = load_family("atoms")
    model = family.build_model(spec)
    batch = family.example_batch(spec, 2)
    out = model(batch)
    family.loss(out, batch, spec).backward()
    assert out["forces"].shape == batch["forces"].shape and out["stress"].shape == (2, 3, 3)
    # an isolated-atom-free check of E0s: energy shifts by the reference energy times the atom count
    shifted = family.build_model(spec.model_copy(update={"reference_energies": {"Cu": 0.0, "Ni": -2.0}}))
    shifted.load_state_dict({k: v for k, v in model.state_dict().items() if "atomic_energies" not in k}, strict=False)
    model.eval(), shifted.eval()
    diff = model(batch)["energy"] - shifted(batch)["energy"]
    torch.testing.assert_close(diff, -batch["n_atoms"].float(), atol=1e-4, rtol=1e-5)


def test_mace_medium_matches_mace_mp_size_on_meta():
    pytest.importorskip("mace")
    from models.atoms.config import ELEMENTS

    with torch.device("meta"):
        model = build_model(AtomsModelSpec(family="atoms", arch="mace", size="medium", elements=ELEMENTS[1:90]))
    # MACE-MP medium: 128x0e+128x1o, 89 elements -> 4.69M parameters
    assert sum(p.numel() for p in model.parameters()) == 4_688_400
    assert next(model.parameters()).device.type == "meta"
