"""Two Ray nodes as separate `ray start` processes, each in its own network namespace (joined by a veth
pair) where the machine allows it, else both on loopback with distinct ports. A 2-worker job must place one
worker on each node; killing the second node mid-run must not lose the run: it goes on from its last
checkpoint with the one worker that still fits (elastic 1..2 workers, one restart allowed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestrator import services

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).with_name("two_node_driver.py")
SPEC = Path(__file__).resolve().parents[1] / "specs" / "backbone.yaml"
ROOT = Path(__file__).resolve().parents[3]
STEPS = 14
IFNAME = "ss0"


def _ip(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20)


class Netns:
    """Two namespaces ``a`` and ``b`` joined by a veth pair; addresses exist only inside them."""

    def __init__(self, tag: str, subnet: int):
        self.a, self.b = f"ssa-{tag}", f"ssb-{tag}"
        self.veth_a, self.veth_b = f"vsa{tag}"[:15], f"vsb{tag}"[:15]
        # a /30 of 10.213/16, reachable only between these two namespaces
        self.ip_a, self.ip_b = f"10.213.{subnet}.1", f"10.213.{subnet}.2"

    def create(self) -> None:
        steps = [("netns", "add", self.a), ("netns", "add", self.b),
                 ("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b),
                 ("link", "set", self.veth_a, "netns", self.a), ("link", "set", self.veth_b, "netns", self.b),
                 # the same name on both sides, so one GLOO_SOCKET_IFNAME fits every node
                 ("-n", self.a, "link", "set", self.veth_a, "name", IFNAME),
                 ("-n", self.b, "link", "set", self.veth_b, "name", IFNAME),
                 ("-n", self.a, "addr", "add", f"{self.ip_a}/30", "dev", IFNAME),
                 ("-n", self.b, "addr", "add", f"{self.ip_b}/30", "dev", IFNAME),
                 ("-n", self.a, "link", "set", "lo", "up"), ("-n", self.b, "link", "set", "lo", "up"),
                 ("-n", self.a, "link", "set", IFNAME, "up"), ("-n", self.b, "link", "set", IFNAME, "up")]
        for argv in steps:
            proc = _ip(*argv)
            if proc.returncode != 0:
                self.delete()
                raise OSError(f"ip {' '.join(argv)}: {proc.stderr.strip()}")

    def delete(self) -> None:
        for ns in (self.a, self.b):
            _ip("netns", "del", ns)  # removes the veth pair with it

    def prefix(self, which: str) -> list[str]:
        return ["ip", "netns", "exec", self.a if which == "a" else self.b]


@contextlib.contextmanager
def two_node_topology():
    """(prefix_a, ip_a, prefix_b, ip_b, mode): how to run a command on each node and its address
    (benchmarks/two_node_scaling.py uses it too)."""
    tag = uuid.uuid4().hex[:6]
    netns = Netns(tag, int(tag, 16) % 250 + 1)
    if shutil.which("ip") and os.geteuid() == 0:
        try:
            netns.create()
        except OSError as exc:
            print(f"network namespaces unavailable ({exc}); both nodes on loopback")
        else:
            yield netns.prefix("a"), netns.ip_a, netns.prefix("b"), netns.ip_b, "netns"
            netns.delete()
            return
    yield [], "127.0.0.1", [], "127.0.0.1", "loopback"


@pytest.fixture(scope="module")
def topology():
    with two_node_topology() as nodes:
        yield nodes


def _env(address: str, mode: str, token_path: Path) -> dict:
    # the cluster's processes need no repository path: the driver imports only ray and torch, the CLI runs
    # from the repository root and ships the packages as the job's working_dir
    # nor the test session's services: its MLflow server and S3 listen on the root namespace's loopback, which
    # the nodes' namespaces cannot reach (an MLFLOW_TRACKING_URI left by an earlier test made the CLI retry for
    # minutes); the runs here keep their MLflow store and data under tmp_path
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI") and not k.startswith("AWS_")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
            # token auth as on real clusters: both nodes and every client read the same token file
            **services.ray_client_env(token_path),
            # Ray Train's state-API calls find every cluster on the machine (/tmp/ray is shared): name ours
            "RAY_ADDRESS": address,
            # gloo would advertise the hostname's address (127.0.0.1), unreachable from the other namespace
            "GLOO_SOCKET_IFNAME": IFNAME if mode == "netns" else "lo", "DS_ACCELERATOR": "cpu"}


def _start(prefix: list[str], argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(prefix + argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _wait_nodes(prefix: list[str], address: str, count: int, env: dict, timeout: float = 240) -> None:
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(prefix + [sys.executable, "-c", probe, address], capture_output=True, text=True,
                              timeout=120, env=env)
        if proc.returncode == 0 and proc.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} live nodes in {timeout:.0f} s")


def _progress(workdir: Path) -> list[dict]:
    path = workdir / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class TwoNodes:
    """A running head (namespace a) and second node (namespace b); ``kill_node`` crashes the second one."""

    def __init__(self, topology, workdir: Path):
        self.prefix_a, self.ip_a, self.prefix_b, self.ip_b, self.mode = topology
        self.workdir = workdir
        port, self.dashboard_port = services.free_port(), services.free_port()
        self.address = f"{self.ip_a}:{port}"
        self.dashboard = f"http://{self.ip_a}:{self.dashboard_port}"
        self.env = _env(self.address, self.mode, services.ensure_token_file(workdir / "auth_token"))
        ray = shutil.which("ray") or "ray"
        # the dashboard serves the Job API and the state API that Ray Train's controller polls
        self.head_argv = [ray, "start", "--head", "--block", f"--node-ip-address={self.ip_a}", f"--port={port}",
                          "--num-cpus=2", '--resources={"slot": 1}', "--include-dashboard=true",
                          f"--dashboard-host={self.ip_a}", f"--dashboard-port={self.dashboard_port}",
                          f"--temp-dir=/tmp/ray-2n-{port}", "--disable-usage-stats"]
        # its own temp dir, as on a real second machine: nodes sharing one would share the job's unpacked
        # working_dir, and Ray's working_dir plugin deletes and re-unpacks it when a node first sets the job's
        # runtime env up, pulling the directory from under the job driver on the head (whose torch import then
        # dies with "oneMKL FATAL ERROR: Cannot load libtorch_cpu.so": its cwd no longer exists)
        self.node_argv = [ray, "start", "--block", f"--address={self.address}", f"--node-ip-address={self.ip_b}",
                          "--num-cpus=2", '--resources={"slot": 1}', f"--temp-dir=/tmp/ray-2n-{port}-b",
                          "--disable-usage-stats"]
        if self.mode == "loopback":
            self.node_argv += [f"--node-manager-port={services.free_port()}",
                               f"--object-manager-port={services.free_port()}"]
        self.head = self.node = None

    def start(self) -> None:
        self.head = _start(self.prefix_a, self.head_argv, self.workdir / "head.log", self.env)
        _wait_nodes(self.prefix_a, self.address, 1, self.env)
        self.node = _start(self.prefix_b, self.node_argv, self.workdir / "node.log", self.env)
        _wait_nodes(self.prefix_a, self.address, 2, self.env)

    def kill_node(self) -> None:
        os.killpg(self.node.pid, signal.SIGKILL)  # a crash, not a drain: the node vanishes mid-run
        self.node.wait(timeout=30)

    def stop(self) -> None:
        for proc in (self.node, self.head):
            if proc is not None:
                services.stop_group(proc.pid, timeout=10)

    def run_a(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a command in the head's namespace."""
        return subprocess.run(self.prefix_a + argv, capture_output=True, text=True, env=self.env, cwd=ROOT,
                              **kwargs)


