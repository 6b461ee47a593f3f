"""The `sciscale` command line. Bad input exits 2 with one screen and no traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# Modules that add their own sub-commands with register(subparsers); each is torch-free at import time.
PLUGIN_COMMANDS = ("orchestrator.stack", "orchestrator.render")


def _err(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path to the YAML job spec")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. --set train.max_steps=100 (repeatable)")


def _load(args):
    from orchestrator.specload import load_spec

    return load_spec(args.spec, args.overrides)


def cmd_validate(args) -> int:
    spec = _load(args)
    from orchestrator.spec import valid_world_sizes

    print(f"{args.spec}: valid ({spec.model.family}/{getattr(spec.model, 'arch', '?')}, "
          f"world sizes {spec.distributed.world_sizes()}; any of {valid_world_sizes(spec)} keep the global batch)")
    return 0


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

    print(render_plan(_load(args)))
    return 0


def cmd_launch(args) -> int:
    from orchestrator.launch import launch

    return launch(_load(args), run_id=args.run_id, cluster=args.cluster, in_cluster=args.in_cluster, echo=_err)


def cmd_resume(args) -> int:
    from orchestrator.launch import launch
    from orchestrator.runs import absolute_root
    from orchestrator.specload import load_spec

    root = absolute_root(args.runs_root)
    spec = load_spec(f"{root}/{args.run_id}/sciscale/spec.yaml", args.overrides) if "://" not in root else None
    if spec is None:
        raise ValueError("resume from an s3:// runs root: pass the spec to `sciscale launch SPEC --run-id RUN`")
    return launch(spec, run_id=args.run_id, cluster=args.cluster, echo=_err)


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
    return subprocess.call([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                            "--host", args.host, "--port", str(args.port), "--workers", "1"], env=env)


def cmd_data_tool(args) -> int:
    """`sciscale data generate|convert NAME ...`: the named module parses its own arguments."""
    from data.converters import CONVERTER_MODULES
    from data.generators import GENERATOR_MODULES

    modules = GENERATOR_MODULES if args.tool == "generate" else CONVERTER_MODULES
    if args.name not in modules:
        import difflib

        close = difflib.get_close_matches(args.name, list(modules), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {args.tool} name {args.name!r}{hint}; expected one of {', '.join(modules)}")
    module = importlib.import_module(modules[args.name])
    parser = argparse.ArgumentParser(prog=f"sciscale data {args.tool} {args.name}",
                                     description=(module.__doc__ or "").strip().splitlines()[0])
    module.add_arguments(parser)
    return module.run(parser.parse_args(args.rest))


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
        p.add_argument("name", help="generator/converter name")
        p.add_argument("rest", nargs=argparse.REMAINDER, help="its own options")
        p.set_defaults(func=cmd_data_tool, tool=tool)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sciscale", description="Train scientific foundation models on Ray + "
                                     "DeepSpeed, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a job spec and exit")
    _spec_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of job specs (for editors)")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("plan", help="parameters, per-rank memory per ZeRO stage, batch decomposition")
    _spec_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("launch", help="run a spec on local Ray, or submit it to a cluster with --cluster")
    _spec_args(p)
    p.add_argument("--cluster", metavar="ADDRESS", help="Ray Job API address, e.g. http://HEAD:8265")
    p.add_argument("--run-id", help="run id; launching an existing id continues it from its latest checkpoint")
    p.add_argument("--in-cluster", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("resume", help="continue a run from its latest checkpoint, into the same MLflow run")
    p.add_argument("run_id")
    p.add_argument("--runs-root", default="runs", help="runs root the run lives in (default: runs)")
    p.add_argument("--cluster", metavar="ADDRESS", help="submit the resumed run to this Ray cluster")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    p.set_defaults(func=cmd_resume)

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
