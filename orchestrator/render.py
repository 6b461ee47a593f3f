"""`sciscale render kuberay spec.yaml`: the Kubernetes objects that run a job spec on a KubeRay cluster.

The output is a ConfigMap holding the resolved spec and a RayJob whose own RayCluster has a CPU head group
and one worker group sized from ``distributed``: one Ray Train worker per pod, so the pod's requests are
``resources_per_worker`` and the group's min/max replicas are the spec's worker range (KubeRay's autoscaler
is switched on only when the range is elastic). Ray token authentication is on: the head, the workers and
the job submitter get RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the secret ``sciscale-ray-auth`` (key
``token``), which must exist in the namespace. Torch-free: imported by the CLI at start-up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from datetime import datetime, timezone
from typing import Any

import yaml

from orchestrator.cluster import KUBERAY_TOKEN_KEY, KUBERAY_TOKEN_SECRET
from orchestrator.services import NORMAL_PRIORITY

SPEC_MOUNT = "/etc/sciscale"
SPEC_FILE = "spec.yaml"
DEFAULT_SERVICE_ACCOUNT = "sciscale-ray"
MLFLOW_CLIENT_SECRET = "sciscale-mlflow-client"
S3_SECRET = "sciscale-s3"  # static S3 keys for clusters without workload identity (optional)
GPU_RESOURCE = "nvidia.com/gpu"
# Ray token auth, set the way KubeRay documents it for clusters without `authOptions` (not in the schema of
# infra/kuberay/schema): the secret is required, so a cluster without it does not start unauthenticated
RAY_AUTH_ENV = [{"name": "RAY_AUTH_MODE", "value": "token"},
                {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": KUBERAY_TOKEN_SECRET,
                                                                          "key": KUBERAY_TOKEN_KEY}}}]
# Node pools created by terraform/modules/sciscale-aws (labels and taints must match it).
POOL_LABEL = "sciscale.io/pool"
SPOT_TAINT = "sciscale.io/spot"
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,61}[A-Za-z0-9]$")
K8S_NAME_MAX = 40  # KubeRay appends suffixes (-raycluster-xxxxx, -head-svc) to the RayJob name


def register(subparsers: Any) -> None:
    """Add ``render kuberay`` to the ``sciscale`` argument parser."""
    render = subparsers.add_parser("render", help="render deployment manifests for a job spec")
    targets = render.add_subparsers(dest="render_target", required=True)
    kuberay = targets.add_parser("kuberay", help="a RayJob (plus its spec ConfigMap) that runs the spec on KubeRay",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kuberay.add_argument("spec", help="job spec YAML")
    kuberay.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                         help="override a spec field, e.g. --set train.max_steps=1000 (repeatable)")
    kuberay.add_argument("--image", default=os.environ.get("SCISCALE_IMAGE"),
                         help="container image built from infra/container/Dockerfile (default: $SCISCALE_IMAGE)")
    kuberay.add_argument("--run-id", help="run id (default: NAME-YYYYmmdd-HHMMSS, UTC)")
    kuberay.add_argument("--namespace", default="sciscale", help="Kubernetes namespace (default: sciscale)")
    kuberay.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                         help="service account with S3 access (IRSA role from terraform; default: sciscale-ray)")
    kuberay.add_argument("--capacity", choices=("on-demand", "spot"), default="on-demand",
                         help="node pool for the workers (default: on-demand)")
    kuberay.add_argument("--node-selectors", action=argparse.BooleanOptionalAction, default=True,
                         help="pin pods to the node pools of terraform/ (sciscale.io/pool labels); turn off "
                              "on a cluster without those labels (default: on)")
    kuberay.add_argument("-o", "--output", help="write the YAML here instead of stdout")
    kuberay.set_defaults(func=handle_kuberay)


def handle_kuberay(args: argparse.Namespace) -> int:
    """Render and print (or write) the manifests; bad input raises ValueError."""
    from orchestrator.specload import dump_spec, load_spec

    if not args.image:
        raise ValueError("render kuberay: no container image given (--image or $SCISCALE_IMAGE). Hint: build "
                         "infra/container/Dockerfile, push it, and pass e.g. --image ECR_URL/sciscale:0.1.0")
    from orchestrator.preflight import cluster_paths

    # data and weights are read inside the cluster: their existence is not checked here, but a local path no
    # pod has is refused rather than written into the manifest
    spec = load_spec(args.spec, args.overrides, check_files=False)
    cluster_paths(spec, args.spec)
    run_id = args.run_id or f"{spec.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    docs = render_kuberay(spec, dump_spec(spec), run_id=run_id, image=args.image, namespace=args.namespace,
                          service_account=args.service_account, capacity=args.capacity,
                          node_selectors=args.node_selectors)
    text = dump_manifests(docs)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}: kubectl apply -f {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


class _NoAliasDumper(yaml.SafeDumper):
    # shared sub-dicts (labels, env) would otherwise appear as &id001 anchors, legal but hard to read
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_manifests(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False)


def k8s_name(run_id: str) -> str:
    """A DNS-1123 label for ``run_id``: lowercase, '-' only, short enough for KubeRay's derived names."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    if name != run_id or len(name) > K8S_NAME_MAX:
        # a hash keeps names of different run ids distinct after lowercasing or truncation
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:6]
        name = f"{name[:K8S_NAME_MAX - 7].rstrip('-')}-{digest}"
    if not name or not name[0].isalpha():
        name = f"r{name}"[:K8S_NAME_MAX]
    return name


