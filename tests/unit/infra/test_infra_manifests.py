"""The checked-in deployment files: Kubernetes manifests pass their schemas, the MLflow server is private
and authenticated, the VM cluster config passes Ray's own schema, and pinned versions agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
INFRA = ROOT / "infra"
MANIFESTS = sorted((INFRA / "kuberay").glob("*.yaml")) + sorted(
    p for p in (INFRA / "mlflow").glob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m.group(1): m.group(2) for d in deps if (m := re.match(r"([A-Za-z0-9_-]+)(?:\[[^]]*\])?==(\S+)", d))}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_manifest_passes_schema(path, k8s_validate):
    docs = _docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        k8s_validate(doc)


def test_kustomization_lists_existing_files():
    kustomization = yaml.safe_load((INFRA / "mlflow" / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (INFRA / "mlflow" / name).is_file(), name


def test_nothing_is_exposed_publicly():
    for path in MANIFESTS:
        for doc in _docs(path):
            assert doc["kind"] != "Ingress", path
            if doc["kind"] == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path
            if doc["kind"] == "RayCluster":
                assert doc["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_mlflow_server_uses_postgres_s3_and_auth():
    (deployment,) = _docs(INFRA / "mlflow" / "deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in container["args"]
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"sciscale-mlflow-db", "sciscale-mlflow-auth", "sciscale-mlflow-config"}
    secrets = {d["metadata"]["name"]: d for d in _docs(INFRA / "mlflow" / "secrets.example.yaml")}
    assert secrets["sciscale-mlflow-db"]["stringData"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert secrets["sciscale-mlflow-config"]["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    (policy,) = _docs(INFRA / "mlflow" / "networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_raycluster_has_cpu_head_autoscaled_gpu_groups_and_token_auth():
    (cluster,) = _docs(INFRA / "kuberay" / "raycluster.yaml")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu-ondemand", "gpu-spot"}
    for name, group in groups.items():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == group["rayStartParams"]["num-gpus"]
        assert group["template"]["spec"]["nodeSelector"] == {"sciscale.io/pool": name}
    token = {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "sciscale-ray-auth", "key": "token"}}}
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]:
        env = template["spec"]["containers"][0]["env"]
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in env and token in env


def test_vm_cluster_config_passes_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "vm" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])


def test_pinned_versions_agree_with_pyproject():
    pins = _pins()
    dockerfile = (INFRA / "container" / "Dockerfile").read_text()
    assert f"ARG DEEPSPEED_VERSION={pins['deepspeed']}" in dockerfile
    assert re.search(r"^FROM nvidia/cuda:\S+-devel-", dockerfile, re.M), "ops must be built on a CUDA devel image"
    assert "DS_BUILD_FUSED_ADAM=1" in dockerfile and "DS_BUILD_CPU_ADAM=1" in dockerfile
    (cluster,) = _docs(INFRA / "kuberay" / "raycluster.yaml")
    assert cluster["spec"]["rayVersion"] == pins["ray"]
