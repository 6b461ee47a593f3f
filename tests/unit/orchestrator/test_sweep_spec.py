"""The sweep: section and the trials a sweep runs, checked before anything starts (no Ray)."""

from __future__ import annotations

import copy

import pytest

from orchestrator import cli, sweep
from orchestrator.specload import SpecError, validate_spec

BASE = {"name": "s", "model": {"family": "pde", "arch": "fno", "size": "debug", "in_channels": 2, "resolution": 16},
        "data": {"train": [{"url": "/d/train"}], "val": [{"url": "/d/val"}], "canonical_streams": 4},
        "train": {"global_batch_size": 8, "micro_batch_size": 4, "max_steps": 12, "eval_every": 4}}


def _raw(**sweep_fields) -> dict:
    raw = copy.deepcopy(BASE)
    raw["sweep"] = {"parameters": {"optim.lr": {"values": [1e-3, 1e-2]}, "model.width": {"values": [8, 16]}},
                    **sweep_fields}
    return raw


def _problems(raw: dict) -> str:
    with pytest.raises(SpecError) as err:
        validate_spec(raw)
    return str(err.value)


def test_grid_is_every_combination_times_the_repeats():
    spec = validate_spec(_raw(num_samples=2))
    combos = sweep.grid(spec.sweep)
    assert len(combos) == 8 and combos[:4] == combos[4:]
    assert {(c["optim.lr"], c["model.width"]) for c in combos} == {(1e-3, 8), (1e-3, 16), (1e-2, 8), (1e-2, 16)}
    assert sweep.check_trials(_raw(num_samples=2), spec.sweep, "s.yaml") == combos[:4]


def test_a_trial_is_the_base_spec_with_its_values_and_no_sweep():
    raw = _raw()
    trial = sweep.trial_raw(raw, {"optim.lr": 0.01, "data.train.0.url": "/other"})
    assert "sweep" not in trial and trial["optim"]["lr"] == 0.01 and trial["data"]["train"][0]["url"] == "/other"
    assert "sweep" in raw and "optim" not in raw  # the base is not touched
    assert validate_spec(trial).sweep is None


def test_bad_trials_are_refused_before_the_sweep_naming_each():
    raw = _raw()
    raw["sweep"]["parameters"] = {"optim.lrr": {"values": [1e-3]}, "model.size": {"values": ["debug", "XXL"]}}
    spec = validate_spec(raw)  # the section itself is well formed; its trials are not
    with pytest.raises(SpecError) as err:
        sweep.check_trials(raw, spec.sweep, "s.yaml")
    text = str(err.value)
    assert "optim.lrr" in text and "did you mean 'lr'" in text
    assert "model.size" in text and "received: XXL" in text
    assert "(in the trial optim.lrr=0.001, model.size=XXL)" in text


def test_a_range_of_the_wrong_type_is_refused_at_its_ends():
    raw = _raw(method="random", num_samples=3)
    raw["sweep"]["parameters"] = {"train.max_steps": {"uniform": [10.5, 20.5]}}
    with pytest.raises(SpecError) as err:
        sweep.check_trials(raw, validate_spec(raw).sweep, "s.yaml")
    assert "train.max_steps" in str(err.value) and "10.5" in str(err.value)


@pytest.mark.parametrize("sweep_fields, expected", [
    ({"method": "grid", "parameters": {"optim.lr": {"log_uniform": [1e-4, 1e-2]}}}, "takes values lists only"),
    ({"method": "scaling", "parameters": {"model.width": {"values": [8, 16, 32]},
                                          "train.max_steps": {"values": [10, 20]}}},
     "at least 3 values on its data budget D axis"),
    ({"method": "scaling", "parameters": {"optim.lr": {"values": [1, 2, 3]}, "train.max_steps": {"values": [1, 2, 3]}}},
     "at least 3 values on its model size N axis (a model.* field)"),
    ({"parameters": {"optim.lr": {"log_uniform": [0, 1e-2]}}}, "expected low > 0"),
    ({"parameters": {"optim.lr": {"uniform": [1e-2, 1e-3]}}}, "low < high"),
    ({"parameters": {"optim.lr": {"values": [1], "uniform": [1, 2]}}}, "exactly one of"),
    ({"metric": "train/los"}, "did you mean 'train/loss'"),
    ({"metric": "loss"}, "not a metric trials log"),
    ({"metric": "eval/rel_l1"}, "train.eval_suite_every > 0"),
    ({"early_stop": {"grace_steps": 12}}, "no trial could be stopped"),
])
def test_bad_sweep_sections_say_why(sweep_fields, expected):
    raw = _raw(**sweep_fields)
    if "parameters" in sweep_fields:
        raw["sweep"]["parameters"] = sweep_fields["parameters"]
    assert expected in _problems(raw)


def test_early_stop_needs_evaluations():
    raw = _raw(early_stop={"grace_steps": 4})
    del raw["train"]["eval_every"]
    assert "set train.eval_every" in _problems(raw)


def test_search_spaces_become_tune_domains():
    from ray import tune

    raw = _raw(method="random", num_samples=4)
    raw["sweep"]["parameters"] = {"optim.lr": {"log_uniform": [1e-4, 1e-2]}, "train.max_steps": {"int_uniform": [4, 8]},
                                  "model.size": {"values": ["debug", "T"]}}
    space = sweep.param_space(validate_spec(raw).sweep)
    assert isinstance(space["optim.lr"], tune.search.sample.Float)
    assert (space["optim.lr"].lower, space["optim.lr"].upper) == (1e-4, 1e-2)
    assert isinstance(space["optim.lr"].get_sampler(), tune.search.sample.LogUniform)
    assert (space["train.max_steps"].lower, space["train.max_steps"].upper) == (4, 9)  # both ends included
    assert space["model.size"].categories == ["debug", "T"]
    grid = sweep.param_space(validate_spec(_raw()).sweep)
    assert grid["model.width"] == {"grid_search": [8, 16]}


def test_trial_run_ids_follow_tune_trial_indices():
    assert sweep.trial_run_id("s-sweep-1", "a1b2c_00003") == "s-sweep-1-t00003"


def test_launch_of_a_sweep_spec_says_to_use_sweep(tmp_path, capsys):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    assert cli.main(["launch", str(path)]) == 2  # before its (missing) data is looked at
    err = capsys.readouterr().err
    assert "has a sweep: section" in err and f"sciscale sweep {path}" in err and "--set sweep=null" in err
