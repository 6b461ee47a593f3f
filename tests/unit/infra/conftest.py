"""Offline schema validation of Kubernetes objects for the infra tests.

Core objects are checked against the strict Kubernetes JSON schemas shipped by kubernetes-validate (no
unknown keys allowed); RayCluster/RayJob against infra/kuberay/schema/kuberay-v1.schema.json, whose pod
templates refer to the same Kubernetes PodTemplateSpec definition.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from urllib.parse import urljoin

import jsonschema
import pytest
import referencing

ROOT = Path(__file__).resolve().parents[3]
K8S_VERSION = "1.33.0"
KUBERAY_SCHEMA = ROOT / "infra" / "kuberay" / "schema" / "kuberay-v1.schema.json"


@functools.cache
def _k8s_definitions() -> dict:
    import kubernetes_validate.utils as kv

    version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(K8S_VERSION)][-1]
    return kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", K8S_VERSION)


@functools.cache
def _kuberay_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(KUBERAY_SCHEMA.read_text())
    defs = referencing.Resource.from_contents(_k8s_definitions())
    # the schema's "/api/_definitions.json" refs resolve against its own $id
    defs_uri = urljoin(schema["$id"], "/api/_definitions.json")
    registry = referencing.Registry().with_resources(
        [(defs_uri, defs), (schema["$id"], referencing.Resource.from_contents(schema))])
    return jsonschema.Draft202012Validator({"$ref": f"{schema['$id']}#/$defs/{kind}"}, registry=registry)


def validate_object(doc: dict) -> None:
    """Raise jsonschema.ValidationError (or kubernetes_validate's) if ``doc`` breaks its schema."""
    if doc.get("apiVersion") == "ray.io/v1":
        _kuberay_validator(doc["kind"]).validate(doc)
        return
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="session")
def k8s_validate():
    return validate_object
