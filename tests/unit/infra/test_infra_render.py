"""`sciscale render kuberay`: the RayJob for a spec has the right image, resources, scaling and entrypoint,
and passes the KubeRay and Kubernetes schemas."""

from __future__ import annotations

import argparse
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator import render
from orchestrator.specload import load_spec

ROOT = Path(__file__).resolve().parents[3]
SPECS = Path(__file__).parent / "specs"
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sciscale:abc123"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sciscale")
    render.register(parser.add_subparsers(dest="command"))
    return parser


def _render(path: Path, *extra: str, capsys) -> list[dict]:
    args = _parser().parse_args(["render", "kuberay", str(path), "--image", IMAGE, "--run-id", "run-1", *extra])
    assert args.func(args) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def _pods(rayjob: dict) -> list[dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")) + EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rendered_objects_pass_their_schemas(path, capsys, k8s_validate):
    # the debug examples name local paths, refused for a cluster unless shared (tested below): declare them so
    local = "s3://" not in path.read_text()
    docs = _render(path, *(["--set", "storage.shared_paths=[/]"] if local else []), capsys=capsys)
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    for doc in docs:
        k8s_validate(doc)
    configmap, rayjob = docs
    spec = load_spec(path, ["storage.shared_paths=[/]"] if local else [], check_files=False)
    assert rayjob["spec"]["entrypoint"] == "sciscale launch /etc/sciscale/spec.yaml --run-id run-1 --in-cluster"
    assert yaml.safe_load(configmap["data"]["spec.yaml"]) == spec.model_dump(mode="json")
    for pod in _pods(rayjob):
        assert {c["image"] for c in pod["spec"]["containers"]} == {IMAGE}
        assert pod["spec"]["serviceAccountName"] == "sciscale-ray"
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounted = {v["configMap"]["name"] for v in head["volumes"] if "configMap" in v}
    assert mounted == {configmap["metadata"]["name"]}


AUTH_TOKEN = {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "sciscale-ray-auth", "key": "token"}}}


def test_head_workers_and_submitter_get_the_ray_auth_token(capsys):
    rayjob = _render(SPECS / "elastic_gpu.yaml", capsys=capsys)[1]
    submitter = rayjob["spec"]["submitterPodTemplate"]
    for pod in _pods(rayjob) + [submitter]:
        (container,) = pod["spec"]["containers"]
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"], container["name"]
        assert AUTH_TOKEN in container["env"], container["name"]
    # KubeRay fills in the `ray job submit` command only when the template leaves it out
    assert "command" not in submitter["spec"]["containers"][0] and submitter["spec"]["restartPolicy"] == "Never"
    assert submitter["spec"]["containers"][0]["image"] == IMAGE


def test_elastic_gpu_spec_sets_group_range_and_gpu_resources(capsys):
    rayjob = _render(SPECS / "elastic_gpu.yaml", capsys=capsys)[1]
    cluster = rayjob["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (2, 2, 4)
    assert cluster["enableInTreeAutoscaling"] is True
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "8", "nvidia.com/gpu": "1", "memory": "68719476736"}
    assert group["rayStartParams"] == {"num-cpus": "8", "num-gpus": "1"}
    assert group["template"]["spec"]["nodeSelector"] == {"sciscale.io/pool": "gpu-ondemand"}
    env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.sciscale.svc.cluster.local:5000"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_fixed_cpu_spec_has_no_autoscaling_and_custom_resources(capsys):
    rayjob = _render(SPECS / "fixed_cpu.yaml", "--no-node-selectors", capsys=capsys)[1]
    cluster = rayjob["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == (4, 4)
    assert cluster["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in cluster
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "2500m"}
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert group["rayStartParams"] == {"num-cpus": "3", "resources": '{"highmem": 1.0}'}
    assert all("nodeSelector" not in pod["spec"] for pod in _pods(rayjob))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"


def test_spot_capacity_tolerates_the_spot_taint(capsys):
    group = _render(SPECS / "elastic_gpu.yaml", "--capacity", "spot", capsys=capsys)[1]["spec"]["rayClusterSpec"][
        "workerGroupSpecs"][0]
    assert group["template"]["spec"]["nodeSelector"] == {"sciscale.io/pool": "gpu-spot"}
    assert {"key": "sciscale.io/spot", "operator": "Exists", "effect": "NoSchedule"} in group["template"]["spec"][
        "tolerations"]


def test_overrides_reach_the_configmap_and_the_scaling(capsys):
    docs = _render(SPECS / "elastic_gpu.yaml", "--set", "distributed.workers=4", "--set", "train.max_steps=7",
                   capsys=capsys)
    assert yaml.safe_load(docs[0]["data"]["spec.yaml"])["train"]["max_steps"] == 7
    group = docs[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (4, 4)


@pytest.mark.parametrize("run_id", ["ns2d_FNO.debug-20250101-000000", "x" * 63, "a-b"])
def test_k8s_name_is_a_short_dns_label(run_id):
    name = render.k8s_name(run_id)
    assert len(name) <= render.K8S_NAME_MAX
    assert name[0].isalpha() and name.replace("-", "").isalnum() and name == name.lower()


def test_distinct_run_ids_keep_distinct_names():
    assert render.k8s_name("Run-A") != render.k8s_name("run-a")


@pytest.mark.parametrize("extra, message", [
    (["--run-id", "bad id!"], "run id"),
    (["--capacity", "spot"], "--capacity spot"),
    (["--set", "distributed.resources_per_worker.GPU=0.5", "--set", "distributed.use_gpu=true"], "whole GPUs"),
])
def test_bad_input_raises_value_error(extra, message, capsys):
    args = _parser().parse_args(["render", "kuberay", str(SPECS / "fixed_cpu.yaml"), "--image", IMAGE, *extra])
    with pytest.raises(ValueError, match=message):
        args.func(args)


def test_local_paths_no_pod_has_are_refused_unless_shared(capsys):
    from orchestrator.specload import SpecError

    local = ["--set", "data.train[0].url=/home/me/data/ns2d", "--set", "storage.runs_root=runs"]
    args = _parser().parse_args(["render", "kuberay", str(SPECS / "fixed_cpu.yaml"), "--image", IMAGE, *local])
    with pytest.raises(SpecError) as refused:
        args.func(args)
    text = str(refused.value)
    assert "\n  data.train[0].url\n" in text and "\n  storage.runs_root\n" in text and "shared_paths" in text
    shared = ["--set", "storage.shared_paths=[/home/me/data]", "--set", "storage.runs_root=/home/me/data/runs"]
    args = _parser().parse_args(["render", "kuberay", str(SPECS / "fixed_cpu.yaml"), "--image", IMAGE, *local[:2],
                                 *shared])
    assert args.func(args) == 0 and "/home/me/data/ns2d" in capsys.readouterr().out


def test_missing_image_is_explained(monkeypatch):
    monkeypatch.delenv("SCISCALE_IMAGE", raising=False)
    args = _parser().parse_args(["render", "kuberay", str(SPECS / "fixed_cpu.yaml")])
    with pytest.raises(ValueError, match="--image"):
        args.func(args)


def test_schema_rejects_a_misspelled_field(capsys, k8s_validate):
    rayjob = _render(SPECS / "fixed_cpu.yaml", capsys=capsys)[1]
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        k8s_validate(rayjob)
    rayjob = _render(SPECS / "fixed_cpu.yaml", capsys=capsys)[1]
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imag"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        k8s_validate(rayjob)
