"""Turning `service.autoscaling.enabled` on keeps the API's pods (REVIEW7 finding 6).

Under server-side apply a field the applier's manager owned and no longer sends is removed, and a Deployment's
`replicas` then defaults to 1 (kubernetes.io, "Migrating Deployments and StatefulSets to horizontal autoscaling").
`next_replicas` models what the API server keeps after pulumi-kubernetes' update, the way the provider builds it
(provider/pkg/await/await.go `ssaUpdate` / `handleSSAIgnoreFields`): a field in `ignoreChanges` is sent with its
live value while the provider's manager owns it, and left out once another manager (the HPA's
kube-controller-manager, through the scale subresource) does. The engine itself keeps the old input of an ignored
path, so the preview shows no replicas change either.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.offline import StackRun
from tests.infra.conftest import run

PULUMI, HPA = "pulumi-kubernetes", "kube-controller-manager"


def next_replicas(deployed: StackRun, planned: StackRun, *, live: int, owner: str) -> int:
    """The API Deployment's replicas after the next `up` from `deployed` to `planned`, the live object running
    `live` pods with `spec.replicas` owned by `owner`."""
    old = deployed.by_name("rag-api").inputs["spec"]
    new: dict[str, Any] = dict(planned.by_name("rag-api").inputs["spec"])
    ignored = "spec.replicas" in planned.by_name("rag-api").ignore_changes
    if ignored and "replicas" in old:
        new["replicas"] = old["replicas"]  # the engine: an ignored path keeps its old input
    if ignored:  # the provider: the live value while ours, nothing once another manager owns it
        if owner == PULUMI:
            new["replicas"] = live
        else:
            new.pop("replicas", None)
    if "replicas" in new:
        if owner != PULUMI and new["replicas"] != live:
            raise AssertionError(f"SSA conflict with {owner} on .spec.replicas")
        return int(new["replicas"])
    return 1 if owner == PULUMI else live  # released by its owner: the default; else the other owner's count


def test_turning_autoscaling_on_keeps_the_pods_the_deployment_runs() -> None:
    fixed = run("staging", service={"autoscaling": {"enabled": False}, "replicas": 4})
    scaled = run("staging")
    assert fixed.by_name("rag-api").inputs["spec"]["replicas"] == 4
    assert not fixed.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert scaled.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    # The `up` that creates the HPA leaves the 4 running pods alone (it used to reset them to 1) ...
    assert next_replicas(fixed, scaled, live=4, owner=PULUMI) == 4
    # ... and once the HPA has scaled (its manager owns the field), later `up`s neither reset nor fight its count.
    assert next_replicas(scaled, scaled, live=7, owner=HPA) == 7
    # Until the HPA writes (its count already right), the provider keeps sending the live count.
    assert next_replicas(scaled, scaled, live=4, owner=PULUMI) == 4


def test_a_new_deployment_with_autoscaling_starts_at_the_hpas_floor() -> None:
    spec = run("prod").by_name("rag-api")
    assert spec.inputs["spec"]["replicas"] == 3  # prod's autoscaling.minReplicas
    assert "spec.replicas" in spec.ignore_changes
    # Without autoscaling the stack owns the count: no ignore, every `up` sets it.
    dev = run("dev").by_name("rag-api")
    assert "spec.replicas" not in dev.ignore_changes
    assert dev.inputs["spec"]["replicas"] == 1


def test_turning_autoscaling_off_again_conflicts_unless_replicas_matches_the_hpas_count() -> None:
    # Documented in docs/operations.md: the HPA's manager owns the field; a different count is an SSA conflict.
    scaled = run("staging")
    fixed = run("staging", service={"autoscaling": {"enabled": False}, "replicas": 4})
    assert next_replicas(scaled, fixed, live=4, owner=HPA) == 4
    with pytest.raises(AssertionError, match="SSA conflict"):
        next_replicas(scaled, fixed, live=6, owner=HPA)
