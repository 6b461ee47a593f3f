"""Start the real services sciscale talks to (SeaweedFS S3, MLflow server, Ray head) as local processes.

Each service runs in its own process group on loopback, with free ports, and is reported ready only after
a health check answers. ``Service.stop()`` ends the whole group (``mlflow server`` leaves job-executor
children behind a plain SIGTERM; ``weed server`` runs master, volume and filer in one tree).
Used by ``sciscale stack``, the quickstart and the integration tests.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Service:
    """A started service: its process group, where it answers and where it logs."""

    name: str
    pid: int
    endpoint: str
    log_path: str
    extra: dict = field(default_factory=dict)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``timeout``."""
        stop_group(self.pid, timeout)
        if self._proc is not None:
            self._proc.poll()

    def to_json(self) -> dict:
        return {"name": self.name, "pid": self.pid, "endpoint": self.endpoint, "log_path": self.log_path,
                "extra": self.extra}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_group(pgid: int, timeout: float = 15.0) -> None:
    """Stop every process of the group ``pgid`` (the leader's pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                _reap(pgid)
                return
            time.sleep(0.1)
    _reap(pgid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # killpg(0) succeeds while zombies remain; look for a live member
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def free_port(avoid_offset: int | None = None) -> int:
    """A free TCP port on 127.0.0.1; with ``avoid_offset`` also ``port + offset`` must be free (gRPC)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if avoid_offset is None:
            return port
        if port + avoid_offset < 65535 and _port_free(port + avoid_offset):
            return port
    raise RuntimeError("could not find a free port on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError(f"{name!r} not found on PATH; install the project with its dev extras "
                                f"(pip install -e '.[dev]') or put {name} on PATH")
    return found


def _spawn(name: str, argv: list[str], workdir: Path, env: dict | None = None) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"{name}.log", "ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=workdir, env={**os.environ, **(env or {})}, start_new_session=True)


