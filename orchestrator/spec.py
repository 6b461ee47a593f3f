"""The job spec: YAML validated into pydantic v2 models (torch-free).

Every section forbids unknown keys, documents each field with an attribute docstring (which becomes the JSON
Schema description), and checks cross-field rules in one ``model_validator(mode="after")``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from data.spec import DataSpec, StorageSpec
from models import model_spec_classes

_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class _Schedule(BaseModel):
    model_config = _CONFIG

    warmup_steps: int = Field(default=0, ge=0)
    """Optimizer steps of linear warmup from 0 to ``lr``."""


class ConstantSchedule(_Schedule):
    """Linear warmup, then the peak learning rate to the end."""

    kind: Literal["constant"]
    """Schedule discriminator."""


class CosineSchedule(_Schedule):
    """Linear warmup, then a cosine decay to ``min_lr_ratio * lr``."""

    kind: Literal["cosine"] = "cosine"
    """Schedule discriminator."""
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Final learning rate as a fraction of ``lr``."""


class LinearSchedule(_Schedule):
    """Linear warmup, then a linear decay to ``min_lr_ratio * lr``."""

    kind: Literal["linear"]
    """Schedule discriminator."""
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Final learning rate as a fraction of ``lr``."""


def _tagged(classes: tuple, key: str, default: str) -> Any:
    """A union of spec sections keyed on ``key``; a section that leaves ``key`` out gets ``default``, so
    specs written before the union existed validate unchanged."""

    def fill(raw: Any) -> Any:
        return {key: default, **raw} if isinstance(raw, dict) and key not in raw else raw

    return Annotated[Union[classes], Field(discriminator=key), BeforeValidator(fill)]


# The schedule table: one entry per kind (factors in trainers/optimizers.py SCHEDULES)
SCHEDULES = (ConstantSchedule, CosineSchedule, LinearSchedule)
ScheduleSpec = _tagged(SCHEDULES, "kind", "cosine")


class _Optim(BaseModel):
    model_config = _CONFIG

    lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Decoupled weight decay, applied to weight matrices only (not to biases and norms)."""
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value (null: no clipping)."""
    schedule: ScheduleSpec = Field(default_factory=CosineSchedule)
    """Learning-rate schedule, keyed on ``kind``: constant, cosine or linear."""


class AdamWSpec(_Optim):
    """AdamW (torch; DeepSpeedCPUAdam when the optimizer state is offloaded)."""

    name: Literal["adamw"] = "adamw"
    """Optimizer discriminator."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""


