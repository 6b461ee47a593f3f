"""muP on scOT (models/mup.py): the coordinate check, the multipliers, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from models import load_family
from models.mup import lr_multiplier, roles
from models.pde.config import PdeModelSpec
from orchestrator.spec import AdamWSpec
from orchestrator.specload import SpecError, validate_spec
from trainers.optimizers import build_optimizer

FAMILY = load_family("pde")
BASE = 6  # scOT debug's first stage has 3 heads; widths 6, 12, 24, 48 (1x to 8x) train in seconds on CPU
WATCHED = ("embed", "encoder.3.layers.0.mlp.2", "decoder.3.layers.0.mlp.2", "recovery")


def _spec(width: int, mup: bool) -> PdeModelSpec:
    return PdeModelSpec(family="pde", arch="scot", size="debug", in_channels=2, resolution=32, width=width,
                        residual=False, mup={"base_width": BASE} if mup else None)


def test_coordinate_check(coordinates):
    """Widths 1x to 8x after 3 AdamW steps at lr 1e-2. Standard parameterisation: hidden activations and the
    output grow with width. muP: no layer grows, and from 2x to 8x none shrinks either (within a factor 1.6;
    without muP's scaling of Adam's epsilon the last stage's shrank 3x). 1x differs: its readout's initial part,
    which muP's 1/width readout multiplier shrinks, and its head width of 2."""
    widths = [BASE * k for k in (1, 2, 4, 8)]
    standard, mup = coordinates("pde", _spec, widths, WATCHED)
    lo, hi = widths[0], widths[-1]
    assert standard[hi]["encoder.3.layers.0.mlp.2"] > 4 * standard[lo]["encoder.3.layers.0.mlp.2"]
    assert standard[hi]["output change"] > 1.4 * standard[lo]["output change"]
    for key in mup[lo]:
        assert mup[hi][key] <= 1.25 * mup[lo][key], (key, mup)
        values = [mup[w][key] for w in widths[1:]]
        assert max(values) <= 1.6 * min(values), (key, values)
    changes = [mup[w]["output change"] for w in widths[1:]]
    assert max(changes) <= 1.2 * min(changes), changes


def test_roles_and_learning_rates():
    model = FAMILY.build_model(_spec(4 * BASE, mup=True))
    found = roles(model, FAMILY.build_model(_spec(BASE, mup=False)))
    assert found["encoder.0.layers.0.attn.qkv.weight"] == ("hidden", 4.0)
    assert found["recovery.weight"] == ("readout", 4.0)  # a transposed convolution: fan-in is its first dimension
    assert found["embed.weight"][0] == "input"
    params = dict(model.named_parameters())
    assert lr_multiplier(params["encoder.0.layers.0.attn.qkv.weight"]) == 0.25
    assert lr_multiplier(params["recovery.weight"]) == 1.0 and lr_multiplier(params["embed.weight"]) == 1.0
    groups = build_optimizer(model, AdamWSpec(lr=1e-3)).param_groups
    assert {(g["lr"], g["eps"]) for g in groups} == {(1e-3, 1e-8), (2.5e-4, 2.5e-9)}  # epsilon follows the rate


def test_muP_is_rebuilt_from_the_spec():
    """A resume, an elastic restart or a logged model's load builds the model from its spec, which carries
    model.mup: the readout multiplier and the learning-rate multipliers are back, so saved weights give the same
    outputs."""
    spec = _spec(2 * BASE, mup=True)
    trained = FAMILY.build_model(spec)
    batch = FAMILY.example_batch(spec, 2)
    again = FAMILY.build_model(PdeModelSpec.model_validate(spec.model_dump()))
    again.load_state_dict(trained.state_dict())
    torch.testing.assert_close(again(batch), trained(batch))
    plain = FAMILY.build_model(_spec(2 * BASE, mup=False))
    plain.load_state_dict(trained.state_dict())
    assert not torch.allclose(plain(batch), trained(batch))  # without model.mup the readout differs


@pytest.mark.parametrize("model,optim,message", [
    ({"arch": "fno", "size": "debug"}, {}, "model.mup is implemented for model.arch scot only"),
    ({"width": 24, "mup": {"base_width": 7}}, {}, "model.mup.base_width 7 must be a multiple of 3"),
    ({"width": 24, "mup": {"base_width": 6}}, {"name": "sgd"}, "optim.name=sgd with model.mup"),
])
def test_mup_refused(model, optim, message):
    raw = yaml.safe_load((Path(__file__).resolve().parents[4] / "examples/pde/ns_debug_scot.yaml").read_text())
    raw["model"].update({"mup": {"base_width": 6}, **model})
    raw["optim"] = optim or raw["optim"]
    with pytest.raises(SpecError, match=message):
        validate_spec(raw)


def test_logged_model_keeps_mup_and_fine_tune_checks_it(tmp_path):
    """The logged model's files (mlflow.pytorch pickle, weights.safetensors) keep the readout multiplier and name
    model.mup; a fine-tune from them into a spec without it is refused."""
    import mlflow.pytorch

    from trainers import weights

    spec = _spec(2 * BASE, mup=True)
    model = FAMILY.build_model(spec)
    weights.write_model(model.state_dict(), FAMILY.build_model, spec, str(tmp_path / "model"), pip_requirements=[])
    batch = FAMILY.example_batch(spec, 2)
    loaded = mlflow.pytorch.load_model(str(tmp_path / "model"))
    torch.testing.assert_close(loaded(batch), model.eval()(batch))
    path = str(tmp_path / "model" / "weights.safetensors")
    weights.load_initial(FAMILY.build_model(spec), path, model_spec=spec)
    with pytest.raises(ValueError, match="was trained with model.mup"):
        weights.load_initial(FAMILY.build_model(_spec(2 * BASE, mup=False)), path, model_spec=_spec(2 * BASE, False))
