"""`sciscale sweep SPEC`: a campaign over a spec's ``sweep:`` section on Ray Tune, one MLflow parent run.

Ray Tune is the engine, in the pattern Ray documents for Train v2: the Tuner's trainable is a small driver
function that runs one full sciscale run (its own run id, record, MLflow child run, checkpoints, resume and
failure budget) with a TorchTrainer whose ``TuneReportCallback`` passes each evaluation on to Tune. Tune owns
trial scheduling (``max_concurrent``), the samplers (grid, random, Optuna's TPE), ASHA, and the experiment
state that ``--resume`` restores (finished trials are not rerun; unfinished ones continue from their own
checkpoints, since a trial's run id is fixed by its Tune trial id). What this module adds: every trial
validated before anything starts, the parent run (trial table, best trial, plots, and for a scaling ladder
the fit of orchestrator/scaling.py), and one console line per trial event.

State: RUNS_ROOT/SWEEP_ID/sciscale/ (run.json of kind "sweep", spec.yaml), RUNS_ROOT/SWEEP_ID/tune/ (Tune's
experiment state), and each trial's own RUNS_ROOT/SWEEP_ID-tNNNNN/.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os

from orchestrator.runs import RunRecord, RunState, absolute_root, finish_run, mlflow_client, read_record
from orchestrator.spec import JobSpec, SweepSpec
from orchestrator.specload import SpecError, _MISSING, apply_overrides, read_yaml, upgrade_recorded, validate_spec

PARENT_TAG, SWEEP_TAG, KIND_TAG = "mlflow.parentRunId", "sciscale.sweep_id", "sciscale.kind"
MAX_GRID = 512  # combinations checked one by one before the sweep starts
# A trial's driver mostly waits on its Train controller: a token CPU share (Tune refuses 0), so that the
# workers' resources and max_concurrent decide how many trials run at once
TRIAL_DRIVER_CPU = 0.01


# ------------------------------------------------------------------------------------------------ trials
def combinations(sweep: SweepSpec) -> list[dict]:
    """Every combination of a grid or scaling sweep's values, once."""
    names = list(sweep.parameters)
    return [dict(zip(names, values)) for values in itertools.product(*(sweep.parameters[n].values for n in names))]


def grid(sweep: SweepSpec) -> list[dict]:
    """The trials of a grid or scaling sweep: every combination, num_samples times."""
    return combinations(sweep) * sweep.num_samples


def trial_raw(base: dict, values: dict) -> dict:
    """A trial's spec: the base spec without its sweep section, with the trial's values set."""
    raw = copy.deepcopy(base)
    raw.pop("sweep", None)
    return apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in values.items()], "sweep.parameters")


def check_trials(base: dict, sweep: SweepSpec, source: str) -> list[dict]:
    """Validate each trial before the sweep starts: every grid combination, or for drawn values each end of
    each range (the others at their lows, then at their highs). Raise one SpecError naming each bad one."""
    if sweep.method in ("grid", "scaling"):
        probes = combinations(sweep)
        if len(probes) > MAX_GRID:
            raise SpecError(source, [("sweep.parameters", _MISSING, f"{len(probes)} combinations; at most "
                                      f"{MAX_GRID} are allowed. Hint: use method random or tpe with num_samples")])
    else:
        lows = {k: s.probes()[0] for k, s in sweep.parameters.items()}
        highs = {k: s.probes()[-1] for k, s in sweep.parameters.items()}
        probes = [lows, highs] + [{**lows, k: v} for k, s in sweep.parameters.items() for v in s.probes()]
    problems, seen = [], set()
    for values in probes:
        try:
            validate_spec(trial_raw(base, values), source)
        except SpecError as exc:
            for path, value, message in exc.problems:
                key = (path, repr(value), message)
                if key not in seen:
                    seen.add(key)
                    shown = ", ".join(f"{k}={v}" for k, v in values.items())
                    problems.append((path, value, f"{message} (in the trial {shown})"))
    if problems:
        raise SpecError(source, problems)
    return probes


