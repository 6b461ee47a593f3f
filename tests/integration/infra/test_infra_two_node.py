"""Two Ray nodes as separate `ray start` processes, each in its own network namespace (joined by a veth
pair) where the machine allows it, else both on loopback with distinct ports. A 2-worker job must place one
worker on each node; killing the second node mid-run must not lose the run: it goes on from its last
checkpoint with the one worker that still fits (elastic 1..2 workers, one restart allowed)."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def topology():
    """(prefix_a, ip_a, prefix_b, ip_b, mode): how to run a command on each node and its address."""
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


def _env(address: str, mode: str) -> dict:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            # token auth turns itself on once any local ray.init() has written ~/.ray/auth_token
            "RAY_AUTH_MODE": "disabled",
            # Ray Train's state-API calls find every cluster on the machine (/tmp/ray is shared): name ours
            "RAY_ADDRESS": address,
            # gloo would advertise the hostname's address (127.0.0.1), unreachable from the other namespace
            "GLOO_SOCKET_IFNAME": IFNAME if mode == "netns" else "lo"}


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


def test_job_spans_both_nodes_and_survives_losing_one(topology, tmp_path):
    prefix_a, ip_a, prefix_b, ip_b, mode = topology
    port = services.free_port()
    address = f"{ip_a}:{port}"
    env = _env(address, mode)
    # the dashboard serves the state API that Ray Train's controller polls
    head_argv = [shutil.which("ray") or "ray", "start", "--head", "--block", f"--node-ip-address={ip_a}",
                 f"--port={port}", "--num-cpus=2", '--resources={"slot": 1}', "--include-dashboard=true",
                 f"--dashboard-host={ip_a}", f"--dashboard-port={services.free_port()}",
                 f"--temp-dir=/tmp/ray-2n-{port}", "--disable-usage-stats"]
    node_argv = [shutil.which("ray") or "ray", "start", "--block", f"--address={ip_a}:{port}",
                 f"--node-ip-address={ip_b}", "--num-cpus=2", '--resources={"slot": 1}', "--disable-usage-stats"]
    if mode == "loopback":
        node_argv += [f"--node-manager-port={services.free_port()}", f"--object-manager-port={services.free_port()}"]
    head = _start(prefix_a, head_argv, tmp_path / "head.log", env)
    node = None
    driver = None
    try:
        _wait_nodes(prefix_a, address, 1, env)
        node = _start(prefix_b, node_argv, tmp_path / "node.log", env)
        _wait_nodes(prefix_a, address, 2, env)
        driver = subprocess.Popen(prefix_a + [sys.executable, str(DRIVER), address, str(tmp_path), str(STEPS)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 300
        while not any(p["step"] >= 3 for p in _progress(tmp_path)):
            if driver.poll() is not None:
                out, err = driver.communicate()
                pytest.fail(f"driver exited early: {out[-2000:]}\n{err[-4000:]}")
            assert time.monotonic() < deadline, "the job did not reach step 3"
            time.sleep(0.5)
        first = _progress(tmp_path)[0]
        assert first["world"] == 2 and len(set(first["nodes"])) == 2, f"workers did not span both nodes: {first}"
        os.killpg(node.pid, signal.SIGKILL)  # a crash, not a drain: the node vanishes mid-run
        node.wait(timeout=30)
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
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        for proc in (node, head):
            if proc is not None:
                services.stop_group(proc.pid, timeout=10)
