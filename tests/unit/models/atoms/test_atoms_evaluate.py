"""The atoms eval suite: energy/force/stress MAE, force cosine, EFwT and per-element force MAE against a
hand computation on a tiny hand-made batch, and the whole suite (with the NVE and FIRE checks, few steps)
on generated EMT structures with a fresh debug EScAIP."""

import numpy as np
import pytest
import torch

from models.family import EvalOptions

# three real structures and one padding structure (a copy of the first with garbage predictions)
NUMBERS = [[29, 13], [29], [13, 13], [29, 13]]
E_REF = np.array([-7.0, -3.5, -6.0, -7.0])
E_PRED = np.array([-7.01, -3.49, -6.03, 99.0])  # C: 0.03 eV total (0.015 eV/atom) fails EFwT on energy
F_REF = [[[0.1, 0, 0], [0, 0.2, 0]], [[0.3, -0.1, 0.2]], [[0.0, 0.05, 0.0], [0.0, -0.05, 0.0]],
         [[0.1, 0, 0], [0, 0.2, 0]]]
F_PRED = [[[0.12, 0.01, 0], [0, 0.18, -0.02]], [[0.25, -0.1, 0.2]],  # B: a 0.05 eV/A component fails EFwT
          [[0.01, 0.04, 0.0], [0.0, -0.06, 0.01]], [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]]
HAS_STRESS = [True, False, True, True]
S_REF = np.arange(4 * 9, dtype=float).reshape(4, 3, 3) * 1e-3
S_PRED = S_REF + np.array([0.001, 0.5, -0.002, 7.0])[:, None, None]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch():
    counts = [len(z) for z in NUMBERS]
    t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    positions = np.concatenate([np.arange(3 * n).reshape(n, 3) * 0.7 for n in counts])
    return {"positions": t(positions), "numbers": t(sum(NUMBERS, []), torch.int64),
            "forces": t(np.concatenate(F_REF)),
            "batch": torch.repeat_interleave(torch.arange(4), t(counts, torch.int64)),
            "n_atoms": t(counts, torch.int64), "cell": t(np.tile(np.eye(3) * 5, (4, 1, 1))), "energy": t(E_REF),
            "stress": t(S_REF), "has_stress": t(HAS_STRESS, torch.bool), "pbc": torch.ones(4, 3, dtype=torch.bool),
            "sample_id": torch.arange(4), "_valid": torch.tensor([True, True, True, False])}


class _Fixed(torch.nn.Module):
    """Returns the hand-made predictions (float64, as a real model's outputs would be in float32)."""

    def forward(self, batch):
        return {"energy": torch.as_tensor(E_PRED), "forces": torch.as_tensor(np.concatenate(F_PRED)),
                "stress": torch.as_tensor(S_PRED)}


def _spec():
    from models.atoms.config import AtomsModelSpec

    return AtomsModelSpec(family="atoms", cutoff=4.0, max_neighbors=24, reference_energies={"Cu": -3.5})


def _hand(real):
    """By hand over the structures in ``real``: per-atom energy MAE, atom-weighted force MAE, mean cosine over
    atoms, EFwT on the total energy and the largest force component error, stress MAE, per-element MAE."""
    n = np.array([len(NUMBERS[i]) for i in real])
    de = np.abs(E_PRED[real] - E_REF[real])
    df = [np.abs(np.array(F_PRED[i]) - np.array(F_REF[i])) for i in real]
    cos = [np.sum(np.array(F_PRED[i]) * np.array(F_REF[i]), 1)
           / (np.linalg.norm(F_PRED[i], axis=1) * np.linalg.norm(F_REF[i], axis=1)) for i in real]
    ok = [de[j] < 0.02 and df[j].max() < 0.03 for j in range(len(real))]
    stressed = [i for i in real if HAS_STRESS[i]]
    per_element = {}
    for sym, z in (("Cu", 29), ("Al", 13)):
        rows = [df[j][k] for j, i in enumerate(real) for k, zz in enumerate(NUMBERS[i]) if zz == z]
        if rows:
            per_element[sym] = 1000 * np.mean(rows)
    return {"energy_mae_mev_atom": 1000 * np.mean(de / n), "energy_mae_mev": 1000 * np.mean(de),
            "force_mae_mev_a": 1000 * np.concatenate(df).mean(), "force_cosine": np.concatenate(cos).mean(),
            "efwt": np.mean(ok), "stress_mae_mev_a3": 1000 * np.mean([np.abs(S_PRED[i] - S_REF[i]).mean()
                                                                      for i in stressed]),
            **{f"force_mae_mev_a/{k}": v for k, v in per_element.items()}}