def param_space(sweep: SweepSpec) -> dict:
    from ray import tune

    space = {}
    for path, s in sweep.parameters.items():
        if sweep.method in ("grid", "scaling"):
            space[path] = tune.grid_search(list(s.values))
        elif s.values is not None:
            space[path] = tune.choice(list(s.values))
        else:
            draw = {"uniform": tune.uniform, "log_uniform": tune.loguniform, "int_uniform": tune.randint}[s.kind]
            low, high = getattr(s, s.kind)
            space[path] = draw(low, high + 1) if s.kind == "int_uniform" else draw(low, high)
    return space


def trial_run_id(sweep_id: str, trial_id: str) -> str:
    """From Tune's trial id, which a restore keeps, so a resumed trial reopens its run: grid and random ids end
    in the trial's index (SWEEP-t00003), a search algorithm's are its own (tpe: SWEEP-t56f790bb)."""
    return f"{sweep_id}-t{trial_id.rsplit('_', 1)[-1]}"


# ------------------------------------------------------------------------------------ the trial (Tune actor)
def run_trial(config: dict, base: dict, sweep_id: str, parent: dict) -> None:
    """One trial as one full sciscale run, in the Tune trial's actor."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.launch import failure_summary
    from orchestrator.runs import RunLog, ensure_run, run_context
    from orchestrator.specload import absolutize
    from trainers.ray_job import fit

    values = {k: config[k] for k in base["sweep"]["parameters"]}
    raw = trial_raw(base, values)
    raw.setdefault("tracking", {}).setdefault("tags", {}).update(
        {PARENT_TAG: parent["mlflow_run_id"], SWEEP_TAG: sweep_id, KIND_TAG: "trial"})
    spec = absolutize(validate_spec(raw, f"sweep {sweep_id}"))
    run_id = trial_run_id(sweep_id, tune.get_context().get_trial_id())
    done = _finished(spec, run_id)
    if done is not None:  # finished before the sweep was stopped, after Tune last saved its state
        tune.report(done)
        return
    record, _ = ensure_run(spec, run_id)
    run = {**run_context(record, spec), "tune": True}
    if base["sweep"].get("method") == "scaling":  # a ladder's axes (torch loads here: seconds per trial)
        _log_size(record, spec)
    log = RunLog(run, "driver.log", capture=True)
    try:
        result = fit(spec, record, run, callbacks=[_report_callback(TuneReportCallback)])
    except BaseException as exc:
        if mlflow_client(record.tracking_uri).get_run(record.mlflow_run_id).info.status != RunState.KILLED.value:
            summary = failure_summary(exc, log.where)  # KILLED: Tune stopped the trial, the driver said why
            finish_run(record, RunState.FAILED, f"{summary['type']}: {summary['message']}", error=summary)
        raise
    finally:
        log.close()
    finish_run(record, RunState.FINISHED)
    tune.report(result)  # last, once the run is complete: a scheduler's stop at the final step cuts nothing


def _report_callback(base):
    class EvaluationsToTune(base):
        """Ray's TuneReportCallback for every report but the final one, which the trial passes on itself after
        the final model is exported and the run FINISHED (Tune ends a trial whose scheduler says stop)."""

        def after_report(self, run_context, metrics, checkpoint):
            if not (metrics and metrics[0].get("final")):
                super().after_report(run_context, metrics, checkpoint)

    return EvaluationsToTune()


def _finished(spec: JobSpec, run_id: str) -> dict | None:
    """The last metrics of a trial whose run already FINISHED (a trial is never trained twice), else None."""
    record = read_record(absolute_root(spec.storage.runs_root), run_id, spec.storage)
    if record is None:
        return None
    client = mlflow_client(record.tracking_uri)
    run = client.get_run(record.mlflow_run_id)
    if run.info.status != RunState.FINISHED.value:
        return None
    steps = client.get_metric_history(record.mlflow_run_id, "train/loss")
    return {**run.data.metrics, "step": max((m.step for m in steps), default=spec.train.max_steps)}


def _log_size(record: RunRecord, spec: JobSpec) -> None:
    """N (parameters, on the meta device), the FLOPs of one sample's forward and backward (torch's FLOP
    counter) and D (samples the run trains on): a scaling ladder's axes, on the trial's run."""
    from orchestrator.plan import size_and_flops

    n, flops = size_and_flops(spec)
    metrics = {"model/params": float(n), "model/train_samples": float(spec.train.max_steps *
                                                                        spec.train.global_batch_size)}
    if flops:
        metrics["model/flops_per_sample"] = float(flops)
    client = mlflow_client(record.tracking_uri)
    for key, value in metrics.items():
        client.log_metric(record.mlflow_run_id, key, value, step=0)


# --------------------------------------------------------------------------------------------- the driver
def sweep(spec: JobSpec, base: dict, source: str, sweep_id: str | None = None, resume: bool = False,
          max_concurrent: int | None = None, cluster: str | None = None, in_cluster: bool = False) -> int:
    """Run (or with ``resume`` continue) the sweep; the parent run ends FINISHED once every trial has ended.
    With ``cluster`` the sweep's record and parent run are made here and its driver runs as a Ray job there."""
    from orchestrator.console import Console

    console = Console()
    check_trials(base, spec.sweep, source)
    if cluster:
        from orchestrator.cluster import job_client
        from orchestrator.launch import submit

        job_client(cluster)  # a wrong address or a missing token fails before any MLflow run exists
    parent = _parent(spec, base, sweep_id, resume, count_attempt=not in_cluster)
    if cluster:
        extra = f" --max-concurrent {max_concurrent}" if max_concurrent else ""
        return submit(spec, parent, cluster, console.echo, command=f"sweep --resume {parent.run_id} --runs-root "
                      f"{parent.runs_root} --in-cluster{extra}")
    console.echo(f"sweep {parent.run_id} ({'resumed' if resume and not in_cluster else 'new'}, {spec.sweep.method}, "
                 f"{_trial_count(spec.sweep)} trials); MLflow parent run {parent.mlflow_run_id} at "
                 f"{parent.tracking_uri}")
    from orchestrator.runs import RunLog, run_context

    log = RunLog(run_context(parent, spec), "driver.log", capture=False)
    console.attach(log)  # Ray's, Tune's and MLflow's own logging, and Tune's printed tables, go to driver.log
    console.echo(f"logs: {log.where}")
    try:
        with contextlib.redirect_stdout(log.file):
            results = _tune(spec, base, parent, console, max_concurrent, in_cluster)
    except BaseException as exc:
        finish_run(parent, RunState.KILLED if isinstance(exc, KeyboardInterrupt) else RunState.FAILED,
                   f"{type(exc).__name__}: {exc}")
        log.close()
        raise
    from orchestrator.sweep_report import summarise

    ok = summarise(spec, parent, results, console.echo)
    finish_run(parent, RunState.FINISHED if ok else RunState.FAILED, None if ok else "no trial finished")
    from orchestrator.runs import ui_url

    console.echo(f"MLflow UI: {ui_url(parent)}")
    log.close()
    return 0 if ok else 1


