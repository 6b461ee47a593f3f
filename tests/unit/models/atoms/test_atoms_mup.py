"""muP on EScAIP (models/mup.py): the coordinate check, the roles and attention scale, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from models import load_family
from models.atoms.config import AtomsModelSpec
from models.mup import lr_multiplier, roles
from orchestrator.specload import SpecError, validate_spec

FAMILY = load_family("atoms")
BASE = 16  # EScAIP debug has 2 heads; widths 16, 32, 64, 128 (1x to 8x)
WATCHED = ("blocks.0.ffn.2", "blocks.1.ffn.2", "blocks.1.node_mlp.2", "energy_head.1.0", "energy_head.1.2")


def _spec(width: int, mup: bool) -> AtomsModelSpec:
    return AtomsModelSpec(family="atoms", cutoff=4.0, max_neighbors=12, reference_energies={"Cu": -3.5},
                          width=width, mup={"base_width": BASE} if mup else None)


def test_coordinate_check(coordinates):
    """Widths 1x to 8x after 3 AdamW steps at lr 3e-3 (energy, forces and stress in the loss; at 1e-2 the
    standard 8x model diverges). Standard parameterisation: the energy's change grows 10x and the node update
    5x from 1x to 8x. muP: the hidden layers stay within a factor 1.7; the energy's change does not grow but
    falls about 2x (bounded at 2.5x; the per-atom energies, near zero in the 1x model, vary 4.3x and are not
    bounded): EScAIP's forces, a derivative of the energy, are not covered by muP's derivation, and
    this is recorded in docs/optimizers.md as a shortfall."""
    widths = [BASE * k for k in (1, 2, 4, 8)]
    standard, mup = coordinates("atoms", _spec, widths, WATCHED, lr=3e-3)
    lo, hi = widths[0], widths[-1]
    assert standard[hi]["output change"] > 5 * standard[lo]["output change"]
    assert standard[hi]["blocks.1.node_mlp.2"] > 3 * standard[lo]["blocks.1.node_mlp.2"]
    for key, bound in (*((k, 1.7) for k in WATCHED[:4]), ("output change", 2.5)):
        values = [mup[w][key] for w in widths]
        assert max(values) <= bound * min(values), (key, values)
    assert mup[hi]["output change"] < 0.2 * standard[hi]["output change"]


def test_roles_attention_scale_and_learning_rates():
    model = FAMILY.build_model(_spec(4 * BASE, mup=True))
    found = roles(model, FAMILY.build_model(_spec(BASE, mup=False)))
    assert found["blocks.0.qkv.weight"] == ("hidden", 4.0) and found["blocks.1.node_mlp.0.weight"] == ("hidden", 4.0)
    assert found["energy_head.1.2.weight"] == ("readout", 4.0) and found["boo_in.weight"][0] == "input"
    params = dict(model.named_parameters())
    assert lr_multiplier(params["blocks.0.out.weight"]) == 0.25
    assert lr_multiplier(params["embed_node.weight"]) == 1.0 and lr_multiplier(params["energy_head.1.2.weight"]) == 1.0
    # 1/d_head at head width 32, equal to the standard 1/sqrt(8) at the base head width 8
    assert model.blocks[0].scale == pytest.approx(8 ** 0.5 / 32)
    assert FAMILY.build_model(_spec(BASE, mup=True)).blocks[0].scale == pytest.approx(8 ** -0.5)


def test_mup_rebuilt_from_the_spec():
    spec = _spec(2 * BASE, mup=True)
    trained = FAMILY.build_model(spec)
    batch = FAMILY.example_batch(spec, 2)
    again = FAMILY.build_model(AtomsModelSpec.model_validate(spec.model_dump()))
    again.load_state_dict(trained.state_dict())
    torch.testing.assert_close(again(batch)["energy"], trained(batch)["energy"])


@pytest.mark.parametrize("model,message", [
    ({"arch": "mace", "elements": ["Cu"]}, "model.width and model.mup are implemented for model.arch escaip only"),
    ({"width": 48, "mup": {"base_width": 15}}, "model.mup.base_width 15 must be a multiple of 2"),
    ({"width": 33}, "model.width 33 must be a multiple of 2"),
])
def test_mup_refused(model, message):
    raw = yaml.safe_load((Path(__file__).resolve().parents[4] / "examples/atoms/emt_debug_escaip.yaml").read_text())
    raw["model"].update({"width": 32, "mup": {"base_width": 16}, **model})
    with pytest.raises(SpecError, match=message):
        validate_spec(raw)