@pytest.fixture
def two_nodes(topology, tmp_path):
    cluster = TwoNodes(topology, tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_job_spans_both_nodes_and_survives_losing_one(two_nodes, tmp_path):
    driver = subprocess.Popen(two_nodes.prefix_a + [sys.executable, str(DRIVER), two_nodes.address, str(tmp_path),
                                                    str(STEPS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=two_nodes.env)
    try:
        deadline = time.monotonic() + 300
        while not any(p["step"] >= 3 for p in _progress(tmp_path)):
            if driver.poll() is not None:
                out, err = driver.communicate()
                pytest.fail(f"driver exited early: {out[-2000:]}\n{err[-4000:]}")
            assert time.monotonic() < deadline, "the job did not reach step 3"
            time.sleep(0.5)
        first = _progress(tmp_path)[0]
        assert first["world"] == 2 and len(set(first["nodes"])) == 2, f"workers did not span both nodes: {first}"
        two_nodes.kill_node()
        out, err = driver.communicate(timeout=420)
        result = json.loads(out.strip().splitlines()[-1])
        progress = _progress(tmp_path)
        assert result["error"] is None, f"the run failed after losing a node: {result['error']}\n{err[-3000:]}"
        assert result["metrics"]["step"] == STEPS
        after = [p for p in progress if p["world"] == 1]
        assert after, f"no step ran on the surviving node: {progress}"
        assert after[0]["step"] > 1, "the restart did not resume from a checkpoint"
        assert len(set(after[0]["nodes"])) == 1 and after[0]["nodes"][0] in first["nodes"]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


JOB_STATUS = ("import json, sys; from ray.job_submission import JobSubmissionClient; "
              "info = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2]); "
              "print(json.dumps({'status': str(info.status), 'message': info.message}))")


def _job(two_nodes, job_id: str) -> dict:
    proc = two_nodes.run_a([sys.executable, "-c", JOB_STATUS, two_nodes.dashboard, job_id], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sciscale_launch_on_two_nodes_reports_a_lost_node(two_nodes, tmp_path):
    """The real CLI: `sciscale launch --cluster` submits the spec; workers (DeepSpeed, gloo) span both nodes;
    the second node dies mid-run. A fixed 2-worker group cannot go on with one node's slot (the elastic case is
    the test above), so the run must end FAILED, in Ray's job status and in MLflow, with the cause in both."""
    from data.generators.navier_stokes import generate
    from orchestrator.runs import mlflow_client, read_record

    generate(str(tmp_path / "ns16"), n_train=32, n_val=8, resolution=16, seed=0, progress=False)
    runs = tmp_path / "runs"
    sets = [f"data.train.0.url={tmp_path / 'ns16' / 'train'}", f"data.val.0.url={tmp_path / 'ns16' / 'val'}",
            f"storage.runs_root={runs}", "train.max_steps=400", "train.checkpoint_every=5",
            "distributed.workers=2", "distributed.resources_per_worker={CPU: 1, slot: 1}",
            "tracking.experiment=two-node", f"storage.shared_paths=[{tmp_path}]"]  # both nodes see this disk
    argv = [sys.executable, "-m", "orchestrator.cli", "launch", str(SPEC), "--cluster", two_nodes.dashboard,
            "--run-id", "two-node-launch"] + [x for item in sets for x in ("--set", item)]
    submitted = two_nodes.run_a(argv, timeout=300)
    assert submitted.returncode == 0, f"{submitted.stdout[-2000:]}\n{submitted.stderr[-4000:]}"
    job_id = submitted.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 420
    while len(list((runs / "two-node-launch").glob("checkpoint_*"))) < 2:
        job = _job(two_nodes, job_id)
        assert job["status"] in ("PENDING", "RUNNING"), f"job ended before the kill: {job}"
        assert time.monotonic() < deadline, "no checkpoint within the deadline"
        time.sleep(2)
    two_nodes.kill_node()
    while (job := _job(two_nodes, job_id))["status"] in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline + 300, f"job still running after the node died: {job}"
        time.sleep(3)
    record = read_record(str(runs), "two-node-launch")
    run = mlflow_client(record.tracking_uri).get_run(record.mlflow_run_id)
    assert job["status"] == "FAILED", job
    assert run.info.status == "FAILED", f"MLflow run left {run.info.status} after the job failed"
    assert job["message"], "a failed job must say why"
    assert json.loads(run.data.tags["sciscale.error"])["message"], run.data.tags
