"""A PR stack is bounded (O12): its namespace gets a ResourceQuota and a LimitRange, and the stack the template
declares fits that quota at its peak (every Deployment's rollout surge pod included), so a rollout never waits on
`exceeded quota` while an oversized PR stack is refused by Kubernetes instead of starving the shared cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra import capacity
from infra.components.specs import quantity_value
from infra.config import deep_merge
from infra.deployability import analyse
from infra.offline import StackRun, run_stack
from infra.workflows import ephemeral
from tests.infra.conftest import target_overrides

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


def peak(run: StackRun) -> dict[str, float]:
    """What the PR stack's workloads charge its namespace's quota at their peak (`capacity.namespace_peak`)."""
    (quota,) = run.of_type(QUOTA)
    return capacity.namespace_peak(run, quota.inputs["metadata"]["namespace"])


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
    assert used["persistentvolumeclaims"] <= int(hard["persistentvolumeclaims"])
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
    (finding,) = [
        f
        for f in analyse(run).findings
        if f.check == "namespace-quota" and "of requests.memory," in f.message
    ]
    assert "over the namespace quota's 4.00Gi" in finding.message
    assert finding.fix.startswith("raise rag:namespaceQuota.requests.memory to at least ")
    assert [f for f in analyse(pr_stack()).findings if f.check == "namespace-quota"] == []


@pytest.mark.parametrize("target", ["eks", "gke"])
def test_a_permanent_stack_that_turns_the_quota_on_is_checked_against_it(target: str) -> None:
    """`rag:namespaceQuota` sized for a PR stack does not hold dev with backups (CloudNativePG's Barman sidecar,
    the backup CronJobs, bigger volumes): `make plan` says which keys and by how much, before an `up` that would
    stop at `exceeded quota`. Every finding's amount is the peak the walk computed."""
    overrides = deep_merge(
        target_overrides("dev", target), {"namespaceQuota": {"enabled": True}, "backups": {"enabled": True}}
    )
    run = run_stack("dev", config_overrides=overrides)
    used = peak(run)
    found = {f.fix.split()[1]: f for f in analyse(run).findings if f.check == "namespace-quota"}
    hard = run.of_type(QUOTA)[0].inputs["spec"]["hard"]
    over = {capacity.QUOTA_KEYS[key] for key in hard if used[key] > quantity_value(hard[key])}
    assert "namespaceQuota.requests.memory" in over  # the sidecars alone take it past 4Gi
    assert set(found) == {f"rag:{key}" for key in over}
    raised = run_stack(
        "dev",
        config_overrides=deep_merge(
            overrides,
            {
                "namespaceQuota": {
                    "requests": {"cpu": "2", "memory": "6Gi"},
                    "limits": {"cpu": "12", "memory": "16Gi"},
                    "storage": "60Gi",
                    "persistentVolumeClaims": 8,
                    "pods": 20,
                }
            },
        ),
    )
    assert [f for f in analyse(raised).findings if f.check == "namespace-quota"] == []


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
