"""Score a model with its family's evaluation suite (models/<family>/evaluate.py) on one held-out dataset:
`sciscale eval`, and a bounded call every ``train.eval_suite_every`` steps during training.

The suite does the field's scoring; this module only feeds it: the project's reader in its one-pass ``val``
mode (every sample once, padding marked), the suite's own transform, the family's collate.
"""

from __future__ import annotations

import sys

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


def dataset_url(data: str, split: str | None, storage=None) -> str:
    """``--data`` is a dataset version, or a root holding ``<split>/`` versions as the generators and converters
    write them: ``--split`` picks one (default: test, else val)."""
    from data.storage import open_url

    def has_manifest(url: str) -> bool:
        fs, path = open_url(url, storage)
        return fs.exists(f"{path.rstrip('/')}/manifest.json")

    if split:
        return f"{data.rstrip('/')}/{split}"
    if has_manifest(data):
        return data
    for name in ("test", "val"):
        if has_manifest(f"{data.rstrip('/')}/{name}"):
            return f"{data.rstrip('/')}/{name}"
    raise ValueError(f"--data {data}: no dataset there (no manifest.json) and no test/ or val/ dataset under it. "
                     "Hint: point --data at a dataset version, or pass --split NAME")


def run_eval(args) -> int:
    """`sciscale eval SOURCE --data URL`: resolve, check against the data, load, score, print, log."""
    from data.format import read_manifest
    from data.storage import storage_options
    from models import check_data
    from orchestrator.specload import SpecError
    from trainers.inference import load_model, parse_max_memory
    from trainers.sources import resolve

    budget = parse_max_memory(args.max_memory) if args.max_memory else None
    source = resolve(args.source, args.runs_root)
    spec = source.spec
    url = dataset_url(args.data, args.split, spec.storage)
    manifest = read_manifest(url, storage_options(url, spec.storage))
    problems = check_data(spec.model, "val", url, manifest, where="--data")
    if problems:
        raise SpecError(f"the model of {source.label} against --data", [(m.field, m.spec_value, m.message())
                                                                        for m in problems])
    print(f"evaluating {source.label} on {url} ...", file=sys.stderr, flush=True)
    model = load_model(source, max_memory=budget, offload_dir=args.offload_dir)
    options = EvalOptions(max_samples=args.max_samples, physical_checks=not args.no_physical_checks)
    report = score(model, spec.model, url, storage=spec.storage, manifest=manifest,
                   micro_batch=spec.train.micro_batch_size, options=options)
    print(render_table(report))
    print(f"{report.samples} held-out samples scored", file=sys.stderr)
    if not args.no_log:
        from trainers.eval_log import log_evaluation

        where = log_evaluation(source, args.source, url, manifest, report)
        print(f"logged to MLflow: {where}", file=sys.stderr)
    return 0


def render_table(report: EvalReport) -> str:
    """The report's table as aligned text columns."""
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    rows = [[cell(r.get(c)) for c in report.columns] for r in report.table]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(report.columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(report.columns, widths))]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
