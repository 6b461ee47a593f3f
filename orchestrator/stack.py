"""`sciscale stack up | down | status`: the real services of a cluster, as local processes under one folder.

``up`` starts SeaweedFS (S3 API), an MLflow tracking server (sqlite under the folder, or Postgres when given
a URL) whose artifacts are proxied to a bucket on that SeaweedFS, and a Ray head that requires the auth
token in ``ray/auth_token`` (mode 0600), each on loopback in its own process group, and reports ready only
after every health check answers. The folder's ``stack.json`` records what was started; ``up`` again with
everything healthy changes nothing, ``down`` stops exactly the recorded process groups (and any process
that still names the stack's folders), and ``status`` prints the URLs and the environment a spec (or a
Ray client) needs. Torch-free: imported by the CLI at start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from orchestrator import services

STATE_FILE = "stack.json"
STATE_VERSION = 2  # 2: the Ray head requires the auth token in ray/auth_token
DEFAULT_BUCKET = "sciscale"
# The AWS C++ SDK in pyarrow (Ray Train's checkpoint uploads) sends trailing CRC checksums on UploadPart by
# default, which SeaweedFS rejects as INVALID_ACCESS_KEY_ID; checksums only where the API requires them.
S3_COMPAT_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                 "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}
# what each service's leader runs; a recorded pid whose command line lacks it was reused by another program
_LEADER_MARK = {"seaweedfs": "weed", "mlflow": "mlflow", "ray": "ray"}
_HEALTH_PATH = {"seaweedfs": "/", "mlflow": "/health", "ray": "/api/version"}


def default_dir() -> Path:
    return Path(os.environ.get("SCISCALE_STACK_DIR", Path.home() / ".sciscale" / "stack"))


def register(subparsers: Any) -> None:
    """Add ``stack up|down|status`` to the ``sciscale`` argument parser."""
    stack = subparsers.add_parser("stack", help="local SeaweedFS + MLflow server + Ray head for specs to use",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = stack.add_subparsers(dest="stack_command", required=True)
    up = verbs.add_parser("up", help="start the services (nothing changes if they are already up)")
    _dir_arg(up)
    up.add_argument("--s3-port", type=int, help="SeaweedFS S3 port (default: a free port)")
    up.add_argument("--mlflow-port", type=int, help="MLflow server port (default: a free port)")
    up.add_argument("--ray-port", type=int, help="Ray GCS port (default: a free port)")
    up.add_argument("--dashboard-port", type=int, help="Ray dashboard / Job API port (default: a free port)")
    up.add_argument("--postgres-url", help="MLflow backend store, e.g. postgresql://user:pw@host:5432/mlflow "
                                           "(default: sqlite under the stack folder)")
    up.add_argument("--bucket", default=DEFAULT_BUCKET, help="S3 bucket for data, runs and MLflow artifacts")
    up.add_argument("--num-cpus", type=int, help="logical CPUs of the Ray head (default: all cores)")
    up.set_defaults(func=handle_up)
    down = verbs.add_parser("down", help="stop every process `up` started")
    _dir_arg(down)
    down.set_defaults(func=handle_down)
    status = verbs.add_parser("status", help="health, URLs and the environment for specs")
    _dir_arg(status)
    status.add_argument("--env", action="store_true", help="print only `export` lines, for eval \"$(...)\"")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.set_defaults(func=handle_status)


def _dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="stack folder (default: $SCISCALE_STACK_DIR or ~/.sciscale/stack)")


# ---- state ----------------------------------------------------------------------------------------------

def load_state(stack_dir: Path) -> dict | None:
    path = stack_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"stack state {path} is not valid JSON ({exc}); expected the file written by "
                         "`sciscale stack up`. Hint: stop leftover processes by hand, then delete it") from None


def _save_state(stack_dir: Path, state: dict) -> None:
    tmp = stack_dir / (STATE_FILE + ".tmp")
    tmp.touch(mode=0o600)  # may hold a Postgres URL with its password
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(stack_dir / STATE_FILE)  # readers never see a half-written state


def leader_alive(record: dict) -> bool:
    """The recorded process is still running and is still the program we started (pids get reused)."""
    pid = record["pid"]
    if not services.pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return _LEADER_MARK[record["name"]] in cmdline


def healthy(record: dict, timeout: float = 5.0, tries: int = 3) -> bool:
    """Alive and answering (the Ray head: and taking the stack's token); a loaded machine can delay an
    answer, so a service gets a few tries."""
    for attempt in range(tries):
        if not leader_alive(record):
            return False
        try:
            with urllib.request.urlopen(_health_request(record), timeout=timeout) as resp:
                if resp.status < 500:
                    return True
        except OSError:  # also an HTTP error status, e.g. 401 for a token the head does not take
            pass
        if attempt < tries - 1:
            time.sleep(1.0)
    return False


def _health_request(record: dict) -> urllib.request.Request:
    token_path = record.get("extra", {}).get("token_path")
    headers = {"Authorization": f"Bearer {Path(token_path).read_text().strip()}"} if token_path else {}
    return urllib.request.Request(record["endpoint"] + _HEALTH_PATH[record["name"]], headers=headers)


def client_env(state: dict) -> dict[str, str]:
    """What a spec (or `sciscale launch`) needs in its environment to use this stack."""
    by_name = {s["name"]: s for s in state["services"]}
    env = dict(state["s3_env"])
    env["MLFLOW_TRACKING_URI"] = by_name["mlflow"]["endpoint"]
    env["RAY_ADDRESS"] = by_name["ray"]["extra"]["gcs_address"]
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = by_name["ray"]["extra"]["token_path"]
    env["SCISCALE_RAY_DASHBOARD"] = by_name["ray"]["endpoint"]
    env["SCISCALE_S3_BUCKET"] = state["bucket"]
    return env


# ---- up -------------------------------------------------------------------------------------------------

def handle_up(args: argparse.Namespace) -> int:
    """Exit 0 when the stack is up; 1 (with the failing service's log tail) when a service did not start."""
    stack_dir = (args.dir or default_dir()).resolve()
    try:
        state = up(stack_dir, bucket=args.bucket, postgres_url=args.postgres_url, num_cpus=args.num_cpus,
                   ports={"s3": args.s3_port, "mlflow": args.mlflow_port, "ray": args.ray_port,
                          "dashboard": args.dashboard_port}, echo=print)
    except (TimeoutError, RuntimeError) as exc:  # raised by services with the log tail; nothing is left running
        print(f"stack up failed, everything it started was stopped: {exc}", file=sys.stderr)
        return 1
    print(describe(state))
    return 0


def up(stack_dir: Path, *, bucket: str = DEFAULT_BUCKET, postgres_url: str | None = None,
       num_cpus: int | None = None, ports: dict | None = None, echo=lambda *_: None) -> dict:
    """Start the stack (or keep it, if every recorded service is healthy); returns the state."""
    _check_up_args(bucket, postgres_url, ports or {})
    stack_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(stack_dir)
    current = bool(state) and state.get("version") == STATE_VERSION
    if current and all(healthy(s) for s in state["services"]):
        echo(f"stack in {stack_dir} is already up")
        return state
    if state:
        echo(f"stack in {stack_dir} is {'partly down' if current else 'from an older sciscale'}; restarting it")
        down(stack_dir)
    ports = _reuse_ports(state, ports or {})
    started: list[services.Service] = []
    try:
        state = _start_all(stack_dir, bucket, postgres_url, num_cpus, ports, started, echo)
    except BaseException:
        for service in reversed(started):  # never leave half a stack running
            service.stop()
        raise
    _save_state(stack_dir, state)
    return state


def _check_up_args(bucket: str, postgres_url: str | None, ports: dict) -> None:
    if postgres_url and not postgres_url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        raise ValueError(f"stack up --postgres-url: got {postgres_url!r}; expected postgresql://USER:PASSWORD@"
                         "HOST:5432/DATABASE. Hint: leave it out to use sqlite under the stack folder")
    if not (3 <= len(bucket) <= 63 and bucket.replace("-", "").isalnum() and bucket == bucket.lower()):
        raise ValueError(f"stack up --bucket: got {bucket!r}; expected 3-63 lowercase letters, digits or '-'")
    for name, port in ports.items():
        if port is not None and not 1024 <= port <= 55535:
            raise ValueError(f"stack up --{name}-port: got {port}; expected 1024..55535 (SeaweedFS also opens "
                             "port + 10000 for gRPC)")


def _reuse_ports(state: dict | None, ports: dict) -> dict:
    """Prefer the ports of the previous run of this stack, so that printed URLs stay valid."""
    if not state:
        return ports
    previous = state.get("ports", {})
    return {k: v if v is not None else _if_free(previous.get(k)) for k, v in ports.items()}


def _if_free(port: int | None) -> int | None:
    return port if port is not None and services._port_free(port) else None


def _start_all(stack_dir: Path, bucket: str, postgres_url: str | None, num_cpus: int | None, ports: dict,
               started: list, echo) -> dict:
    echo("starting SeaweedFS (S3) ...")
    s3 = services.start_seaweedfs(stack_dir / "seaweedfs", s3_port=ports.get("s3"))
    started.append(s3)
    services.create_bucket(s3.endpoint, bucket)
    s3_env = {**services.s3_env(s3.endpoint), **S3_COMPAT_ENV}
    echo("starting MLflow server ...")
    mlflow = services.start_mlflow_server(
        stack_dir / "mlflow", backend_uri=postgres_url, port=ports.get("mlflow"),
        artifacts_destination=f"s3://{bucket}/mlflow-artifacts",
        env={**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint})
    started.append(mlflow)
    echo("starting Ray head (token auth) ...")
    # Ray workers inherit the raylet's environment: give them the stack's S3 and MLflow settings. The head
    # requires the token start_ray_head writes to ray/auth_token (0600): other local users cannot submit code.
    # RAY_ADDRESS names this head for Ray Train's state-API calls, which otherwise find every Ray instance
    # on the machine (/tmp/ray is shared) and give up.
    gcs_port = ports.get("ray") or services.free_port()
    with exported({**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint, "MLFLOW_TRACKING_URI": mlflow.endpoint,
                   "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}):
        ray = services.start_ray_head(stack_dir / "ray", num_cpus=num_cpus, port=gcs_port,
                                      dashboard_port=ports.get("dashboard"))
    started.append(ray)
    return {"version": STATE_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dir": str(stack_dir), "bucket": bucket, "s3_env": s3_env,
            "ports": {"s3": int(s3.endpoint.rsplit(":", 1)[1]), "mlflow": int(mlflow.endpoint.rsplit(":", 1)[1]),
                      "ray": int(ray.extra["gcs_address"].rsplit(":", 1)[1]),
                      "dashboard": int(ray.endpoint.rsplit(":", 1)[1])},
            "services": [s.to_json() for s in started]}


@contextlib.contextmanager
def exported(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ (for this process and the subprocesses it starts) until the block ends."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---- down -----------------------------------------------------------------------------------------------

def handle_down(args: argparse.Namespace) -> int:
    stack_dir = (args.dir or default_dir()).resolve()
    stopped = down(stack_dir)
    print(f"stack in {stack_dir}: " + (f"stopped {', '.join(stopped)}" if stopped else "nothing was running"))
    return 0


def down(stack_dir: Path) -> list[str]:
    """Stop every recorded service (Ray first, S3 last), then whatever is left in their groups or sessions."""
    state = load_state(stack_dir)
    if state is None:
        return []
    stopped = []
    for record in reversed(state["services"]):
        if leader_alive(record):
            services.stop_group(record["pid"], timeout=10)
            stopped.append(record["name"])
    for pid in stray_pids(state):
        _kill(pid)
    (stack_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def stray_pids(state: dict) -> list[int]:
    """Live processes still in a recorded process group or session (e.g. children that changed group)."""
    leaders = {s["pid"] for s in state["services"]}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after the command: state, ppid, pgrp, session, ...
        if fields[0] != "Z" and (int(fields[2]) in leaders or int(fields[3]) in leaders):
            found.append(int(entry.name))
    return found


def _kill(pid: int, timeout: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and services.pid_alive(pid):
            time.sleep(0.1)
        if not services.pid_alive(pid):
            return


# ---- status ---------------------------------------------------------------------------------------------

def handle_status(args: argparse.Namespace) -> int:
    """Exit 0 when every service is healthy, 1 otherwise (so scripts can wait on it)."""
    stack_dir = (args.dir or default_dir()).resolve()
    state = load_state(stack_dir)
    if state is None:
        print(f"no stack in {stack_dir}; start one with `sciscale stack up`")
        return 1
    if state.get("version") != STATE_VERSION:
        print(f"the stack in {stack_dir} was started by an older sciscale (its Ray head takes no auth token); "
              f"restart it with `sciscale stack up --dir {stack_dir}`")
        return 1
    health = {s["name"]: healthy(s) for s in state["services"]}
    if args.json:
        text = json.dumps({**state, "healthy": health, "env": client_env(state)}, indent=2)
        print(re.sub(r"://([^:/@\s]+):[^@\s]+@", r"://\1:***@", text))  # no database password on screen
    elif args.env:
        print(env_lines(state))
    else:
        print(describe(state, health))
    return 0 if all(health.values()) else 1


def env_lines(state: dict) -> str:
    return "\n".join(f"export {k}={v}" for k, v in client_env(state).items())


def describe(state: dict, health: dict[str, bool] | None = None) -> str:
    health = health or {s["name"]: True for s in state["services"]}
    by_name = {s["name"]: s for s in state["services"]}
    mark = {True: "up", False: "DOWN"}
    lines = [f"sciscale stack in {state['dir']} (started {state['created']})",
             f"  S3 (SeaweedFS)  {mark[health['seaweedfs']]:4}  {by_name['seaweedfs']['endpoint']}  "
             f"bucket s3://{state['bucket']}",
             f"  MLflow server   {mark[health['mlflow']]:4}  {by_name['mlflow']['endpoint']}  "
             f"artifacts {by_name['mlflow']['extra']['artifacts_destination']}",
             f"  Ray head        {mark[health['ray']]:4}  {by_name['ray']['endpoint']}  "
             f"GCS {by_name['ray']['extra']['gcs_address']}",
             f"  Ray auth token  {by_name['ray']['extra']['token_path']}  (mode 0600; the exports below point "
             "clients at it)",
             "", "Environment (eval \"$(sciscale stack status --env)\"):", env_lines(state), "",
             "In a spec:",
             f"  data:     {{train: [{{url: s3://{state['bucket']}/datasets/NAME}}]}}",
             f"  storage:  {{runs_root: s3://{state['bucket']}/runs}}",
             f"  tracking: {{uri: {by_name['mlflow']['endpoint']}}}",
             f"Logs: {state['dir']}/*/*.log; stop with `sciscale stack down --dir {state['dir']}`"]
    return "\n".join(lines)
