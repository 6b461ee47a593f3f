"""The family's evaluation suite fed by the project's reader: `score`, and the bounded call during training."""

from __future__ import annotations

import pytest
import torch

from models import load_family
from orchestrator.spec import JobSpec


class _Logger:
    def __init__(self):
        self.points = []

    def log(self, metrics: dict, step: int) -> None:
        self.points.append((step, dict(metrics)))


@pytest.fixture(scope="module")
def ns(tmp_path_factory):
    from data.generators.navier_stokes import generate

    out = tmp_path_factory.mktemp("ns-eval")
    generate(str(out), n_train=2, n_val=5, resolution=16, snapshots=5, seed=0, progress=False)
    return out


def _spec(ns, **train) -> JobSpec:
    return JobSpec.model_validate({
        "name": "ev", "model": {"family": "pde", "arch": "fno", "in_channels": 2, "resolution": 16, "time_stride": 1},
        "data": {"train": [{"url": f"{ns}/train"}], "val": [{"url": f"{ns}/val"}], "canonical_streams": 1},
        "train": {"global_batch_size": 2, "micro_batch_size": 2, "max_steps": 4, **train}})


def test_during_training_scores_a_bounded_subset_and_logs_eval_names(ns):
    torch.manual_seed(0)
    spec = _spec(ns, eval_suite_every=2, eval_suite_samples=3)
    model = load_family("pde").build_model(spec.model)
    model.device = torch.device("cpu")  # what a DeepSpeed engine offers
    logger = _Logger()
    from trainers.evaluate import during_training

    scores = during_training(model, spec, 2, logger)
    assert model.training, "the model is back in training mode"
    assert logger.points == [(2, scores)]
    assert "eval/rel_l1_median" in scores and "eval/rel_l1_median_rollout/step_1" in scores
    assert all(k.startswith("eval/") and torch.isfinite(torch.tensor(v)) for k, v in scores.items())


def test_score_stops_at_max_samples_and_counts_real_samples_only(ns):
    from models.family import EvalOptions
    from trainers.evaluate import score

    spec = _spec(ns)
    model = load_family("pde").build_model(spec.model).eval()
    full = score(model, spec.model, f"{ns}/val", micro_batch=2, options=EvalOptions(plots=False))
    part = score(model, spec.model, f"{ns}/val", micro_batch=2, options=EvalOptions(max_samples=3, plots=False))
    assert (full.samples, part.samples) == (5, 3)  # 5 = 2 + 2 + 1 real, the last batch padded


def test_eval_suite_needs_val_data(ns):
    from orchestrator.specload import SpecError, validate_spec

    raw = _spec(ns, eval_suite_every=2).model_dump(mode="json")
    raw["data"]["val"] = []
    with pytest.raises(SpecError, match="eval_suite_every=2 needs data.val"):
        validate_spec(raw)
