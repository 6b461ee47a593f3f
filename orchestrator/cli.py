"""The `sciscale` command line. Bad input exits 2 with one screen and no traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# Modules that add their own sub-commands with register(subparsers); each is torch-free at import time.
PLUGIN_COMMANDS = ("orchestrator.stack", "orchestrator.render", "orchestrator.registry", "orchestrator.sweep")


def _err(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path to the YAML job spec")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. --set train.max_steps=100 (repeatable)")


def _load(args, check_files: bool = True):
    from orchestrator.specload import load_spec

    return load_spec(args.spec, args.overrides, check_files=check_files)


def cmd_validate(args) -> int:
    from orchestrator import preflight
    from orchestrator.spec import valid_world_sizes

    spec = _load(args, check_files=not args.no_data)
    trials = ""
    if spec.sweep is not None:
        from orchestrator.specload import apply_overrides, read_yaml
        from orchestrator.sweep import check_trials

        probes = check_trials(apply_overrides(read_yaml(args.spec), args.overrides), spec.sweep, args.spec)
        trials = f"; sweep: {len(probes)} {'trials' if spec.sweep.method in ('grid', 'scaling') else 'probes'} valid"
    notes = [] if args.no_data else preflight.check(spec, args.spec, unreachable_ok=True)
    for note in notes:
        _err(f"note: {note}")
    data = "data not checked (--no-data)" if args.no_data else (
        "fits its data" if not notes else "fits the data that could be read")
    print(f"{args.spec}: valid ({spec.model.family}/{getattr(spec.model, 'arch', '?')}, {data}, "
          f"world sizes {spec.distributed.world_sizes()}; any of {valid_world_sizes(spec)} keep the global batch"
          f"{trials})")
    return 0


def _checked(spec, source: str, cluster: str | None):
    """The preflight of launch and resume: data checked against the spec before Ray or a job starts; for a
    cluster, local paths no node has are refused, and data this machine cannot read is checked in the job."""
    from orchestrator import preflight

    if cluster:
        preflight.cluster_paths(spec, source)
    for note in preflight.check(spec, source, unreachable_ok=bool(cluster)):
        _err(f"note: {note}; the cluster job checks it before training starts")
    return spec


def cmd_schema(args) -> int:
    from orchestrator.spec import JobSpec

    text = json.dumps(JobSpec.model_json_schema(), indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        _err(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_plan(args) -> int:
    from orchestrator.plan import render_plan

    max_memory = None
    if args.max_memory:
        from trainers.inference import parse_max_memory  # torch-free: a bad budget fails before torch loads

        max_memory = parse_max_memory(args.max_memory)
    print(render_plan(_load(args), max_memory))
    return 0


def cmd_launch(args) -> int:
    from orchestrator import startup

    startup.mark("Python start, CLI")
    from orchestrator.launch import launch

    from orchestrator.specload import SpecError, missing_files

    spec = _load(args, check_files=False)
    if spec.sweep is not None:  # said before its data is looked at
        raise ValueError(f"{args.spec} has a sweep: section ({spec.sweep.method} over "
                         f"{', '.join(spec.sweep.parameters)}). Hint: run it with `sciscale sweep {args.spec}`; to "
                         "train the base spec once, add --set sweep=null")
    if not args.cluster and missing_files(spec):
        raise SpecError(args.spec, missing_files(spec))
    spec = _checked(spec, args.spec, args.cluster)
    startup.mark("spec and preflight")
    return launch(spec, run_id=args.run_id, cluster=args.cluster, in_cluster=args.in_cluster, verbose=args.verbose)


def cmd_eval(args) -> int:
    from trainers.evaluate import run_eval  # torch loads here, not at CLI start

    return run_eval(args)


def cmd_resume(args) -> int:
    from orchestrator.launch import launch
    from orchestrator.runs import absolute_root
    from orchestrator.specload import load_spec

    root = absolute_root(args.runs_root)
    source = f"{root}/{args.run_id}/sciscale/spec.yaml"
    spec = load_spec(source, args.overrides, check_files=not args.cluster, recorded=True) if "://" not in root else None
    if spec is None:
        raise ValueError("resume from an s3:// runs root: pass the spec to `sciscale launch SPEC --run-id RUN`")
    return launch(_checked(spec, source, args.cluster), run_id=args.run_id, cluster=args.cluster,
                  verbose=args.verbose)


def cmd_ui(args) -> int:
    import os
    import subprocess

    from orchestrator.runs import absolute_root

    root = absolute_root(args.runs_root)
    db = f"{root}/mlflow.db"
    if not os.path.exists(db):
        raise ValueError(f"no embedded MLflow store at {db}. Hint: pass --runs-root of a run launched with the "
                         "default tracking settings")
    _err(f"MLflow UI for {db} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # its own process group: stopping `sciscale ui` (Ctrl-C, SIGTERM) stops mlflow server and its uvicorn worker
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                             "--host", args.host, "--port", str(args.port), "--workers", "1"], env=env,
                            start_new_session=True)
    return _wait_stopping_group(proc)


def _wait_stopping_group(proc) -> int:
    import signal

    from orchestrator.services import stop_group

    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_group(proc.pid, timeout=10)
        return 130


def cmd_data_tool(args) -> int:
    """`sciscale data generate|convert NAME ...`: the named module parses its own arguments."""
    from data.converters import CONVERTER_MODULES
    from data.generators import GENERATOR_MODULES

    modules = GENERATOR_MODULES if args.tool == "generate" else CONVERTER_MODULES
    if args.name is None:
        print(_tool_list(args.tool, modules))
        return 0 if args.list_tools else 2
    if args.name not in modules:
        import difflib

        close = difflib.get_close_matches(args.name, list(modules), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {args.tool} name {args.name!r}{hint}; expected one of {', '.join(modules)}")
    module = importlib.import_module(modules[args.name])
    parser = argparse.ArgumentParser(prog=f"sciscale data {args.tool} {args.name}",
                                     description=(module.__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return module.run(parser.parse_args(args.rest))


def _tool_list(tool: str, modules: dict[str, str]) -> str:
    """`sciscale data convert --help`: every converter (or generator) with the first line of its docstring,
    read from the source without importing it."""
    import ast
    from importlib.util import find_spec

    lines = [f"usage: sciscale data {tool} NAME [options]   (`sciscale data {tool} NAME --help` for its options)",
             "", f"{'converters' if tool == 'convert' else 'generators'}:"]
    for name, module in modules.items():
        doc = ast.get_docstring(ast.parse(open(find_spec(module).origin).read())) or ""
        lines.append(f"  {name:<15} {doc.strip().splitlines()[0] if doc.strip() else ''}")
    return "\n".join(lines)


def _register_data(sub) -> None:
    try:
        data_cli = importlib.import_module("data.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "data.cli":
            raise
        data_sub = sub.add_parser("data", help="datasets: generate, convert").add_subparsers(
            dest="data_command", required=True, metavar="DATA_COMMAND")
    else:
        data_sub = data_cli.register(sub)
    for tool, what in (("generate", "make a dataset with a physics generator"),
                       ("convert", "convert a dataset from another format to shards")):
        p = data_sub.add_parser(tool, help=f"{what}; `sciscale data {tool} NAME --help` for its options",
                                add_help=False)
        p.add_argument("-h", "--help", dest="list_tools", action="store_true", help="list them and exit")
        p.add_argument("name", nargs="?", help="generator/converter name")
        p.add_argument("rest", nargs=argparse.REMAINDER, help="its own options")
        p.set_defaults(func=cmd_data_tool, tool=tool)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sciscale", description="Train scientific foundation models on Ray + "
                                     "DeepSpeed, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a job spec, and against its data when that can be read, and exit")
    _spec_args(p)
    p.add_argument("--no-data", action="store_true", help="check the spec alone, without reading its datasets")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of job specs (for editors)")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("plan", help="parameters, per-rank memory per ZeRO stage, batch decomposition; with "
                       "--max-memory, the device map for inference")
    _spec_args(p)
    p.add_argument("--max-memory", metavar="BUDGETS",
                   help="also print the device map Accelerate gives the model for inference under these budgets, "
                        "e.g. 0=20GiB,1=20GiB,cpu=64GiB,disk (GPU index or cpu = size; disk allows offloading "
                        "what fits nowhere else); GPUs this machine lacks can be planned for")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("launch", help="run a spec on local Ray, or submit it to a cluster with --cluster")
    _spec_args(p)
    p.add_argument("--cluster", metavar="ADDRESS", help="Ray Job API address, e.g. http://HEAD:8265")
    p.add_argument("--run-id", help="run id; launching an existing id continues it from its latest checkpoint")
    p.add_argument("--in-cluster", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's, MLflow's and the workers' own output instead of keeping it in the run's logs")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("resume", help="continue a run from its latest checkpoint, into the same MLflow run")
    p.add_argument("run_id")
    p.add_argument("--runs-root", default="runs", help="runs root the run lives in (default: runs)")
    p.add_argument("--cluster", metavar="ADDRESS", help="submit the resumed run to this Ray cluster")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("-v", "--verbose", action="store_true", help="as for launch")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("eval", help="score a run, checkpoint or MLflow model by its field's benchmarks on a dataset")
    p.add_argument("source", help="run id (in --runs-root), checkpoint directory, or MLflow model URI "
                                  "(runs:/RUN/model, models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID)")
    p.add_argument("--data", required=True, help="dataset version, or a root holding <split>/ versions")
    p.add_argument("--split", help="split under --data (default: the dataset itself, else test/, else val/)")
    p.add_argument("--runs-root", default="runs", help="runs root a run id lives in (default: runs)")
    p.add_argument("--max-samples", type=int, help="score at most N held-out samples")
    p.add_argument("--max-memory", metavar="BUDGETS", help="load with Accelerate under these budgets, e.g. "
                   "0=20GiB,cpu=64GiB,disk (see `sciscale plan --max-memory`)")
    p.add_argument("--offload-dir", help="directory for weights offloaded to disk (with --max-memory ...,disk)")
    p.add_argument("--no-physical-checks", action="store_true",
                   help="skip the atoms family's MD energy drift and relaxation checks (minutes on a CPU)")
    p.add_argument("--no-log", action="store_true", help="print the scores without logging them to MLflow")
    p.set_defaults(func=cmd_eval)

    from orchestrator import jobs

    jobs.register(sub)

    p = sub.add_parser("ui", help="serve the MLflow UI over the embedded store of a runs root")
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    _register_data(sub)
    for name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        _err(f"error: {exc}" if not type(exc).__name__ == "SpecError" else str(exc))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