def _trial_count(sweep: SweepSpec) -> int:
    return len(grid(sweep)) if sweep.method in ("grid", "scaling") else sweep.num_samples


def _parent(spec: JobSpec, base: dict, sweep_id: str | None, resume: bool, count_attempt: bool = True) -> RunRecord:
    """The sweep's record and MLflow parent run: created, or for --resume read back and set RUNNING."""
    from orchestrator.runs import _experiment, new_run_id, tracking_uri, write_record
    from orchestrator.specload import dump_spec, flatten

    root = absolute_root(spec.storage.runs_root)
    if resume:
        record = read_record(root, sweep_id, spec.storage)
        record.attempts += int(count_attempt)  # the cluster job of a sweep submitted from here is its first
        client = mlflow_client(record.tracking_uri)
        client.update_run(record.mlflow_run_id, status=RunState.RUNNING.value)
        client.set_tag(record.mlflow_run_id, "sciscale.attempts", str(record.attempts))
        write_record(record, spec.storage)
        return record
    sweep_id = sweep_id or new_run_id(spec).replace(spec.name, f"{spec.name}-sweep", 1)
    if read_record(root, sweep_id, spec.storage) is not None:
        raise ValueError(f"sweep {sweep_id} exists in {root}. Hint: `sciscale sweep --resume {sweep_id}` "
                         "continues it; or pass another --sweep-id")
    uri = tracking_uri(spec)
    client = mlflow_client(uri)
    experiment_id = _experiment(client, spec.tracking.experiment, root, uri)
    run = client.create_run(experiment_id, run_name=sweep_id, tags={
        SWEEP_TAG: sweep_id, KIND_TAG: "sweep", "sciscale.family": spec.model.family, **spec.tracking.tags})
    from mlflow.entities import Param

    sweep_params = flatten(spec.sweep.model_dump(mode="json", exclude_none=True), "sweep")
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in sweep_params.items()][:100])
    client.log_text(run.info.run_id, dump_spec(spec), "spec.yaml")
    from orchestrator.lineage import log_datasets

    log_datasets(client, run.info.run_id, spec)  # what every trial reads (a swept data URL: the base's)
    record = RunRecord(run_id=sweep_id, runs_root=root, tracking_uri=uri, experiment=spec.tracking.experiment,
                       mlflow_run_id=run.info.run_id, kind="sweep")
    write_record(record, spec.storage, json.dumps(base, indent=1))
    return record


