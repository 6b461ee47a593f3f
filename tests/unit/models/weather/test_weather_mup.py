"""muP on ClimaX (models/mup.py): the coordinate check, the roles and attention scale, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from models import load_family
from models.mup import lr_multiplier, roles
from models.weather.config import WeatherModelSpec
from orchestrator.specload import SpecError, validate_spec

FAMILY = load_family("weather")
BASE = 16  # ClimaX debug has 4 heads; widths 16, 32, 64, 128 (1x to 8x), head widths 4 to 32
WATCHED = ("var_agg", "blocks.0.mlp.2", "blocks.2.mlp.2", "head.0", "head.2")


def _spec(width: int, mup: bool) -> WeatherModelSpec:
    return WeatherModelSpec(arch="climax", size="debug", variables=["z500", "t850", "t2m"], grid=(16, 32),
                            width=width, residual=False, mup={"base_width": BASE} if mup else None)


def test_coordinate_check(coordinates):
    """Widths 1x to 8x after 3 AdamW steps at lr 1e-2. Standard parameterisation: the blocks' activations and
    the output's change grow with width (5x to 20x from 1x to 8x). muP (with 1/d attention and the base's
    initial spread, which for the Xavier-initialised variable pooling is not a constant std): every layer
    stays within a factor 1.6 over all widths, neither growing nor shrinking."""
    widths = [BASE * k for k in (1, 2, 4, 8)]
    standard, mup = coordinates("weather", _spec, widths, WATCHED)
    lo, hi = widths[0], widths[-1]
    assert standard[hi]["blocks.2.mlp.2"] > 2 * standard[lo]["blocks.2.mlp.2"]
    assert standard[hi]["output change"] > 1.4 * standard[lo]["output change"]
    for key in mup[lo]:
        values = [mup[w][key] for w in widths]
        assert max(values) <= 1.6 * min(values), (key, values)


def test_roles_attention_scale_and_learning_rates():
    model = FAMILY.build_model(_spec(4 * BASE, mup=True))
    found = roles(model, FAMILY.build_model(_spec(BASE, mup=False)))
    assert found["blocks.0.qkv.weight"] == ("hidden", 4.0)
    assert found["var_agg.in_proj_weight"] == ("hidden", 4.0)  # the packed query-key-value projection
    assert found["head.2.weight"] == ("readout", 4.0) and found["lead_embed.weight"][0] == "input"
    params = dict(model.named_parameters())
    assert lr_multiplier(params["var_agg.in_proj_weight"]) == 0.25 == lr_multiplier(params["blocks.1.mlp.0.weight"])
    assert lr_multiplier(params["patch_weight"]) == 1.0 and lr_multiplier(params["head.2.weight"]) == 1.0
    # 1/d_head at head width 16, equal to the standard 1/sqrt(4) at the base head width 4
    assert model.blocks[0].scale == pytest.approx(2 / 16) and model.var_agg.scale == pytest.approx(2 / 16)
    assert FAMILY.build_model(_spec(BASE, mup=True)).blocks[0].scale == pytest.approx(4 ** -0.5)


def test_variable_pool_matches_torch_multihead_attention():
    """ClimaX's variable aggregation keeps torch's MultiheadAttention's parameter names and computes the same,
    so checkpoints written before it load and give the same outputs."""
    from models.weather.climax import VariablePool

    torch.manual_seed(0)
    ours, reference = VariablePool(16, 4), torch.nn.MultiheadAttention(16, 4, batch_first=True)
    reference.load_state_dict(ours.state_dict())
    query, tokens = torch.randn(5, 1, 16), torch.randn(5, 3, 16)
    torch.testing.assert_close(ours(query, tokens), reference(query, tokens, tokens, need_weights=False)[0])


def test_mup_rebuilt_from_the_spec():
    spec = _spec(2 * BASE, mup=True)
    trained = FAMILY.build_model(spec)
    batch = FAMILY.example_batch(spec, 2)
    again = FAMILY.build_model(WeatherModelSpec.model_validate(spec.model_dump()))
    again.load_state_dict(trained.state_dict())
    torch.testing.assert_close(again(batch), trained(batch))


@pytest.mark.parametrize("model,message", [
    ({"arch": "sfno"}, "model.width and model.mup are implemented for model.arch climax only"),
    ({"width": 48, "mup": {"base_width": 18}}, "model.mup.base_width 18 must be a multiple of 4"),
    ({"width": 30}, "model.width 30 must be a multiple of 4"),
])
def test_mup_refused(model, message):
    raw = yaml.safe_load((Path(__file__).resolve().parents[4] / "examples/weather/climax_debug.yaml").read_text())
    raw["model"].update({"width": 32, "mup": {"base_width": 16}, **model})
    with pytest.raises(SpecError, match=message):
        validate_spec(raw)
