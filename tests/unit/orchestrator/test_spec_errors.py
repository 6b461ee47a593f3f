"""Every rejected spec gives one screen: field path, received value, what was expected; exit code 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main

BASE = {
    "name": "ns-debug",
    "model": {"family": "pde", "arch": "fno", "size": "debug", "in_channels": 1, "resolution": 32},
    "data": {"train": [{"url": "s3://bucket/ns2d"}], "val": [{"url": "s3://bucket/ns2d-val"}]},
    "optim": {"lr": 1e-3},
    "train": {"global_batch_size": 16, "micro_batch_size": 2, "max_steps": 10},
    "distributed": {"workers": 2, "zero_stage": 2},
}


def _set(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if value is _DELETE:
        del node[keys[-1]]
    elif isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return d


_DELETE = object()

# (case id, path to change, new value, text the message must contain)
CASES = [
    ("name-type", "name", ["a"], "name"),
    ("name-pattern", "name", "bad name!", "name"),
    ("missing-name", "name", _DELETE, "required field is missing"),
    ("missing-train", "train", _DELETE, "train"),
    ("unknown-top-key", "trian", {"max_steps": 1}, "did you mean 'train'"),
    ("unknown-train-key", "train.max_step", 5, "did you mean 'max_steps'"),
    ("unknown-optim-key", "optim.learning_rate", 0.1, "allowed keys here"),
    ("family-misspelled", "model.family", "pdee", "did you mean 'pde'"),
    ("arch-misspelled", "model.arch", "fnoo", "did you mean 'fno'"),
    ("size-unknown", "model.size", "huge", "model.size"),
    ("channels-type", "model.in_channels", "three", "model.in_channels"),
    ("channels-zero", "model.in_channels", 0, "greater than or equal to 1"),
    ("lr-negative", "optim.lr", -1.0, "optim.lr"),
    ("lr-string", "optim.lr", "fast", "optim.lr"),
    ("optimizer-unknown", "optim.name", "adamm", "did you mean 'adam'"),
    ("schedule-kind", "optim.schedule.kind", "cosin", "did you mean 'cosine'"),
    ("warmup-negative", "optim.schedule.warmup_steps", -5, "warmup_steps"),
    ("max-steps-zero", "train.max_steps", 0, "train.max_steps"),
    ("micro-bigger", "train.micro_batch_size", 32, "valid world sizes"),
    ("global-not-multiple", "train.global_batch_size", 18, "valid world sizes"),
    ("precision", "train.precision", "fp16", "train.precision"),
    ("zero-stage", "distributed.zero_stage", 4, "distributed.zero_stage"),
    ("workers-zero", "distributed.workers", 0, "distributed.workers"),
    ("workers-range-inverted", "distributed.workers", {"min": 4, "max": 2}, "larger than workers.max"),
    ("workers-range-impossible", "distributed.workers", {"min": 1, "max": 3}, "world size 3"),
    ("offload-params-stage2", "distributed.offload_params", True, "zero_stage 3"),
    ("offload-optim-stage0", "distributed.zero_stage", 0, None),  # valid alone: combined below
    ("streams-not-divisible", "data.canonical_streams", 3, "canonical_streams"),
    ("train-empty", "data.train", [], "data.train"),
    ("url-scheme", "data.train.0.url", "ftp://host/data", "unsupported URL scheme"),
    ("url-no-bucket", "data.train.0.url", "s3://", "needs a bucket"),
    ("weight-negative", "data.train.0.weight", -1, "weight"),
    ("eval-without-val", "data.val", [], "needs data.val"),
    ("tracking-uri", "tracking.uri", "localhost:5000", "tracking URI"),
    ("system-metrics-subsecond", "tracking.system_metrics_every_s", 0.2, "at least 1 second"),
    ("system-metrics-negative", "tracking.system_metrics_every_s", -1, "tracking.system_metrics_every_s"),
    ("runs-root-scheme", "storage.runs_root", "hdfs://x/y", "unsupported URL scheme"),
    ("resources-negative", "distributed.resources_per_worker", {"CPU": -1}, "must be >= 0"),
    ("missing-local-dataset", "data.train.0.url", "/nonexistent/ns2d", "does not exist"),
]


def _write(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_base_spec_is_valid(tmp_path, capsys):
    assert main(["validate", _write(tmp_path, BASE)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("case", [c for c in CASES if c[3] is not None], ids=lambda c: c[0])
def test_invalid_spec_one_screen_exit_2(case, tmp_path, capsys):
    name, path, value, expected = case
    spec = _set(BASE, path, value)
    if name == "eval-without-val":
        spec = _set(spec, "train.eval_every", 5)
    code = main(["validate", _write(tmp_path, spec)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 40
    top = path.split(".")[0]
    assert top in err, f"field path {top!r} not named:\n{err}"


def test_offload_optimizer_needs_zero(tmp_path, capsys):
    spec = _set(_set(BASE, "distributed.zero_stage", 0), "distributed.offload_optimizer", True)
    assert main(["validate", _write(tmp_path, spec)]) == 2
    assert "offload_optimizer needs distributed.zero_stage >= 1" in capsys.readouterr().err


def test_yaml_syntax_error(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    assert main(["validate", str(path)]) == 2
    assert "not valid YAML at line" in capsys.readouterr().err


def test_missing_spec_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_not_a_mapping(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert main(["validate", str(path)]) == 2
    assert "expected a YAML mapping" in capsys.readouterr().err


def test_bad_override(tmp_path, capsys):
    assert main(["validate", _write(tmp_path, BASE), "--set", "train.max_steps"]) == 2
    assert "expected --set PATH=VALUE" in capsys.readouterr().err


def test_override_applies_and_validates(tmp_path, capsys):
    assert main(["validate", _write(tmp_path, BASE), "--set", "train.max_steps=abc"]) == 2
    assert "train.max_steps" in capsys.readouterr().err
    assert main(["validate", _write(tmp_path, BASE), "--set", "data.train.0.url=s3://other/x"]) == 0


def test_secrets_are_redacted(tmp_path, capsys):
    spec = _set(BASE, "tracking.tags", {"api_key": "supersecret123", "team": 5})
    spec = _set(spec, "storage.secret_access_key", "hunter2hunter2")
    assert main(["validate", _write(tmp_path, spec)]) == 2
    err = capsys.readouterr().err
    assert "hunter2hunter2" not in err and "supersecret123" not in err
    assert "***" in err


def test_unknown_family_lists_families(tmp_path, capsys):
    assert main(["validate", _write(tmp_path, _set(BASE, "model.family", "chemistry"))]) == 2
    err = capsys.readouterr().err
    assert "pde" in err and "model.family" in err


def test_cli_subprocess_has_no_traceback(tmp_path):
    path = _write(tmp_path, _set(BASE, "train.micro_batch_size", "x"))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", path], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train.micro_batch_size" in proc.stderr


def test_at_least_thirty_invalid_cases():
    assert len([c for c in CASES if c[3] is not None]) >= 30


@pytest.mark.parametrize("optim,dropped", [
    ({"name": "adamw", "schedule": {"kind": "constant"}}, {"momentum", "min_lr_ratio"}),
    ({"name": "sgd", "schedule": {"kind": "cosine"}}, {"betas"}),
])
def test_run_recorded_before_the_optimizer_table_resumes(optim, dropped, tmp_path):
    """A run recorded before optim became a table keyed on name has every optimizer's and every schedule's field
    filled in (dump_spec writes all defaults). Its record resumes: the fields its optimizer or schedule has no
    use for are dropped, the others kept; a spec a user writes with them is still refused."""
    from orchestrator.specload import SpecError, load_spec, validate_recorded, validate_spec

    old_optim = {"lr": 3e-3, "betas": [0.8, 0.99], "momentum": 0.9, "weight_decay": 0.01, "grad_clip": 1.0,
                 **optim, "schedule": {"warmup_steps": 5, "min_lr_ratio": 0.1, **optim["schedule"]}}
    old = {**BASE, "optim": old_optim}
    with pytest.raises(SpecError):
        validate_spec(copy.deepcopy(old))
    spec = validate_recorded(copy.deepcopy(old), "run record")
    kept = {k: v for k, v in old_optim.items() if k not in dropped and k != "schedule"}
    assert {k: getattr(spec.optim, k) for k in kept} == {**kept, **({"betas": (0.8, 0.99)} if "betas" in kept else {})}
    assert spec.optim.schedule.warmup_steps == 5
    assert not any(hasattr(spec.optim, f) or hasattr(spec.optim.schedule, f) for f in dropped)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_spec(path, check_files=False, recorded=True).optim == spec.optim  # the path `sciscale resume` takes
    with pytest.raises(SpecError):
        load_spec(path, check_files=False)