def _tune(spec: JobSpec, base: dict, parent: RunRecord, console, max_concurrent: int | None, in_cluster: bool):
    import ray
    from ray import tune

    from orchestrator.launch import ray_init
    from trainers.ray_job import storage

    ray_init(console, connect_existing=in_cluster)
    # checkpoints between evaluations report training metrics only; the sweep metric was checked up front
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    s = spec.sweep
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, sweep_id=parent.run_id,
                             parent={"mlflow_run_id": parent.mlflow_run_id}), {"CPU": TRIAL_DRIVER_CPU})
    path, filesystem = storage(parent, spec)
    experiment = f"{path.rstrip('/')}/{parent.run_id}/tune"
    _ECHO[0] = console.echo
    callbacks = [_console_callback(spec, parent)]
    restoring = tune.Tuner.can_restore(experiment, storage_filesystem=filesystem)  # --resume, a cluster job again
    if restoring:
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem, param_space=param_space(s))
        tuner._local_tuner._run_config.callbacks = callbacks  # a restored Tuner keeps no callbacks
        tuner._local_tuner._run_config.verbose = 0
    else:
        scheduler = None
        if s.early_stop is not None:
            from ray.tune.schedulers import ASHAScheduler

            steps = s.parameters.get("train.max_steps")
            scheduler = ASHAScheduler(time_attr="step", max_t=max(steps.probes()) if steps else spec.train.max_steps,
                                      grace_period=s.early_stop.grace_steps,
                                      reduction_factor=s.early_stop.reduction_factor)
        search = None
        if s.method == "tpe":
            from ray.tune.search.optuna import OptunaSearch

            search = OptunaSearch(seed=s.seed)
        elif s.method == "random":
            from ray.tune.search import BasicVariantGenerator

            # a search algorithm given to Tune ignores max_concurrent_trials: the generator takes it itself
            search = BasicVariantGenerator(random_state=s.seed, max_concurrent=max_concurrent or s.max_concurrent or 0)
        tuner = tune.Tuner(trainable, param_space=param_space(s), tune_config=tune.TuneConfig(
            metric=s.metric, mode=s.mode, num_samples=s.num_samples, search_alg=search, scheduler=scheduler,
            max_concurrent_trials=max_concurrent or s.max_concurrent, reuse_actors=False),
            run_config=tune.RunConfig(name="tune", storage_path=f"{path.rstrip('/')}/{parent.run_id}",
                                      storage_filesystem=filesystem, verbose=0, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=0)))
    return tuner.fit()


_ECHO = [print]  # the sweep's console; module state, since Tune pickles its callbacks into its experiment state


def _echo(text: str) -> None:
    _ECHO[0](text)