def wait_http(url: str, proc: subprocess.Popen, name: str, log_path: Path, timeout: float = 90.0,
              ok=lambda status, body: status < 500, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` until ``ok(status, body)``; fail with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before it was ready; "
                               f"log {log_path}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
                if ok(resp.status, resp.read()):
                    return
        except urllib.error.HTTPError as err:
            if ok(err.code, b""):
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    stop_group(proc.pid)
    raise TimeoutError(f"{name} did not become ready at {url} within {timeout:.0f} s; log {log_path}:\n"
                       f"{_tail(log_path)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_seaweedfs(workdir: str | os.PathLike, s3_port: int | None = None) -> Service:
    """SeaweedFS master + volume + filer + S3 gateway on loopback; data under ``workdir``."""
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    ports = {k: free_port(avoid_offset=10000) for k in ("master", "volume", "filer")}
    s3_port = s3_port or free_port(avoid_offset=10000)
    argv = [_binary("weed"), "server", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", "-s3", f"-s3.port={s3_port}", "-volume.max=0",
            "-master.volumeSizeLimitMB=1024", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.preStopSeconds=0"]
    proc = _spawn("seaweedfs", argv, workdir)
    endpoint = f"http://127.0.0.1:{s3_port}"
    wait_http(endpoint + "/", proc, "SeaweedFS S3", workdir / "seaweedfs.log")
    _wait_s3_writable(endpoint, proc, workdir / "seaweedfs.log")
    return Service("seaweedfs", proc.pid, endpoint, str(workdir / "seaweedfs.log"),
                   extra={"ports": ports}, _proc=proc)


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment for clients of a local SeaweedFS (its default config accepts any key pair)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "sciscale"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "sciscale"),
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
            # SeaweedFS rejects the default CRC checksums of newer AWS SDKs (pyarrow multipart uploads)
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}


def _s3fs(endpoint: str):
    import s3fs  # imported lazily: the CLI start-up does not need it

    env = s3_env(endpoint)
    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             client_kwargs={"endpoint_url": endpoint, "region_name": env["AWS_REGION"]},
                             skip_instance_cache=True)


def create_bucket(endpoint: str, name: str) -> None:
    """Create bucket ``name`` (no error if it exists)."""
    fs = _s3fs(endpoint)
    if not fs.exists(name):
        fs.mkdir(name)


def _wait_s3_writable(endpoint: str, proc: subprocess.Popen, log_path: Path, timeout: float = 90.0) -> None:
    # the S3 port answers before the filer and a volume are ready: wait for a real round trip
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with code {proc.returncode}; log {log_path}:\n{_tail(log_path)}")
        try:
            fs = _s3fs(endpoint)
            create_bucket(endpoint, "sciscale-health")
            fs.pipe("sciscale-health/probe", b"ok")
            if fs.cat("sciscale-health/probe") == b"ok":
                fs.rm("sciscale-health/probe")
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
        time.sleep(0.5)
    stop_group(proc.pid)
    raise TimeoutError(f"SeaweedFS S3 at {endpoint} was not writable within {timeout:.0f} s ({last}); "
                       f"log {log_path}:\n{_tail(log_path)}")


def start_mlflow_server(workdir: str | os.PathLike, backend_uri: str | None = None,
                        artifacts_destination: str | None = None, port: int | None = None,
                        env: dict | None = None) -> Service:
    """An MLflow tracking server on loopback (sqlite store under ``workdir`` unless ``backend_uri``)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    backend_uri = backend_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    artifacts_destination = artifacts_destination or (workdir / "artifacts").as_uri()
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts_destination, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    proc = _spawn("mlflow", argv, workdir, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})
    uri = f"http://127.0.0.1:{port}"
    wait_http(uri + "/health", proc, "MLflow server", workdir / "mlflow.log", timeout=120,
              ok=lambda status, body: status == 200)
    return Service("mlflow", proc.pid, uri, str(workdir / "mlflow.log"),
                   extra={"backend_uri": backend_uri, "artifacts_destination": artifacts_destination}, _proc=proc)


def start_ray_head(workdir: str | os.PathLike, num_cpus: int | None = None, port: int | None = None,
                   dashboard_port: int | None = None, resources: dict[str, float] | None = None,
                   env: dict | None = None, timeout: float = 300.0) -> Service:
    """A Ray head (``ray start --head --block``) in its own process group with token authentication on; its
    token is ``workdir/auth_token`` (made, mode 0600, unless it exists). endpoint = Job API URL; ``extra``
    holds ``gcs_address`` and ``token_path``: pass ``ray_client_env(token_path)`` to its clients."""
    workdir = Path(workdir).resolve()
    token_path = ensure_token_file(workdir / "auth_token")
    port = port or free_port()
    dashboard_port = dashboard_port or free_port()
    argv = [_binary("ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
            # the agent's default port 52365 is taken by any other Ray on the machine; without the agent the
            # Job API answers "No available agent"
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={Path('/tmp') / ('ray-' + str(port))}", "--disable-usage-stats"]
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if resources:
        argv.append(f"--resources={json.dumps(resources)}")
    # RAY_ADDRESS names this head for its own processes: several heads may share /tmp/ray on one machine
    head_env = {**ray_client_env(token_path), "RAY_ADDRESS": f"127.0.0.1:{port}", **NORMAL_PRIORITY, **(env or {})}
    proc = _spawn("ray", argv, workdir, env=head_env)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    # /api/version needs the token: a 200 also proves that the head took our token file
    auth = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
    wait_http(dashboard + "/api/version", proc, "Ray head", workdir / "ray.log", timeout=timeout,
              ok=lambda status, body: status == 200, headers=auth)
    return Service("ray", proc.pid, dashboard, str(workdir / "ray.log"),
                   extra={"gcs_address": f"127.0.0.1:{port}", "token_path": str(token_path)}, _proc=proc)


def ensure_token_file(path: Path) -> Path:
    """A Ray auth token in ``path`` (256 random bits, like `ray get-auth-token --generate`), readable by this
    user only; an existing non-empty file is kept, so clients that read it before a restart still fit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text().strip():
        path.chmod(0o600)
        return path
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def start_ray_node(workdir: str | os.PathLike, gcs_address: str, token_path: str | os.PathLike,
                   num_cpus: int | None = None, resources: dict[str, float] | None = None,
                   worker_ports: tuple[int, int] = (20000, 29999), timeout: float = 180.0) -> Service:
    """One more Ray node on this machine joining the head at ``gcs_address`` (``ray start --address --block``)
    with the head's token, in its own process group; its ports are picked free and its worker ports kept
    apart from the head's. Returns once the cluster counts it as alive; ``stop()`` takes the node away (its
    workers die with it)."""
    workdir = Path(workdir).resolve()
    before = len(alive_nodes(gcs_address, token_path))
    argv = [_binary("ray"), "start", "--block", f"--address={gcs_address}", "--node-ip-address=127.0.0.1",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}", "--disable-usage-stats",
            # its own temp dir (short: Ray's socket paths live under it): sharing the head's, it would share the
            # jobs' unpacked working_dir, which Ray's working_dir plugin deletes and re-unpacks on each node's first
            # use, from under a job driver running in it (tests/integration/infra/test_infra_two_node.py)
            f"--temp-dir={tempfile.mkdtemp(prefix='ray-node-', dir='/tmp')}"]
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if resources:
        argv.append(f"--resources={json.dumps(resources)}")
    proc = _spawn("ray-node", argv, workdir, env={**ray_client_env(token_path), "RAY_ADDRESS": gcs_address,
                                                        **NORMAL_PRIORITY})
    deadline = time.monotonic() + timeout
    while len(alive_nodes(gcs_address, token_path)) <= before:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc.pid)
            raise RuntimeError(f"Ray node did not join {gcs_address} in {timeout:.0f} s; log:\n"
                               f"{_tail(workdir / 'ray-node.log')}")
        time.sleep(1.0)
    return Service("ray-node", proc.pid, gcs_address, str(workdir / "ray-node.log"), _proc=proc)


def alive_nodes(gcs_address: str, token_path: str | os.PathLike, workers_only: bool = False) -> list[str]:
    """Node ids of the live nodes of the cluster at ``gcs_address`` (token in ``token_path``), without the
    head's when ``workers_only`` (asked in a subprocess: ray.init is process-wide). Empty when the cluster
    cannot be reached."""
    probe = ("import json, ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and not (sys.argv[2] == '1' and "
             "'node:__internal_head__' in n['Resources'])]))")
    proc = subprocess.run([sys.executable, "-c", probe, gcs_address, "1" if workers_only else "0"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **ray_client_env(token_path)})
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if proc.returncode == 0 and lines and lines[-1].startswith("[") else []


NORMAL_PRIORITY = {"RAY_worker_niceness": "0"}  # the raylet's nice level for workers (Ray's default 15 yields training's CPU)


def ray_client_env(token_path: str | os.PathLike) -> dict[str, str]:
    """Environment for processes that talk to (or join) a head from start_ray_head: token auth with the token
    in ``token_path``. RAY_AUTH_TOKEN is emptied because it would win over the file, and an empty one counts
    as unset (in Ray and in orchestrator.cluster), so nothing depends on the caller's shell or ~/.ray."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_AUTH_TOKEN": ""}


def save_services(path: str | os.PathLike, services: list[Service]) -> None:
    Path(path).write_text(json.dumps([s.to_json() for s in services], indent=2))


def load_services(path: str | os.PathLike) -> list[Service]:
    return [Service(**d) for d in json.loads(Path(path).read_text())]