def render_kuberay(spec: Any, spec_yaml: str, *, run_id: str, image: str, namespace: str = "sciscale",
                   service_account: str = DEFAULT_SERVICE_ACCOUNT, capacity: str = "on-demand",
                   node_selectors: bool = True) -> list[dict]:
    """[ConfigMap with the resolved spec, RayJob running ``sciscale launch`` on it] for one run."""
    if not RUN_ID.match(run_id):
        raise ValueError(f"render kuberay: run id {run_id!r} is not usable as a Kubernetes label; expected 2-63 "
                         "letters, digits, '_', '.', '-' starting and ending with a letter or digit")
    name = k8s_name(run_id)
    labels = {"app.kubernetes.io/name": "sciscale", "app.kubernetes.io/component": "training",
              "sciscale.io/run-id": run_id}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{name}-spec", "namespace": namespace, "labels": labels},
                  "data": {SPEC_FILE: spec_yaml}}
    ctx = {"image": image, "labels": labels, "service_account": service_account, "run_id": run_id,
           "env": _env(spec, run_id), "node_selectors": node_selectors}
    workers = spec.distributed.workers
    lo, hi = (workers, workers) if isinstance(workers, int) else (workers.min, workers.max)
    cluster = {"rayVersion": _ray_version(), "enableInTreeAutoscaling": lo != hi,
               "headGroupSpec": _head_group(ctx, f"{name}-spec"),
               "workerGroupSpecs": [_worker_group(spec.distributed, ctx, lo, hi, capacity)]}
    if lo != hi:
        cluster["autoscalerOptions"] = {"upscalingMode": "Default", "idleTimeoutSeconds": 120}
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob",
              "metadata": {"name": name, "namespace": namespace, "labels": labels},
              "spec": {"entrypoint": f"sciscale launch {SPEC_MOUNT}/{SPEC_FILE} --run-id {run_id} --in-cluster",
                       "submissionMode": "K8sJobMode", "shutdownAfterJobFinishes": True,
                       "ttlSecondsAfterFinished": 600, "submitterConfig": {"backoffLimit": 2},
                       "submitterPodTemplate": _submitter_pod(ctx), "rayClusterSpec": cluster}}
    return [config_map, rayjob]


def _ray_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return "2.60.0"


def _env(spec: Any, run_id: str) -> list[dict]:
    env = [{"name": "SCISCALE_RUN_ID", "value": run_id}, {"name": "RAY_DEDUP_LOGS", "value": "0"},
           *({"name": k, "value": v} for k, v in NORMAL_PRIORITY.items()), *RAY_AUTH_ENV]
    if spec.tracking.uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": spec.tracking.uri})
    if spec.storage.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": spec.storage.endpoint_url})
    # MLflow basic-auth credentials (infra/mlflow); optional so a server without auth works too
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": MLFLOW_CLIENT_SECRET, "key": key,
                                                                 "optional": True}}})
    return env