def _console_callback(spec: JobSpec, parent: RunRecord):
    """One console line per trial start and end; a trial that Tune stopped early (ASHA) ends KILLED with the
    reason tagged (its actor is gone, so nobody else would end its MLflow run)."""
    from ray.tune import Callback

    class SweepConsole(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            shown = ", ".join(f"{k}={_short(trial.config[k])}" for k in spec.sweep.parameters)
            _echo(f"trial {trial_run_id(parent.run_id, trial.trial_id)} started: {shown}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result, run_id = trial.last_result or {}, trial_run_id(parent.run_id, trial.trial_id)
            step, max_steps = result.get("step", 0), trial.config.get("train.max_steps", spec.train.max_steps)
            metric = result.get(spec.sweep.metric)
            shown = f"{spec.sweep.metric} {metric:.4g}" if isinstance(metric, float) else "no metric"
            if step < max_steps:
                record = read_record(parent.runs_root, run_id, spec.storage)
                if record is not None:
                    finish_run(record, RunState.KILLED, f"stopped early by ASHA at step {step} of {max_steps} "
                               f"({shown})")
                _echo(f"trial {run_id} stopped early at step {step}/{max_steps}: {shown}")
            else:
                _echo(f"trial {run_id} finished at step {step}: {shown}")

        def on_trial_error(self, iteration, trials, trial, **info):
            run_id = trial_run_id(parent.run_id, trial.trial_id)
            _echo(f"trial {run_id} FAILED: `sciscale status {run_id}` says why")

    return SweepConsole()


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def read_base(record: RunRecord) -> dict:
    """A sweep's base spec, its sweep section included, as `sciscale sweep` stored it (any runs root)."""
    from orchestrator.runs import runs_fs

    fs, path = runs_fs(record.runs_root)
    with fs.open(f"{path}/{record.run_id}/sciscale/spec.yaml", "r") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------- the CLI
def cmd_sweep(args) -> int:
    from orchestrator.cli import _checked
    from orchestrator.specload import absolutize, load_spec

    if args.resume:
        root = absolute_root(args.runs_root)
        record = read_record(root, args.resume)
        if record is None or record.kind != "sweep":
            raise ValueError(f"no sweep {args.resume!r} in runs root {root}. Hint: `sciscale ls` lists sweeps")
        base = upgrade_recorded(read_base(record))  # its trials are made from it
        source = f"{root}/{args.resume}/sciscale/spec.yaml"
        spec = absolutize(validate_spec(base, source))
        if args.cluster:
            _checked(spec, source, args.cluster)
        return sweep(spec, base, source, args.resume, resume=True, max_concurrent=args.max_concurrent,
                     cluster=args.cluster, in_cluster=args.in_cluster)
    base = apply_overrides(read_yaml(args.spec), args.overrides)
    spec = _checked(load_spec(args.spec, args.overrides, check_files=not args.cluster), args.spec, args.cluster)
    if spec.sweep is None:
        raise ValueError(f"{args.spec} has no sweep: section. Hint: `sciscale launch {args.spec}` runs it once; "
                         "docs/spec.md#sweep describes the section")
    base["storage"] = {**base.get("storage", {}), "runs_root": spec.storage.runs_root}  # absolute
    for split in ("train", "val"):
        for i, source in enumerate(getattr(spec.data, split)):
            base["data"][split][i]["url"] = source.url
    return sweep(spec, base, args.spec, args.sweep_id, max_concurrent=args.max_concurrent, cluster=args.cluster)


def register(sub) -> None:
    import argparse

    p = sub.add_parser("sweep", help="run the spec's sweep: section (grid, random, tpe, scaling ladder) on Ray "
                                     "Tune, every trial a full run under one MLflow parent run")
    p.add_argument("spec", nargs="?", help="path to the YAML job spec with a sweep: section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field of the base spec (or of the sweep section), repeatable")
    p.add_argument("--sweep-id", help="id of the sweep (default NAME-sweep-YYYYmmdd-HHMMSS)")
    p.add_argument("--resume", metavar="SWEEP_ID", help="continue this sweep: finished trials are kept, "
                                                        "unfinished ones resume from their checkpoints")
    p.add_argument("--runs-root", default="runs", help="runs root of --resume (default: runs)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (overrides sweep.max_concurrent)")
    p.add_argument("--cluster", metavar="ADDRESS", help="run the sweep's driver as a job on this Ray cluster "
                   "(Ray Job API, e.g. http://HEAD:8265); the runs root must be one the cluster reaches")
    p.add_argument("--in-cluster", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_checked_args)


def _checked_args(args) -> int:
    if not args.spec and not args.resume:
        raise ValueError("give a SPEC, or --resume SWEEP_ID. Hint: `sciscale sweep --help`")
    return cmd_sweep(args)