class AdamSpec(_Optim):
    """Adam with L2-coupled weight decay (torch; DeepSpeedCPUAdam when offloaded)."""

    name: Literal["adam"]
    """Optimizer discriminator."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""


class SGDSpec(_Optim):
    """SGD with momentum (torch)."""

    name: Literal["sgd"]
    """Optimizer discriminator."""
    momentum: float = Field(default=0.9, ge=0)
    """SGD momentum."""


class MuonSpec(_Optim):
    """Muon (DeepSpeed's ``MuonWithAuxAdam``): Newton-Schulz-orthogonalised momentum for the hidden 2-D
    matrices the model family names, AdamW for every other parameter."""

    name: Literal["muon"]
    """Optimizer discriminator."""
    lr: float = Field(default=0.02, gt=0)
    """Peak learning rate of the Muon half (the hidden matrices)."""
    momentum: float = Field(default=0.95, ge=0, lt=1)
    """Muon momentum (Nesterov)."""
    adam_lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate of the AdamW half (embeddings, norms, biases, heads, spectral and conv weights)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Betas of the AdamW half."""
    grad_clip: float | None = Field(default=None, gt=0)
    """Must stay null: under ZeRO 1-3 DeepSpeed clips Muon's orthogonalised update, not the gradient, which
    shrinks the step at those stages only (docs/optimizers.md). Muon's update is normalised by construction."""


# The optimizer table: one entry per name (builders in trainers/optimizers.py OPTIMIZERS)
OPTIMIZERS = (AdamWSpec, AdamSpec, SGDSpec, MuonSpec)
OptimSpec = _tagged(OPTIMIZERS, "name", "adamw")


class TrainSpec(BaseModel):
    """Batch sizes, length, evaluation, checkpointing and numerics."""

    model_config = _CONFIG

    global_batch_size: int = Field(ge=1)
    """Samples per optimizer step over all workers; kept fixed whatever the world size."""
    micro_batch_size: int = Field(ge=1)
    """Samples per forward/backward on one worker; gradient accumulation makes up the rest."""
    max_steps: int = Field(ge=1)
    """Optimizer steps to train for."""
    eval_every: int = Field(default=0, ge=0)
    """Evaluate on data.val every N steps (0: only at the end)."""
    eval_batches: int | None = Field(default=None, ge=1)
    """Micro-batches per rank per evaluation (null: the whole validation set)."""
    eval_suite_every: int = Field(default=0, ge=0)
    """Run the family's evaluation suite (the scores of `sciscale eval`: WeatherBench2 RMSE/ACC, Poseidon's
    relative L1, energy/force MAE and EFwT) every N steps and at the end, on the first eval_suite_samples samples
    of each val dataset, without plots or physical checks; logged as eval/<score> (0: off)."""
    eval_suite_samples: int = Field(default=64, ge=1)
    """Held-out samples the in-training evaluation suite scores (a bounded subset keeps it cheap)."""
    checkpoint_every: int = Field(default=0, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """Committed checkpoints kept in the runs root."""
    checkpoint_upload: Literal["background", "sync"] = "background"
    """background: a step waits only for the local save; the upload to the runs root (with checksums, then
    a per-rank commit file) runs in a thread and the checkpoint counts once every rank's upload is done.
    sync: the step waits for the upload too."""
    log_every: int = Field(default=10, ge=1)
    """Log training metrics every N steps."""
    profile_steps: int = Field(default=0, ge=0)
    """Profile N steps with torch.profiler, 10 steps after the start (and after each restart): every rank prints
    where its step time went (data wait, forward and loss, backward, optimizer step, and the gloo/NCCL
    collectives inside them) to its log; rank 0 logs them as profile/* metrics (0: off)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Numerics of forward/backward: bf16 runs the forward under torch.autocast (bf16 matmuls and convolutions, fp32
    weights and optimizer state; not on MACE)."""
    seed: int = 0
    """Seed of model initialisation and of the data order (with the dataset version and the step)."""
    init_from: str | None = None
    """Initial weights: a .safetensors file, a directory holding weights.safetensors, a registered sciscale
    model (models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-MODEL_ID; the launch pins an alias to the model
    it names then) or a run's (runs:/MLFLOW_RUN_ID/weights.safetensors). Tensors whose name or shape does not
    match are re-initialised and listed."""
    freeze: list[str] = Field(default_factory=list)
    """Parameter-name prefixes to freeze (not trained), e.g. ["encoder."] when fine-tuning."""
    audit_samples: bool = False
    """Write a hash of every step's global batch of sample ids to RUNS_ROOT/RUN_ID/sciscale/samples/ (to check
    that resumed and resized runs see exactly the samples of an uninterrupted run)."""
    nonfinite: Literal["skip", "rollback", "fail"] = "skip"
    """A non-finite loss: skip that micro-batch (no gradient), roll back to the last checkpoint and skip the
    batch (needs distributed.max_failures >= 1), or fail the run. Skipped batches are counted in metrics."""


class WorkersRange(BaseModel):
    """An elastic worker count."""

    model_config = _CONFIG

    min: int = Field(ge=1)
    """Fewest workers the run continues with."""
    max: int = Field(ge=1)
    """Most workers the run scales up to."""

    @model_validator(mode="after")
    def _check(self) -> "WorkersRange":
        if self.min > self.max:
            raise ValueError(f"workers.min ({self.min}) is larger than workers.max ({self.max})")
        return self


class DistributedSpec(BaseModel):
    """How the run is sharded and scheduled."""

    model_config = _CONFIG

    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage: 0 replicate, 1 shard optimizer state, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (ZeRO 1-3)."""
    offload_params: bool = False
    """Keep parameters in CPU memory (ZeRO 3 only)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (models that support it)."""
    workers: int | WorkersRange = 1
    """Number of training workers, or {min, max} for elastic scaling."""
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    """Ray resources of one worker, e.g. {CPU: 8, GPU: 1}."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); otherwise CPU with gloo."""
    max_failures: int = Field(default=0, ge=0)
    """Worker-group restarts from the latest checkpoint before the run fails."""
    timeout_s: int = Field(default=1800, ge=10)
    """Collective-operation timeout in seconds."""
    resize_check_s: float = Field(default=60.0, ge=1.0)
    """Elastic runs: seconds between checks whether more workers fit; growing restarts the group from the
    latest checkpoint at the larger world size."""
    preemption_check_every: int = Field(default=10, ge=0)
    """Steps between checks for a node preemption notice from Ray or a checkpoint request from the driver (a
    collective over workers); on either the run checkpoints at once, uploading synchronously (0: off)."""
    preemption_grace_s: float = Field(default=120.0, ge=0)
    """On SIGTERM, `sciscale launch`/`resume` asks the workers for a checkpoint and stops once it is committed
    or after this many seconds, whichever is first; it should exceed preemption_check_every steps plus one
    checkpoint. 0, SIGINT or a second SIGTERM: stop at once."""

    @field_validator("resources_per_worker")
    @classmethod
    def _check_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for key, amount in value.items():
            if amount < 0:
                raise ValueError(f"resource {key!r} must be >= 0, got {amount}")
        return value

    def world_sizes(self) -> list[int]:
        """Every world size this spec allows."""
        if isinstance(self.workers, int):
            return [self.workers]
        return list(range(self.workers.min, self.workers.max + 1))

    @model_validator(mode="after")
    def _check(self) -> "DistributedSpec":
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError(f"distributed.workers must be >= 1, got {self.workers}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("distributed.offload_optimizer needs distributed.zero_stage >= 1 (got 0)")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"distributed.offload_params needs distributed.zero_stage 3 (got {self.zero_stage})")
        if self.use_gpu and self.resources_per_worker.get("GPU", 1) == 0:
            raise ValueError("distributed.use_gpu is true but resources_per_worker.GPU is 0")
        return self


class TrackingSpec(BaseModel):
    """MLflow tracking."""

    model_config = _CONFIG

    uri: str | None = None
    """MLflow tracking URI (http://host:5000, sqlite:///path). Default: a sqlite store under a local runs
    root (RUNS_ROOT/mlflow.db), or MLFLOW_TRACKING_URI from the environment."""
    experiment: str = "sciscale"
    """MLflow experiment name."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra tags set on the MLflow run."""
    flush_every_s: float = Field(default=5.0, gt=0)
    """Seconds between background metric uploads."""
    log_checkpoints_as_models: bool = False
    """Make every checkpoint an MLflow LoggedModel at its step too (the final model always is one). Rank 0
    gathers the fp32 weights at each checkpoint (a collective under ZeRO-3) and uploads the model in a
    background thread; the layout is that of the final model (docs/contracts.md)."""
    system_metrics_every_s: float = Field(default=30.0, ge=0)
    """Seconds between samples of each worker's system metrics (CPU, memory, disk, network; GPU utilisation
    and memory where a GPU is present), logged by MLflow's system-metrics monitor under
    system/rankR/... (0: off). Kept coarse: MLflow's default of 10 s floods servers with many workers."""

    @field_validator("system_metrics_every_s")
    @classmethod
    def _check_system_metrics(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError(f"expected 0 (off) or at least 1 second between samples, got {value}")
        return value

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(https?|sqlite|postgresql|mysql|file|databricks)(\+\w+)?:", value):
            raise ValueError("expected an MLflow tracking URI such as http://127.0.0.1:5000 or "
                             "sqlite:////abs/path/mlflow.db")
        return value


class SearchSpace(BaseModel):
    """One swept spec field: exactly one of values, uniform, log_uniform, int_uniform."""

    model_config = _CONFIG

    values: list[Any] | None = Field(default=None, min_length=1)
    """Values to try (grid and scaling: every one; random and tpe: one chosen per trial)."""
    uniform: tuple[float, float] | None = None
    """[low, high]: a float drawn uniformly (random, tpe)."""
    log_uniform: tuple[float, float] | None = None
    """[low, high], both > 0: a float drawn uniformly in log space, as learning rates are (random, tpe)."""
    int_uniform: tuple[int, int] | None = None
    """[low, high]: an integer drawn uniformly, both ends included (random, tpe)."""

    @model_validator(mode="after")
    def _check(self) -> "SearchSpace":
        given = [k for k in SPACE_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(SPACE_KINDS)}, got {', '.join(given) or 'none'}")
        bounds = getattr(self, given[0])
        if given[0] != "values" and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]}: expected [low, high] with low < high, got {list(bounds)}")
        if given[0] == "log_uniform" and bounds[0] <= 0:
            raise ValueError(f"log_uniform: expected low > 0, got {bounds[0]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in SPACE_KINDS if getattr(self, k) is not None)

    def probes(self) -> list[Any]:
        """The values a trial can get that validation tries: every value, or both ends of a range."""
        return list(self.values) if self.values is not None else list(getattr(self, self.kind))


SPACE_KINDS = ("values", "uniform", "log_uniform", "int_uniform")


class EarlyStopSpec(BaseModel):
    """Stop unpromising trials early (Ray Tune's ASHA scheduler), judged at each evaluation."""

    model_config = _CONFIG

    kind: Literal["asha"] = "asha"
    """Asynchronous successive halving."""
    grace_steps: int = Field(default=10, ge=1)
    """No trial is stopped before this many optimizer steps."""
    reduction_factor: float = Field(default=2.0, gt=1.0)
    """At each rung, the best 1/reduction_factor of the trials go on."""


# Spec fields that set a scaling ladder's data budget D (training samples seen = max_steps x global batch)
DATA_AXIS = ("train.max_steps", "train.global_batch_size")


class SweepSpec(BaseModel):
    """A campaign: every trial is the spec with these parameters set, run as a full sciscale run by
    `sciscale sweep` (Ray Tune), all under one MLflow parent run."""

    model_config = _CONFIG

    method: Literal["grid", "random", "tpe", "scaling"] = "grid"
    """grid: every combination of the values; random: num_samples draws; tpe: num_samples trials chosen by
    Optuna's TPE sampler; scaling: a grid of model sizes by data budgets, with the fit L(N, D) = E + A/N^alpha +
    B/D^beta of the final metric (docs/scaling.md)."""
    metric: str = "val/loss"
    """The metric that ranks trials (and that early stopping and TPE act on): one every trial logs."""
    mode: Literal["min", "max"] = "min"
    """Whether a lower or a higher metric is better."""
    num_samples: int = Field(default=1, ge=1)
    """random and tpe: the number of trials; grid and scaling: repeats of the whole grid."""
    max_concurrent: int | None = Field(default=None, ge=1)
    """Trials running at once (null: as many as the cluster's resources allow)."""
    early_stop: EarlyStopSpec | None = None
    """Stop trials whose metric trails at an evaluation (needs train.eval_every); null: every trial runs out."""
    seed: int = 0
    """Seed of the random and TPE samplers."""
    parameters: dict[str, SearchSpace] = Field(min_length=1)
    """Spec paths (as for --set, e.g. optim.lr, model.size, data.train.0.url) to their search space."""

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        if self.method in ("grid", "scaling"):
            drawn = [p for p, s in self.parameters.items() if s.values is None]
            if drawn:
                raise ValueError(f"sweep.method={self.method} takes values lists only; {', '.join(drawn)} "
                                 "has a range. Hint: list the values, or use method random or tpe")
        if "sweep" in {p.split(".")[0] for p in self.parameters}:
            raise ValueError("sweep.parameters cannot set the sweep section itself")
        if self.method == "scaling":
            for axis, paths in (("model size N", [p for p in self.parameters if p.startswith("model.")]),
                                ("data budget D", [p for p in self.parameters if p in DATA_AXIS])):
                distinct = max((len({repr(v) for v in self.parameters[p].values}) for p in paths), default=0)
                if distinct < 3:
                    where = ", ".join(paths) or ("a model.* field" if axis.startswith("model") else
                                                 " or ".join(DATA_AXIS))
                    raise ValueError(f"a scaling ladder needs at least 3 values on its {axis} axis ({where}); "
                                     f"got {distinct}")
        return self


def _model_union() -> Any:
    classes = model_spec_classes()
    if not classes:
        raise RuntimeError("no model family is installed (models/<family>/config.py)")
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator="family")]


ModelSpec = _model_union()

# Every keyed section: discriminator -> {tag: section class} (spec error messages name the member a key belongs to)
TAGGED: dict[str, dict[str, type]] = {
    key: {get_args(cls.model_fields[key].annotation)[0]: cls for cls in classes}
    for key, classes in (("family", model_spec_classes()), ("name", OPTIMIZERS), ("kind", SCHEDULES))}
UNION_TAGS = {tag for members in TAGGED.values() for tag in members}


class JobSpec(BaseModel):
    """A sciscale training job."""

    model_config = _CONFIG

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Job name: letters, digits, '_', '.', '-' (run ids default to NAME-YYYYmmdd-HHMMSS)."""
    model: ModelSpec
    """The model: a family (pde, weather, atoms) with its architecture and size."""
    data: DataSpec
    """Training and validation datasets and the streaming reader."""
    optim: OptimSpec = Field(default_factory=AdamWSpec)
    """Optimizer and learning-rate schedule."""
    train: TrainSpec
    """Batch sizes, length, evaluation and checkpointing."""
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    """ZeRO stage, offload, workers and resources."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Runs root and object-store settings (for data, checkpoints and Ray Train's state alike)."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """MLflow tracking."""
    sweep: SweepSpec | None = None
    """A sweep or scaling ladder over this spec, run with `sciscale sweep` (null: a single run)."""

    @model_validator(mode="after")
    def _check_batch(self) -> "JobSpec":
        bad = [w for w in self.distributed.world_sizes() if batch_problem(self, w)]
        if bad:
            raise ValueError(
                f"distributed.workers={_show_workers(self.distributed.workers)} includes world size "
                f"{', '.join(map(str, bad))}, where train.global_batch_size={self.train.global_batch_size} with "
                f"train.micro_batch_size="
                f"{self.train.micro_batch_size} and data.canonical_streams={self.data.canonical_streams} cannot "
                f"be kept ({batch_problem(self, bad[0])}); valid world sizes "
                f"up to 64: {valid_world_sizes(self) or 'none'}. Hint: make the global batch a multiple of "
                "micro_batch_size x workers and of canonical_streams, and workers a divisor of canonical_streams")
        if self.optim.name == "muon":
            self._check_muon()
        for setting, chosen, reason in (  # a model says why it cannot train under a setting (with a hint)
                ("train.precision=bf16", self.train.precision == "bf16", "no_bf16_reason"),
                ("distributed.zero_stage=3", self.distributed.zero_stage == 3, "no_zero3_reason")):
            why = getattr(self.model, reason, None) if chosen else None
            if why:
                raise ValueError(f"{setting} cannot train this model: {why}")
        if getattr(self.model, "mup", None) is not None and self.optim.name == "sgd":
            raise ValueError("optim.name=sgd with model.mup: muP's learning-rate multipliers here are AdamW's and "
                             "Muon's. Hint: use optim.name: adamw or muon")
        if self.train.nonfinite == "rollback" and self.distributed.max_failures < 1:
            raise ValueError("train.nonfinite=rollback restarts the workers from the last checkpoint: set "
                             "distributed.max_failures >= 1")
        for name in ("eval_every", "eval_suite_every"):
            if getattr(self.train, name) and not self.data.val:
                raise ValueError(f"train.{name}={getattr(self.train, name)} needs data.val datasets (none given)")
        if self.sweep is not None:
            self._check_sweep(self.sweep)
        return self

    def _check_muon(self) -> None:
        if self.optim.grad_clip is not None:
            raise ValueError(f"optim.grad_clip={self.optim.grad_clip} with optim.name=muon: under ZeRO 1-3 DeepSpeed "
                             "clips Muon's orthogonalised update rather than the gradient, so the step would shrink "
                             "at those stages and not at stage 0. Hint: remove optim.grad_clip (Muon's update is "
                             "normalised by construction)")
        why = getattr(self.model, "no_muon_reason", None)
        if why:
            raise ValueError(f"optim.name=muon cannot train this model: {why}. Hint: use optim.name: adamw")
        offload = [f"distributed.{f}" for f in ("offload_optimizer", "offload_params") if getattr(self.distributed, f)]
        if offload:
            raise ValueError(f"optim.name=muon does not run with {' and '.join(offload)}: sciscale offloads only "
                             "DeepSpeedCPUAdam (adam, adamw), and DeepSpeed's offloaded Muon path is not tested here. "
                             "Hint: set them to false, or use optim.name: adamw")

    def _check_sweep(self, sweep: SweepSpec) -> None:
        """What the sweep needs of the trials (each trial's own values are checked by orchestrator/sweep.py)."""
        metric = sweep.metric
        needs = {"val/": ("data.val datasets", bool(self.data.val)),
                 "eval/": ("train.eval_suite_every > 0", bool(self.train.eval_suite_every))}
        prefix = next((p for p in ("train/", "val/", "eval/") if metric.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"sweep.metric {metric!r} is not a metric trials log: expected train/..., val/... "
                             "or eval/... (e.g. val/loss)")
        if prefix == "train/" and metric not in TRAIN_METRICS:
            raise ValueError(f"sweep.metric {metric!r} is not a training metric{_close(metric, TRAIN_METRICS)}; "
                             f"trials log {', '.join(TRAIN_METRICS)}")
        if prefix in needs and not needs[prefix][1]:
            raise ValueError(f"sweep.metric {metric!r} is logged only with {needs[prefix][0]}")
        if sweep.early_stop is not None:
            if not self.train.eval_every or not self.data.val:
                raise ValueError("sweep.early_stop decides at each evaluation: set train.eval_every (and data.val)")
            if sweep.early_stop.grace_steps >= self.train.max_steps:
                raise ValueError(f"sweep.early_stop.grace_steps={sweep.early_stop.grace_steps} is not below "
                                 f"train.max_steps={self.train.max_steps}: no trial could be stopped")


# What every trial logs at each log_every step (trainers/runner.py); the sweep metric must be one of these, a
# val/ metric or an eval/ score
TRAIN_METRICS = ("train/loss", "train/lr", "train/grad_norm", "train/step_time_s", "train/samples_per_s")


def _close(word: str, options) -> str:
    import difflib

    found = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""


def _show_workers(workers) -> str:
    return str(workers) if isinstance(workers, int) else f"{{min: {workers.min}, max: {workers.max}}}"


def batch_problem(spec: JobSpec, world: int) -> str | None:
    """Why ``global = micro x accumulation x world`` (and the data plan) fails at ``world``, or None."""
    g, m, c = spec.train.global_batch_size, spec.train.micro_batch_size, spec.data.canonical_streams
    if g % (m * world):
        return f"{g} is not a multiple of micro_batch_size x world = {m * world}"
    if c % world:
        return f"world size {world} does not divide canonical_streams {c}"
    if g % c:
        return f"{g} is not a multiple of canonical_streams {c}"
    return None


def valid_world_sizes(spec: JobSpec, limit: int = 64) -> list[int]:
    return [w for w in range(1, limit + 1) if batch_problem(spec, w) is None]
