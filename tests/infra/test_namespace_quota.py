"""A PR stack is bounded (O12): its namespace gets a ResourceQuota and a LimitRange, and the stack the template
declares fits that quota at its peak (every Deployment's rollout surge pod included), so a rollout never waits on
`exceeded quota` while an oversized PR stack is refused by Kubernetes instead of starving the shared cluster."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from infra import capacity
from infra.components.specs import quantity_value
from infra.offline import StackRun, run_stack
from infra.workflows import ephemeral

ROOT = Path(__file__).resolve().parents[2]
QUOTA = "kubernetes:core/v1:ResourceQuota"
LIMITS = "kubernetes:core/v1:LimitRange"
CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"


def pr_stack(**extra: Any) -> StackRun:
    """The program as `ragops ephemeral up` configures a PR stack (template over Pulumi.dev.yaml)."""
    values = ephemeral.template_config(ROOT, "pr-7", domain="preview.example.com")
    overrides = {key.removeprefix("rag:"): value for key, value in values.items() if key.startswith("rag:")}
    overrides["ephemeral"] = {"name": "pr-7", "owner": "alice", "expiresAt": "2030-01-01T00:00:00Z"}
    return run_stack("dev", config_overrides={**overrides, **extra})


def _surge(spec: dict[str, Any], replicas: int) -> int:
    surge = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return math.ceil(replicas * int(surge[:-1]) / 100)
    return int(surge)


def peak(run: StackRun) -> dict[str, float]:
    """Requests, limits, PVC storage and pods of everything the stack runs in its namespace, at a rollout's peak."""
    total = dict.fromkeys(
        (
            "requests.cpu",
            "requests.memory",
            "limits.cpu",
            "limits.memory",
            "requests.storage",
            "pods",
            "pvcs",
        ),
        0.0,
    )

    def add(containers: list[dict[str, Any]], count: int) -> None:
        for container in containers:
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                for name in ("cpu", "memory"):
                    total[f"{kind}.{name}"] += count * quantity_value((resources.get(kind) or {})[name])
        total["pods"] += count

    for resource in run.resources:
        spec = resource.inputs.get("spec") or {}
        if resource.type == "kubernetes:apps/v1:Deployment":
            replicas = int(spec.get("replicas") or 1)
            add(spec["template"]["spec"]["containers"], replicas + _surge(spec, replicas))
        elif resource.type == "kubernetes:apps/v1:StatefulSet":
            replicas = int(spec.get("replicas") or 1)
            add(spec["template"]["spec"]["containers"], replicas)
            for claim in spec.get("volumeClaimTemplates") or []:
                total["requests.storage"] += replicas * quantity_value(
                    claim["spec"]["resources"]["requests"]["storage"]
                )
                total["pvcs"] += replicas
            for volume in spec["template"]["spec"].get("volumes") or []:
                if "ephemeral" in volume:
                    size = volume["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"][
                        "storage"
                    ]
                    total["requests.storage"] += replicas * quantity_value(size)
                    total["pvcs"] += replicas
        elif resource.type == "kubernetes:postgresql.cnpg.io/v1:Cluster":
            instances = int(spec.get("instances") or 1)
            # Each instance, plus the one-off initdb/join Job pod the operator runs with the same resources; with
            # backups each also carries the Barman Cloud plugin's sidecar (plugin-barman-cloud v0.13.0 injects it
            # into the instance pods and the recovery Job: counted on the Job pod too, an upper bound).
            add([{"resources": spec["resources"]}, *capacity.backup_sidecars(run, resource)], instances + 1)
            total["requests.storage"] += instances * quantity_value(spec["storage"]["size"])
            total["pvcs"] += instances
    return total


