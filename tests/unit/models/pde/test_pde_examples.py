"""Every PDE example spec parses into a JobSpec, and the model section builds on the meta device."""

from pathlib import Path

import pytest
import torch
import yaml

from models import load_family
from orchestrator.spec import JobSpec

EXAMPLES = sorted((Path(__file__).resolve().parents[4] / "examples" / "pde").glob("*.yaml"))


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"ns_debug_scot", "ns_debug_fno", "wave_finetune_scot", "wave_scratch_scot", "pretrain_scot_T",
            "pretrain_scot_B", "pretrain_scot_L"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_spec_is_valid_and_builds(path):
    spec = JobSpec.model_validate(yaml.safe_load(path.read_text()))
    assert spec.model.family == "pde"
    with torch.device("meta"):
        model = load_family("pde").build_model(spec.model)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_finetune_and_scratch_share_the_budget():
    ft, sc = (JobSpec.model_validate(yaml.safe_load((EXAMPLES[0].parent / f"wave_{n}_scot.yaml").read_text()))
              for n in ("finetune", "scratch"))
    assert ft.train.init_from and not sc.train.init_from
    assert ft.model == sc.model and ft.optim == sc.optim and ft.data == sc.data
    assert (ft.train.max_steps, ft.train.global_batch_size) == (sc.train.max_steps, sc.train.global_batch_size)
