"""The per-worker runner: three verbs (run, save_state, load_state) and a short step loop."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

from models import load_family
from orchestrator import lineage, startup
from orchestrator.spec import JobSpec
from trainers import checkpoint, ds, weights
from trainers import faults, resilience
from trainers import profile as step_profile
from trainers.logged_models import build_model_logger
from trainers.tracking import MetricLogger, NullLogger, read_points, write_points


class Runner:
    """Trains one spec on this worker; rank 0 also talks to MLflow."""

    def __init__(self, spec: JobSpec, run: dict, rank: int, world_size: int, report=None, get_checkpoint=None,
                 progress=None):
        self.spec, self.run_info, self.rank, self.world = spec, run, rank, world_size
        self.report = report or _no_report
        self.progress = progress if progress is not None and rank == 0 else _no_progress
        self.get_checkpoint = get_checkpoint or (lambda: None)
        self.family = load_family(spec.model.family)
        self.step = 0
        self._grad_norm = 0.0
        self.resumed_data_state = None
        self.resumed_world_size = world_size
        self.nonfinite_skipped = 0
        self._preemption_saved = False
        self._request_answered = False
        self._audit_lines: list[dict] = []
        self.skip_steps = resilience.read_skip_steps(run) if run.get("runs_root") else set()
        self.iteration_s: list[float] = []
        self.profile = step_profile.StepProfile(0, 0, 0)  # train.profile_steps: set up when the loop starts
        self._started = time.time()
        self.logging_s = 0.0
        self.logger = (MetricLogger(run["tracking_uri"], run["mlflow_run_id"], spec.tracking.flush_every_s)
                       if rank == 0 and run.get("mlflow_run_id") else NullLogger())
        startup.mark("MLflow client (rank 0)")
        self._build_engine()
        self._build_data()
        self.models = build_model_logger(self.logger, spec, run, self.family.build_model,
                                         lineage.dataset_refs(spec, self._manifests))
        startup.mark("manifests, MLflow model logger")

    # ----------------------------------------------------------------------------------------------- build
    def _build_engine(self) -> None:
        spec = self.spec
        torch.manual_seed(spec.train.seed)
        model = self.family.build_model(spec.model)
        startup.mark("model build")
        if spec.distributed.activation_checkpointing and hasattr(model, "activation_checkpointing"):
            model.activation_checkpointing = True
        if self.family.prepare_model is not None:
            from data.format import read_manifest
            from data.storage import storage_options

            url = spec.data.train[0].url
            self.family.prepare_model(model, spec.model, read_manifest(url, storage_options(url, spec.storage)))
        if spec.train.init_from:  # the driver pins models:/NAME@ALIAS to the model id it named at launch
            init_from = self.run_info.get("init_from") or spec.train.init_from
            report = weights.load_initial(model, init_from, self.run_info.get("tracking_uri"), spec.model)
            self._log_init_report(report)
        if spec.train.freeze:
            weights.freeze(model, spec.train.freeze)
        self.engine, self.optimizer, self.scheduler = ds.initialize(
            model, spec.train, spec.optim, spec.distributed, self.world, self.family.muon_adamw)
        self.accum = ds.grad_accumulation(spec.train, self.world)
        startup.mark("DeepSpeed initialise")

    def _log_init_report(self, report: dict[str, list[str]]) -> None:
        if self.rank != 0:
            return
        lines = [f"{k} ({len(v)}):\n" + "\n".join(f"  {x}" for x in v) for k, v in report.items()]
        text = "\n".join(lines)
        self.say(f"init_from {self.spec.train.init_from}: loaded {len(report['loaded'])} tensors; "
                 f"{len(report['shape_mismatch'])} shape mismatches re-initialised")
        if isinstance(self.logger, MetricLogger):
            self.logger.client.log_text(self.logger.run_id, text, "init_from.txt")

    def _build_data(self) -> None:
        data = self.spec.data
        self._manifests: dict = {}  # url -> Manifest (the run's datasets, linked to its models)
        # one transform per dataset: each carries its own normalisation statistics
        self.transform = [self._transform(source.url) for source in data.train]
        self.val_transform = [self._transform(source.url) for source in data.val] or None
        self._loader_args = dict(rank=self.rank, world_size=self.world,
                                 global_batch=self.spec.train.global_batch_size,
                                 micro_batch=self.spec.train.micro_batch_size, seed=self.spec.train.seed,
                                 collate=self.family.collate, storage=self.spec.storage)
        self.train_loader = None  # built in run(), after load_state() fixed the start step

    def _transform(self, url: str):
        from data.format import read_manifest
        from data.storage import storage_options

        self._manifests[url] = read_manifest(url, storage_options(url, self.spec.storage))
        return self.family.make_transform(self.spec.model, self._manifests[url])

    def _val_batches(self):
        from data.loader import build_loader

        if not self.spec.data.val:
            return None
        return build_loader(self.spec.data, self.spec.data.val, split="val", start_step=0,
                            transform=self.val_transform, **self._loader_args)

    # ----------------------------------------------------------------------------------------------- state
    def save_state(self, directory: str) -> None:
        """DeepSpeed checkpoint + trainer state (step, data position, RNG) into ``directory``."""
        data_state = self.train_loader.state(self.step) if self.train_loader else None
        if isinstance(self.logger, MetricLogger):
            write_points(os.path.join(directory, checkpoint.METRICS_FILE), self.logger.unsent(self.step))
        checkpoint.save(self.engine, directory, self.step, self.rank, self.world,
                        self.spec.distributed.zero_stage, data_state)

    def load_state(self, directory: str) -> None:
        """Everything back from ``directory``, at this world size (resharded if it changed)."""
        state = checkpoint.load(self.engine, directory, self.rank, self.world)
        self.step = int(state["step"])
        self.resumed_data_state = state.get("data")
        self.resumed_world_size = int(state["world_size"])
        carried = os.path.join(directory, checkpoint.METRICS_FILE)
        if isinstance(self.logger, MetricLogger) and os.path.exists(carried):
            self.logger.requeue(read_points(carried))  # steps <= the resumed one are never trained again

    # ----------------------------------------------------------------------------------------------- run
    def run(self) -> dict:
        latest = self.get_checkpoint()
        if latest is not None:
            with latest.as_directory() as directory:
                self.load_state(directory)
            self.say(f"resumed from step {self.step} (saved at world size {self.resumed_world_size}, "
                     f"now {self.world})")
        self._record_attempt()
        from data.loader import build_loader

        self.train_loader = build_loader(self.spec.data, self.spec.data.train, split="train",
                                         start_step=self.step, resume_state=self.resumed_data_state,
                                         transform=self.transform, **self._loader_args)
        startup.mark("checkpoint discovery, data loader")
        try:
            return self._loop()
        finally:
            self.train_loader.close()
            self.models.close()
            self.logger.close()

    def _loop(self) -> dict:
        t = self.spec.train
        batches = iter(self.train_loader)
        window: list[tuple[float, float, float]] = []
        last: dict = {}
        self.profile = step_profile.StepProfile(t.profile_steps, self.step, t.max_steps)
        while self.step < t.max_steps:
            started = time.perf_counter()
            if self.step + 1 in self.skip_steps:  # rolled back after a non-finite loss: this batch is skipped
                next(batches)
                self.step += 1
                self.nonfinite_skipped += 1
                continue
            self.profile.begin(self.step + 1)
            loss, step_time, wait = self._train_step(batches)
            self.step += 1
            if (profiled := self.profile.end(self.step)) is not None:
                self._log_profile(profiled)
            if self._started is not None and self.rank == 0:  # once per group start: time until training moves
                print(f"[rank 0] first step after start: step {self.step} done at {time.time():.3f} "
                      f"({time.time() - self._started:.1f} s after the worker started)", flush=True)
                self._log_startup()
            self._started = None
            faults.hold("step", self.step, self.rank)
            window.append((loss, step_time, wait))
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                last = self._log_train(window)
                window = []
            if t.eval_every and self.step % t.eval_every == 0 and self.step < t.max_steps:
                last.update(self.evaluate())
                if self.run_info.get("tune"):  # a sweep's trial: Tune (ASHA, TPE) decides on evaluations
                    self.report({**last, "step": self.step})
            if t.eval_suite_every and (self.step % t.eval_suite_every == 0 or self.step == t.max_steps):
                last.update(self._eval_suite())
            if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.max_steps:
                self._checkpoint(last)
            elif (why := self._preempted()) is not None:
                self._checkpoint(last, sync=True)
                if why == "driver":
                    if self.rank == 0:
                        resilience.acknowledge_checkpoint_request(self.run_info, self.step)
                    self._await_stop()
            self.iteration_s.append(time.perf_counter() - started)  # read by benchmarks/trainer_overhead.py
        last.update(self.evaluate(final=True))
        self._checkpoint(last, final=True)
        self._export()
        return last

    def _train_step(self, batches) -> tuple[float, float, float]:
        start = time.perf_counter()
        with self.profile.phase("data wait"):
            micro_batches = next(batches)
        wait = time.perf_counter() - start
        if self._started is not None:
            startup.mark("first batch")
        total = 0.0
        self.engine.train()
        if self.spec.train.audit_samples:
            self._audit(torch.cat([b["sample_id"] for b in micro_batches]))
        for i, batch in enumerate(micro_batches):
            with self.profile.phase("forward and loss"):
                batch = _to_device(batch, self.engine.device)
                outputs = self.engine(batch)
                loss = self.family.loss(outputs, batch, self.spec.model)
            if i == 0 and faults.poisoned(self.step + 1):
                loss = loss * float("nan")
            if not self._finite(loss):
                # policy "skip": a backward of exact zeros keeps DeepSpeed's accumulation and reduction in step
                loss = sum(p.sum() for p in self.engine.module.parameters() if p.requires_grad) * 0.0
            with self.profile.phase("backward"):
                self.engine.backward(loss)
            if i == len(micro_batches) - 1 and self.spec.distributed.zero_stage == 0:
                self._grad_norm = _local_grad_norm(self.engine.module)  # ZeRO-0 does not record it
            with self.profile.phase("optimizer step"):
                self.engine.step()
            total += loss.detach().float().item()
        return total / len(micro_batches), time.perf_counter() - start, wait

    def _log_startup(self) -> None:
        """Launch (or, in a sweep's trial, worker start) to this group's first step, phase by phase: printed and
        logged to MLflow at the start step."""
        startup.mark("first step")
        spans = startup.breakdown(self.run_info.get("startup", []), startup.marks())
        if not spans:
            return
        print(startup.summary(spans, "launch to first step" if self.run_info.get("startup") else
                              "worker start to first step"), flush=True)
        metrics = {startup.metric_name(p): s for p, s in spans}
        self.logger.log({**metrics, "startup/first_step_s": sum(s for _, s in spans)}, self.step)

    def _log_profile(self, profiled: dict[str, float]) -> None:
        """train.profile_steps: every rank prints its step profile; rank 0 logs it as profile/* metrics."""
        print(step_profile.line(profiled, self.profile.first, self.profile.last, self.rank), flush=True)
        self.logger.log({step_profile.metric_name(k): v for k, v in profiled.items()}, self.step)

    def _log_train(self, window) -> dict:
        losses = torch.tensor([sum(w[0] for w in window) / len(window)], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(losses)
        step_time = statistics.median(w[1] for w in window)
        metrics = {
            "train/loss": losses.item() / self.world,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(self.engine.get_global_grad_norm() if self.spec.distributed.zero_stage
                                     else self._grad_norm),
            "train/step_time_s": step_time,
            "train/samples_per_s": self.spec.train.global_batch_size / step_time,
            "train/data_wait_frac": sum(w[2] for w in window) / max(1e-12, sum(w[1] for w in window)),
            "train/nonfinite_skipped": float(self.nonfinite_skipped),
            "sys/world_size": float(self.world),
        }
        started = time.perf_counter()
        self.logger.log(metrics, self.step)
        self.logging_s += time.perf_counter() - started
        if self.rank == 0:
            print(f"step {self.step}: " + " ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in metrics.items()),
                  flush=True)
        self.progress("step", step=self.step, max_steps=self.spec.train.max_steps, loss=metrics["train/loss"],
                      samples_per_s=metrics["train/samples_per_s"], lr=metrics["train/lr"])
        return metrics

    def _audit(self, ids: torch.Tensor) -> None:
        """Record a hash of the global batch's sample ids for this step (train.audit_samples)."""
        parts: list = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(parts, ids.tolist())
        else:
            parts = [ids.tolist()]
        if self.rank == 0:
            digest = resilience.batch_digest([i for part in parts for i in part])
            self._audit_lines.append({"step": self.step + 1, "ids": digest, "world_size": self.world})

    def _flush_audit(self) -> None:
        if self.rank != 0 or not self._audit_lines:
            return
        resilience.write_audit(self.run_info, self._audit_lines)
        self._audit_lines = []

    def _finite(self, loss) -> bool:
        """All ranks agree whether this micro-batch's loss is finite; act on the spec's policy if not."""
        flag = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0])
        if self.world > 1:
            dist.all_reduce(flag)
        if flag.item() == 0:
            return True
        policy = self.spec.train.nonfinite
        if policy == "fail":
            raise FloatingPointError(f"non-finite loss at step {self.step + 1} (train.nonfinite: fail)")
        if policy == "rollback":
            if self.rank == 0:
                resilience.add_skip_step(self.run_info, self.step + 1)
            dist.barrier() if self.world > 1 else None
            raise resilience.RollBack(f"non-finite loss at step {self.step + 1}: rolling back to the last "
                                      "checkpoint and skipping this batch")
        self.nonfinite_skipped += 1
        return False

    def _preempted(self) -> str | None:
        """Every distributed.preemption_check_every steps: did the driver ask for a checkpoint (it got SIGTERM:
        "driver"), or did Ray send a drain notice ("notice")? All ranks agree; each is answered once."""
        every = self.spec.distributed.preemption_check_every
        if not every or self.step % every:
            return None
        # rank 0 reads the request; the collective below tells the others
        asked = (self.rank == 0 and self.run_info.get("runs_root") and not self._request_answered
                 and resilience.checkpoint_request(self.run_info) is not None)
        flag = torch.tensor([1.0 if asked else 0.0])
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self._request_answered = True
            self.say(f"checkpoint requested by the driver: checkpointing at step {self.step}")
            return "driver"
        if self._preemption_saved or resilience.preemption_notice() is None:
            return None
        self._preemption_saved = True
        self.say(f"preemption notice: checkpointing at step {self.step}")
        return "notice"

    def _await_stop(self) -> None:
        """The driver asked for that checkpoint because it is stopping: train no further (steps past it would
        only be trained and logged again on resume) until it stops the group, or its grace period is over."""
        grace = self.spec.distributed.preemption_grace_s
        self.say(f"checkpoint of step {self.step} saved; waiting for the driver to stop the run")
        time.sleep(grace + 30)  # the driver stops at grace_s at the latest
        self.say(f"the driver did not stop the run in {grace + 30:.0f} s; training on")

    def say(self, text: str) -> None:
        """A line in this worker's log and, from rank 0, on the driver's console."""
        print(f"[rank {self.rank}] {text}", flush=True)
        self.progress("note", text=text)

    def _record_attempt(self) -> None:
        self.progress("start", step=self.step, world_size=self.world, saved_world_size=self.resumed_world_size,
                      max_steps=self.spec.train.max_steps)
        if isinstance(self.logger, MetricLogger):
            resilience.record_attempt(self.logger, self.step, self.world, self.resumed_world_size)

    # ----------------------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, final: bool = False) -> dict:
        loader = self._val_batches()
        if loader is None:
            return {}
        self.engine.eval()
        values: dict[str, list[float]] = {"loss": []}
        first = None
        limit = None if final else self.spec.train.eval_batches
        try:
            for i, batch in enumerate(loader):
                if limit is not None and i >= limit:
                    break
                batch = _to_device(batch, self.engine.device)
                outputs = self.engine(batch)
                valid = batch.get("_valid")
                per_example = self.family.metrics(outputs, batch, self.spec.model)
                for name, v in per_example.items():
                    v = v.detach().float().cpu()
                    values.setdefault(name, []).extend((v[valid.cpu()] if valid is not None else v).tolist())
                values["loss"].append(self.family.loss(outputs, batch, self.spec.model).item())
                if first is None:
                    first = (batch, outputs)
        finally:
            loader.close()
        metrics = self._reduce_eval(values)
        self.logger.log(metrics, self.step)
        self.progress("eval", step=self.step, final=final, metrics=metrics)
        if final and self.rank == 0 and first is not None and self.family.plots is not None:
            self._log_plots(*first)
        return metrics

    def _eval_suite(self) -> dict:
        from trainers.evaluate import during_training

        scores = during_training(self.engine, self.spec, self.step, self.logger)
        self.progress("eval", step=self.step, final=False, metrics=scores)
        return scores

    def _reduce_eval(self, values: dict[str, list[float]]) -> dict:
        gathered: list = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(gathered, values)
        else:
            gathered = [values]
        merged: dict[str, list[float]] = {}
        for part in gathered:
            for k, v in part.items():
                merged.setdefault(k, []).extend(v)
        means = {k: float(np.mean(v)) for k, v in merged.items() if v}
        if self.family.derived_metrics is not None:
            means.update(self.family.derived_metrics(means))
        metrics = {f"val/{k}": v for k, v in means.items()}
        for name in self.family.median_metrics:
            if merged.get(name):
                metrics[f"val/{name}_median"] = float(np.median(merged[name]))
        return metrics

    def _log_plots(self, batch, outputs) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figures = self.family.plots(self.engine.module, batch, outputs, self.spec.model) or {}
        for name, fig in figures.items():
            if isinstance(self.logger, MetricLogger):
                self.logger.client.log_figure(self.logger.run_id, fig, f"plots/{name}.png")
            plt.close(fig)

    # ----------------------------------------------------------------------------------------------- output
    def _checkpoint(self, metrics: dict, sync: bool = False, final: bool = False) -> None:
        """Save locally, then hand the directory to the report: background (train.checkpoint_upload) returns at
        once and the upload thread deletes it; sync waits for the upload. Logs the time the step was blocked.
        With tracking.log_checkpoints_as_models the checkpoint's weights become a LoggedModel too (the final
        checkpoint's are the final model)."""
        started = time.perf_counter()
        self._flush_audit()
        background = self.spec.train.checkpoint_upload == "background" and not sync
        directory = tempfile.mkdtemp(prefix="sciscale-ckpt-")
        try:
            self.save_state(directory)
            # "final" marks the last report: a sweep's trial passes it to Tune itself once the model is exported
            self.report({**metrics, "step": self.step, **({"final": 1.0} if final else {})}, checkpoint_dir=directory,
                        background=background)
        finally:
            if not background and os.path.isdir(directory):
                shutil.rmtree(directory, ignore_errors=True)
        self.logger.log({"sys/checkpoint_block_s": time.perf_counter() - started}, self.step)
        if self.spec.tracking.log_checkpoints_as_models and not final:
            state = weights.gather_fp32_state(self.engine, self.spec.distributed.zero_stage, self.rank)
            self.models.log_in_background(state, self.step)

    def _export(self) -> None:
        """The final model: a LoggedModel of the last step (docs/contracts.md)."""
        state = weights.gather_fp32_state(self.engine, self.spec.distributed.zero_stage, self.rank)
        self.models.log(state, self.step)


def _no_progress(kind: str, **fields) -> None:
    """Ranks other than 0, and runs without a driver console, post nothing."""


def _no_report(metrics: dict, checkpoint_dir: str | None = None, background: bool = False) -> None:
    """Outside Ray nothing takes the checkpoint directory over: drop it."""
    if checkpoint_dir and background:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _local_grad_norm(module: torch.nn.Module) -> float:
    """Gradient norm before clipping; under ZeRO-0 gradients are already all-reduced, so local = global."""
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