def test_a_pr_stack_gets_a_quota_and_container_defaults_and_fits_them_at_its_peak() -> None:
    run = pr_stack()
    (quota,) = run.of_type(QUOTA)
    (limits,) = run.of_type(LIMITS)
    assert quota.inputs["metadata"]["namespace"] == "pr-7"
    assert limits.inputs["metadata"]["namespace"] == "pr-7"
    hard = quota.inputs["spec"]["hard"]
    used = peak(run)
    assert used["pods"] >= 5  # the walk found the API, the worker, Qdrant, Redis and Postgres
    for key in ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory", "requests.storage", "pods"):
        assert used[key] <= quantity_value(hard[key]), (key, used[key], hard[key])
    assert used["pvcs"] <= int(hard["persistentvolumeclaims"])
    # The old footprint had a 20Gi Qdrant snapshot volume; the quota would not hold it now.
    assert used["requests.storage"] <= 25 * 2**30
    (rule,) = limits.inputs["spec"]["limits"]
    assert rule["type"] == "Container"
    assert set(rule) >= {"default", "defaultRequest"}


def test_every_workload_of_a_pr_stack_waits_for_the_quota_and_the_defaults() -> None:
    run = pr_stack()
    quota = run.of_type(QUOTA)[0].urn
    limits = run.of_type(LIMITS)[0].urn
    for kind in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"):
        for workload in run.of_type(kind):
            closure: set[str] = set()
            todo = [workload]
            while todo:
                item = todo.pop()
                for dep in (*item.depends_on, *([item.parent] if item.parent else [])):
                    if dep not in closure:
                        closure.add(dep)
                        todo.extend(r for r in run.resources if r.urn == dep)
            assert {quota, limits} <= closure, workload.name


def test_a_pr_stack_too_big_for_its_quota_is_caught() -> None:
    # Raising dev's Qdrant memory past what the quota holds must show here, not as a rollout stuck on
    # `exceeded quota` in every PR.
    run = pr_stack(qdrant={"resources": {"requests": {"memory": "3Gi"}, "limits": {"memory": "4Gi"}}})
    hard = run.of_type(QUOTA)[0].inputs["spec"]["hard"]
    assert peak(run)["requests.memory"] > quantity_value(hard["requests.memory"])


def test_permanent_stacks_have_no_quota_unless_asked() -> None:
    assert run_stack("dev").of_type(QUOTA) == []
    assert run_stack("dev").of_type(LIMITS) == []
    custom = run_stack("dev", config_overrides={"namespaceQuota": {"enabled": True, "pods": 40}})
    assert custom.of_type(QUOTA)[0].inputs["spec"]["hard"]["pods"] == "40"


def test_the_quota_peak_counts_the_backup_sidecar_of_every_instance() -> None:
    """The plugin's sidecar draws on the namespace's quota like any container. A PR stack has no backups (the
    template turns them off), hence no sidecar; a quota'd stack that archives its registry (dev on eks with backups
    and the quota on) counts it per instance pod, and a sidecar raised through its config key shows in the peak."""
    assert capacity.backup_sidecars(pr_stack(), pr_stack().of_type(CLUSTER)[0]) == []
    extra = {
        "cluster": {"provider": "eks"},
        "backups": {"enabled": True},
        "namespaceQuota": {"enabled": True},
    }
    base = run_stack("dev", config_overrides=extra)
    (cluster,) = base.of_type(CLUSTER)
    (sidecar,) = capacity.backup_sidecars(base, cluster)
    pods = int(cluster.inputs["spec"]["instances"]) + 1
    bigger = run_stack(
        "dev",
        config_overrides={
            **extra,
            "postgres": {
                "cloudnative": {"backupSidecarResources": {"requests": {"cpu": "600m", "memory": "1Gi"}}}
            },
        },
    )
    assert peak(bigger)["requests.cpu"] - peak(base)["requests.cpu"] == pytest.approx(
        pods * (0.6 - quantity_value(sidecar["resources"]["requests"]["cpu"]))
    )
    assert peak(bigger)["requests.memory"] - peak(base)["requests.memory"] == pytest.approx(
        pods * (2**30 - quantity_value(sidecar["resources"]["requests"]["memory"]))
    )
