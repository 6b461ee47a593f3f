"""Score a model with its family's evaluation suite (models/<family>/evaluate.py) on one held-out dataset:
`sciscale eval`, and a bounded call every ``train.eval_suite_every`` steps during training.

The suite does the field's scoring; this module only feeds it: the project's reader in its one-pass ``val``
mode (every sample once, padding marked), the suite's own transform, the family's collate.
"""

from __future__ import annotations

from models.family import EvalOptions, EvalReport


def score(model, model_spec, url: str, *, storage=None, manifest=None, micro_batch: int = 8,
          options: EvalOptions = EvalOptions()) -> EvalReport:
    """The family's EvalReport of ``model`` on the dataset at ``url`` (read with ``storage`` settings)."""
    from data.format import read_manifest
    from data.loader import build_loader
    from data.spec import DataSpec
    from data.storage import storage_options
    from models import load_family

    family = load_family(model_spec.family)
    if family.eval_suite is None:
        raise ValueError(f"model family {model_spec.family!r} has no evaluation suite")
    manifest = manifest or read_manifest(url, storage_options(url, storage))
    data = DataSpec(train=[{"url": url}], canonical_streams=1, num_workers=0)
    loader = build_loader(data, data.train, split="val", rank=0, world_size=1, global_batch=micro_batch,
                          micro_batch=micro_batch, seed=0, transform=family.eval_suite.make_transform(
                              model_spec, manifest), collate=family.collate, storage=storage)
    try:
        return family.eval_suite.evaluate(model, loader, model_spec, manifest, options)
    finally:
        loader.close()


def during_training(engine, spec, step: int, logger) -> dict[str, float]:
    """The suite on the first ``train.eval_suite_samples`` samples of each val dataset, without plots or
    physical checks, logged as ``eval/<score>`` (``eval/<i>/<score>`` with several val datasets). Every rank
    runs the same samples: under ZeRO-3 a forward needs every rank; rank 0's logger is the one that logs."""
    t, out = spec.train, {}
    options = EvalOptions(max_samples=t.eval_suite_samples, plots=False, physical_checks=False,
                          device=str(engine.device))
    engine.eval()
    try:
        for i, source in enumerate(spec.data.val):
            report = score(engine, spec.model, source.url, storage=spec.storage, micro_batch=t.micro_batch_size,
                           options=options)
            prefix = "eval/" if len(spec.data.val) == 1 else f"eval/{i}/"
            out.update({prefix + k: float(v) for k, v in report.scores.items()})
    finally:
        engine.train()
    logger.log(out, step)
    return out
