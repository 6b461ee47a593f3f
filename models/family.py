"""The contract every model family fulfils (see docs/contracts.md).

Torch-free on purpose: the orchestrator imports this module to validate specs without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field


class MupSpec(BaseModel):
    """muP (models/mup.py): hidden widths parameterised so that a learning rate tuned at ``base_width`` holds
    at any width (the model section's ``width``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    base_width: int = Field(ge=2)
    """The width the learning rate was (or will be) tuned at; the model at this width is standard."""


@dataclass(frozen=True)
class Mismatch:
    """A spec field that does not fit a dataset (models/<family>/preflight.py ``check``)."""

    field: str
    """Spec path, e.g. model.grid."""
    spec_value: Any
    """What the spec says."""
    data_value: Any
    """What the dataset holds."""
    fix: str
    """What to change, e.g. 'set model.grid: [33, 64]'."""
    dataset: str = ""
    """The dataset's URL (filled in by models.check_data)."""

    def message(self) -> str:
        where = f"the dataset {self.dataset}" if self.dataset else "the dataset"
        return f"{where} has {self.data_value}\n    fix: {self.fix}"


def raise_mismatches(problems: list[Mismatch]) -> None:
    """For the workers' transforms: the first mismatch as a ValueError (the preflight shows them all)."""
    if problems:
        p = problems[0]
        raise ValueError(f"{p.field}={p.spec_value!r} does not fit the data: " + p.message().replace("\n   ", ";"))


@dataclass(frozen=True)
class EvalOptions:
    """How far an :class:`EvalSuite` goes: a full ``sciscale eval`` or a bounded call during training."""

    max_samples: int | None = None
    """Stop after this many real (not padding) held-out samples; None scores the whole split."""
    plots: bool = True
    """Make the suite's figures (matplotlib; skipped during training for speed)."""
    physical_checks: bool = True
    """Run the family's physical checks where it has them (atoms: NVE drift, FIRE relaxation)."""
    device: str = "cpu"
    """Where batches are put before the forward pass (the model is already placed)."""


@dataclass
class EvalReport:
    """What an :class:`EvalSuite` returns: scores, a table and figures."""

    scores: dict[str, float]
    """Flat names without an ``eval/`` prefix, e.g. ``rmse/geopotential_500/120h``."""
    columns: list[str]
    """Column order of :attr:`table`."""
    table: list[dict]
    """Rows ({column: value}), printed by ``sciscale eval`` and logged as a table artifact."""
    figures: dict[str, Any] = field(default_factory=dict)
    """name -> matplotlib Figure (empty with ``EvalOptions(plots=False)``)."""
    samples: int = 0
    """Held-out samples scored (padding excluded)."""


@dataclass(frozen=True)
class EvalSuite:
    """A family's standard scores as its field computes them (``models/<family>/evaluate.py``)."""

    make_transform: Callable[[Any, Any], Callable]
    """(model_spec, manifest) -> picklable transform(sample, rng) -> example, for held-out scoring; its
    examples are batched with the family's ``collate`` by the reader in ``split="val"`` mode."""
    evaluate: Callable[..., EvalReport]
    """(model, batches: Iterable[dict], model_spec, manifest, options: EvalOptions) -> EvalReport. ``model`` is
    in eval mode and placed; each batch carries the bool ``_valid`` (False = padding, never scored)."""


def real_indices(valid: Sequence[bool], seen: int, max_samples: int | None) -> list[int]:
    """Positions of the real samples of one micro-batch to score, given ``seen`` already scored: padding
    (``_valid`` False) is skipped and the count stops at ``max_samples``."""
    room = None if max_samples is None else max(0, max_samples - seen)
    picked = [i for i, ok in enumerate(valid) if bool(ok)]
    return picked if room is None else picked[:room]


@dataclass(frozen=True)
class Family:
    """What the trainer needs from a model family; nothing here knows about distribution."""

    name: str
    build_model: Callable[[Any], Any]
    """(spec) -> nn.Module, single-device; must work under ``torch.device("meta")``."""
    make_transform: Callable[[Any, Any], Callable]
    """(spec, manifest) -> transform(sample: dict[str, ndarray], rng) -> example; picklable."""
    collate: Callable[[list], dict]
    """list of examples -> dict of batched tensors."""
    loss: Callable[[Any, dict, Any], Any]
    """(outputs, batch, spec) -> scalar tensor, where outputs = model(batch)."""
    metrics: Callable[[Any, dict, Any], dict]
    """(outputs, batch, spec) -> {name: per-example tensor of shape [b]}."""
    example_batch: Callable[[Any, int], dict]
    """(spec, batch_size) -> synthetic batch of the right shapes."""
    median_metrics: tuple[str, ...] = ()
    """Metric names whose median over the eval set is logged beside the mean."""
    plots: Callable[[Any, dict, Any, Any], dict] | None = None
    """(model, batch, outputs, spec) -> {name: matplotlib Figure}, logged at the end (rank 0)."""
    derived_metrics: Callable[[dict], dict] | None = None
    """({name: mean over the eval set}) -> more metrics computed from those means (e.g. RMSE as the square
    root of the time-mean MSE), logged beside them."""
    prepare_model: Callable[[Any, Any, Any], None] | None = None
    """(model, spec, train manifest) -> None: set data-derived constants (e.g. per-element reference
    energies) before training; called once on every rank, before DeepSpeed wraps the model."""
    eval_suite: EvalSuite | None = None
    """The field's standard scores on a held-out split (``sciscale eval``, and every
    ``train.eval_suite_every`` steps during training)."""
    no_split: tuple[str, ...] = ()
    """Class names of the model's repeated blocks that Accelerate keeps on one device and, when offloaded,
    loads whole before they run (big-model inference, trainers/inference.py). A block must be called through
    its ``forward``; a class whose code reads a child's weights directly (``F.linear(x, self.qkv.weight)``)
    must be listed. The model's own class listed here means the model is never split."""
    muon_adamw: tuple[str, ...] = ()
    """Parameter-name keywords (lower case) that take AdamW under ``optim.name: muon``, beside the ones every
    family shares (embed, norm, head: trainers/optimizers.py MUON_ADAMW). Only 2-D matrices take Muon at all;
    list here the input projections and output layers of the family's models that are matrices."""
