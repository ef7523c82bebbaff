"""The CloudNativePG `Cluster` is awaited until Ready (REVIEW5 V4), so what waits for it waits for Postgres.

pulumi-kubernetes awaits no custom resource by default: without `pulumi.com/waitFor` the Cluster counted as
created when the API server accepted it, and the API and worker (in `depends_on` through `postgres.ready`) started
while the operator was still pulling images and running initdb; they exit when the registry does not answer, and a
first `up` on a new cluster could time out with them in CrashLoopBackOff.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from infra import render
from infra.components import postgres as pg
from infra.components.rag_service import client_selector

from . import conftest
from .conftest import manifest, run_components

CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"


@pytest.fixture
def timeouts(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Each registration's custom timeouts by resource name (the recording monitor does not keep them)."""
    seen: dict[str, Any] = {}
    register = conftest.RecordingMonitor.RegisterResource

    def recording(self: conftest.RecordingMonitor, request: Any) -> Any:
        seen[request.name] = request.customTimeouts
        return register(self, request)

    monkeypatch.setattr(conftest.RecordingMonitor, "RegisterResource", recording)
    return seen


def cloudnative(**overrides: object) -> pg.PostgresDatabaseArgs:
    values: dict[str, object] = {
        "mode": "cloudnative",
        "password": pulumi.Output.secret("pw"),
        "namespace": "rag",
        "instances": 2,
        "storage_size": "20Gi",
        "client_selectors": (client_selector("rag"),),
        "protect": True,
    }
    values.update(overrides)
    return pg.PostgresDatabaseArgs(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("upgrade", [None, 17])
def test_the_cluster_is_awaited_until_ready_with_room_for_a_bootstrap_and_a_major_upgrade(
    timeouts: dict[str, Any], upgrade: int | None
) -> None:
    args = cloudnative(
        major_upgrade_from=upgrade, image=pg.PG_IMAGES["18"] if upgrade else pg.DEFAULT_PG_IMAGE
    )
    program = run_components(lambda: pg.PostgresDatabase("postgres", args))
    cluster = program.one(CLUSTER)
    annotations = cluster.inputs["metadata"]["annotations"]
    # CloudNativePG v1.30.0 api/v1/cluster_types.go: ConditionClusterReady = "Ready" (True once healthy).
    assert annotations["pulumi.com/waitFor"] == "condition=Ready"
    if upgrade:
        assert annotations[pg.MAJOR_UPGRADE_ANNOTATION] == "17->18"
    # The provider's default await is 10 minutes: a first bootstrap on cold nodes and a major upgrade need more.
    recorded = timeouts[cluster.name]
    assert (recorded.create, recorded.update) == ("30m", "60m")
    # Still protected, and the vendored CRD schema (what `make plan` validates against) admits the annotation.
    assert cluster.protect is True
    source, errors = render.validate_manifest(manifest(cluster))
    assert source
    assert errors == []