def test_scores_match_a_hand_computation_and_padding_is_not_counted():
    from models.atoms.evaluate import evaluate

    report = evaluate(_Fixed(), [_batch()], _spec(), None, EvalOptions(plots=False, physical_checks=False))
    expected = _hand([0, 1, 2])
    assert report.samples == 3
    for name, value in expected.items():
        assert report.scores[name] == pytest.approx(value, rel=1e-6), name
    assert report.scores["efwt"] == pytest.approx(1 / 3)  # only A: B fails on a force, C on the total energy
    zero = 1000 * np.abs(np.concatenate(F_REF[:3])).mean()
    assert report.scores["force_mae_zero_baseline_mev_a"] == pytest.approx(zero, rel=1e-6)
    assert [r["score"] for r in report.table][:2] == ["energy_mae_mev_atom", "energy_mae_mev"]
    assert report.table[0]["unit"] == "meV/atom" and set(report.table[0]) == set(report.columns)


def test_max_samples_stops_after_that_many_structures():
    from models.atoms.evaluate import evaluate

    report = evaluate(_Fixed(), [_batch(), _batch()], _spec(), None,
                      EvalOptions(max_samples=2, plots=False, physical_checks=False))
    assert report.samples == 2
    for name, value in _hand([0, 1]).items():
        assert report.scores[name] == pytest.approx(value, rel=1e-6), name


@pytest.fixture(scope="module")
def emt_val(tmp_path_factory):
    from data.generators.emt import generate

    url = str(tmp_path_factory.mktemp("emt") / "val")
    return url, generate(url, 6, seed=1, max_atoms=16, md_steps=5, progress=False)


def test_suite_end_to_end_with_physical_checks(emt_val, monkeypatch):
    import models.atoms.evaluate as atoms_eval
    from data.loader import build_loader
    from data.spec import DataSpec
    from models import load_family

    monkeypatch.setattr(atoms_eval, "MD_STEPS", 20)
    monkeypatch.setattr(atoms_eval, "RELAX_MAX_STEPS", 10)
    url, manifest = emt_val
    spec = _spec().model_copy(update={"reference_energies": "fit"})
    family = load_family("atoms")
    torch.manual_seed(0)
    model = family.build_model(spec)
    family.prepare_model(model, spec, manifest)
    model.eval()
    data = DataSpec(train=[{"url": url}], val=[{"url": url}], prefetch=1, num_workers=0)
    loader = build_loader(data, data.val, split="val", rank=0, world_size=1, global_batch=4, micro_batch=4, seed=0,
                          transform=family.eval_suite.make_transform(spec, manifest), collate=family.collate)
    try:
        report = family.eval_suite.evaluate(model, loader, spec, manifest, EvalOptions())
    finally:
        loader.close()
    assert report.samples == 6
    core = {"energy_mae_mev_atom", "energy_mae_mev", "force_mae_mev_a", "force_mae_zero_baseline_mev_a",
            "force_cosine", "efwt", "stress_mae_mev_a3", "nve_drift_mev_atom", "nve_drift_rate_mev_atom_ps",
            "nve_max_excursion_mev_atom", "fire_converged_fraction", "fire_mean_steps"}
    assert core <= set(report.scores)
    assert {k.split("/")[1] for k in report.scores if k.startswith("force_mae_mev_a/")}  # per element
    assert all(np.isfinite(v) for v in report.scores.values())
    assert 0 <= report.scores["fire_mean_steps"] <= 10 and -1 <= report.scores["force_cosine"] <= 1
    rows = {r["score"]: r for r in report.table}
    assert rows["nve_steps"]["value"] == 20 and "nve_wall_s" in rows
    assert set(report.figures) == {"energy_parity", "force_parity", "nve_energy"}
    # the physical checks ran on a float64 copy: the model under evaluation is untouched
    assert next(model.parameters()).dtype == torch.float32