def _container(ctx: dict, name: str, resources: dict, mounts: list[dict], ports: list[dict] | None = None) -> dict:
    container = {"name": name, "image": ctx["image"], "imagePullPolicy": "IfNotPresent", "env": ctx["env"],
                 "envFrom": [{"secretRef": {"name": S3_SECRET, "optional": True}}],
                 "resources": resources, "volumeMounts": mounts,
                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                 # Ray needs a moment to drain; without it a scaled-down pod loses in-flight objects
                 "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}}
    if ports:
        container["ports"] = ports
    return container


def _pod(ctx: dict, container: dict, volumes: list[dict], node_selector: dict | None = None,
         tolerations: list[dict] | None = None) -> dict:
    spec = {"serviceAccountName": ctx["service_account"], "containers": [container], "volumes": volumes,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
            "terminationGracePeriodSeconds": 60}
    if node_selector and ctx["node_selectors"]:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    return {"metadata": {"labels": ctx["labels"]}, "spec": spec}


def _submitter_pod(ctx: dict) -> dict:
    """The pod of KubeRay's submitter Job (it runs `ray job submit`; KubeRay fills in the command): its own
    template only so that it gets the auth token, which KubeRay's default submitter lacks."""
    resources = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    container = {"name": "ray-job-submitter", "image": ctx["image"], "imagePullPolicy": "IfNotPresent",
                 "env": list(RAY_AUTH_ENV), "resources": resources,
                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    pod = _pod(ctx, container, [], node_selector={POOL_LABEL: "system"})
    pod["spec"]["restartPolicy"] = "Never"
    return pod


def _head_group(ctx: dict, config_map: str) -> dict:
    resources = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
    mounts = [{"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}]
    ports = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
             {"containerPort": 10001, "name": "client"}]
    volumes = [{"name": "spec", "configMap": {"name": config_map}}, {"name": "tmp", "emptyDir": {}}]
    container = _container(ctx, "ray-head", resources, mounts, ports)
    # num-cpus 0: the driver and Train controller live on the head, training workers never do
    return {"serviceType": "ClusterIP",
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod(ctx, container, volumes, node_selector={POOL_LABEL: "system"})}


def pod_resources(resources_per_worker: dict[str, float], use_gpu: bool) -> tuple[dict, dict]:
    """(Kubernetes requests/limits, Ray custom resources) for one pod hosting one Ray Train worker."""
    known: dict[str, str] = {}
    custom: dict[str, float] = {}
    for key, amount in resources_per_worker.items():
        if key == "CPU":
            known["cpu"] = _quantity(amount)
        elif key == "GPU":
            known[GPU_RESOURCE] = str(int(amount)) if float(amount).is_integer() else _fractional_gpu(amount)
        elif key == "memory":
            known["memory"] = str(int(amount))
        else:
            custom[key] = amount
    if use_gpu:
        known.setdefault(GPU_RESOURCE, "1")
    known.setdefault("cpu", "1")
    # GPUs cannot be overcommitted, and equal requests/limits give the pod Guaranteed QoS (no eviction first)
    return {"requests": dict(known), "limits": dict(known)}, custom


def _fractional_gpu(amount: float) -> str:
    raise ValueError(f"distributed.resources_per_worker.GPU={amount}: a Kubernetes pod takes whole GPUs; "
                     "expected an integer such as 1 or 8. Hint: run several workers per GPU on a single node "
                     "with `sciscale launch` instead")


def _quantity(amount: float) -> str:
    return str(int(amount)) if float(amount).is_integer() else f"{int(round(amount * 1000))}m"


def _worker_group(dist: Any, ctx: dict, lo: int, hi: int, capacity: str) -> dict:
    resources, custom = pod_resources(dist.resources_per_worker, dist.use_gpu)
    # Ray counts whole CPUs; the pod's CPU request may be fractional
    start = {"num-cpus": str(max(1, math.ceil(dist.resources_per_worker.get("CPU", 1))))}
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}]
    # NCCL and the data loader need more shared memory than the container default of 64 MiB
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}, {"name": "tmp", "emptyDir": {}}]
    if capacity == "spot" and not dist.use_gpu:
        raise ValueError("render kuberay: --capacity spot needs distributed.use_gpu: true (terraform/ creates spot "
                         "node pools for GPU workers only). Hint: drop --capacity or set use_gpu")
    # CPU workers go to any untainted node; GPU pools are tainted so only GPU workers land there
    pool = {POOL_LABEL: f"gpu-{'spot' if capacity == 'spot' else 'ondemand'}"} if dist.use_gpu else None
    tolerations = []
    if dist.use_gpu:
        start["num-gpus"] = resources["limits"][GPU_RESOURCE]
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if capacity == "spot":
        tolerations.append({"key": SPOT_TAINT, "operator": "Exists", "effect": "NoSchedule"})
    if custom:
        start["resources"] = json.dumps(custom, sort_keys=True)
    container = _container(ctx, "ray-worker", resources, mounts)
    return {"groupName": "gpu" if dist.use_gpu else "cpu", "replicas": lo, "minReplicas": lo, "maxReplicas": hi,
            "rayStartParams": start,
            "template": _pod(ctx, container, volumes, node_selector=pool, tolerations=tolerations)}
