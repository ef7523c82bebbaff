"""Builders for policy tests: well-formed Kubernetes resources recorded the way ``infra.offline`` records them."""

from __future__ import annotations

import copy
from typing import Any

from infra.offline import RecordedResource

STACK = "prod"
DIGEST = "registry.example.com/rag/service@sha256:" + "a" * 64


def urn_for(type_: str, name: str, stack: str = STACK) -> str:
    return f"urn:pulumi:{stack}::rag::rag:test:Component${type_}::{name}"


def recorded(
    type_: str, name: str, inputs: dict[str, Any], *, protect: bool = False, stack: str = STACK
) -> RecordedResource:
    return RecordedResource(
        type=type_,
        name=name,
        urn=urn_for(type_, name, stack),
        custom=True,
        inputs=inputs,
        secret_keys=frozenset(),
        parent=f"urn:pulumi:{stack}::rag::rag:test:Component::parent",
        protect=protect,
        provider=None,
        depends_on=(),
    )


def container(name: str = "api", image: str = DIGEST) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8000}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8000}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }


API_LABELS = {"app.kubernetes.io/name": "rag", "app.kubernetes.io/component": "api"}


def workload(
    kind: str = "Deployment",
    name: str = "rag-service",
    *,
    replicas: int = 1,
    containers: list | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = dict(labels or API_LABELS)
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "rag", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "containers": containers if containers is not None else [container()],
                },
            },
        },
    }


def qdrant_statefulset(replicas: int = 3) -> dict[str, Any]:
    qdrant = container("qdrant", "qdrant/qdrant:v1.15.4")
    qdrant["env"] = [
        {
            "name": "QDRANT__SERVICE__API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "qdrant-api-key", "key": "api-key"}},
        }
    ]
    sts = workload(
        "StatefulSet",
        "qdrant",
        replicas=replicas,
        containers=[qdrant],
        labels={"app.kubernetes.io/name": "qdrant"},
    )
    sts["spec"]["volumeClaimTemplates"] = [
        {
            "metadata": {"name": "storage"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
        }
    ]
    return sts


def pdb(name: str, labels: dict[str, str], namespace: str = "rag") -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
    }


def hpa(target: str, minimum: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": target, "namespace": "rag"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": minimum,
            "maxReplicas": 10,
        },
    }


def gateway(listeners: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "rag", "namespace": "rag"},
        "spec": {"gatewayClassName": "gke-l7-global-external-managed", "listeners": listeners},
    }


HTTPS_LISTENER = {
    "name": "https",
    "protocol": "HTTPS",
    "port": 443,
    "hostname": "rag.example.com",
    "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "rag-tls"}]},
}
HTTP_LISTENER = {"name": "http", "protocol": "HTTP", "port": 80, "hostname": "rag.example.com"}

K8S = {
    "Deployment": "kubernetes:apps/v1:Deployment",
    "StatefulSet": "kubernetes:apps/v1:StatefulSet",
    "CronJob": "kubernetes:batch/v1:CronJob",
    "PodDisruptionBudget": "kubernetes:policy/v1:PodDisruptionBudget",
    "HorizontalPodAutoscaler": "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
    "Gateway": "kubernetes:gateway.networking.k8s.io/v1:Gateway",
    "Ingress": "kubernetes:networking.k8s.io/v1:Ingress",
    "PersistentVolumeClaim": "kubernetes:core/v1:PersistentVolumeClaim",
}


def record(manifest: dict[str, Any], *, protect: bool = False, stack: str = STACK) -> RecordedResource:
    """Record a manifest under its Kubernetes type token."""
    manifest = copy.deepcopy(manifest)
    return recorded(
        K8S[manifest["kind"]], manifest["metadata"]["name"], manifest, protect=protect, stack=stack
    )
