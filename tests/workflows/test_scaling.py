"""The Qdrant scale-down guard (O13): `ragops up|preview|promote|rollback` refuse a replica decrease that the
runbook's procedure did not acknowledge (`rag:qdrant.scaleDownTo`), reading the deployed count from the backend's
update history (what a `pulumi preview` cannot see)."""

from __future__ import annotations

from typing import Any

import pytest

from infra.workflows import scaling
from infra.workflows.deploy import deploy
from infra.workflows.preview import run_preview
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import FakeBackend, _entry, _history, read_config, write_config


def _deployed(backend: FakeBackend, replicas: int, **qdrant: Any) -> None:
    """staging, last deployed with `replicas` Qdrant nodes (its update history records that config)."""
    backend.add_stack(
        "staging", config={"rag:qdrant": {"replicas": replicas, "replicationFactor": 2, **qdrant}}
    )


def _configure(backend: FakeBackend, **qdrant: Any) -> None:
    """The stack file as the operator edited it for the next `up`."""
    write_config(backend.work_dir, "staging", {"rag:qdrant": _entry({"replicationFactor": 2, **qdrant})})


def test_a_replica_decrease_is_refused_before_pulumi_runs_naming_the_pods_and_the_runbook(
    ctx: Context, backend: FakeBackend
) -> None:
    _deployed(backend, 3)
    _configure(backend, replicas=2)

    with pytest.raises(scaling.ScaleDownRefused) as caught:
        deploy(ctx, "staging")

    message = str(caught.value)
    assert "from 3 to 2 replicas" in message
    assert "(qdrant-2)" in message
    assert "docs/runbooks.md#scale-qdrant-down" in message
    assert "pulumi config set --path rag:qdrant.scaleDownTo 2 -s staging" in message
    assert backend.commands("up") == []


def test_the_acknowledged_scale_down_an_increase_and_a_new_stack_go_ahead(
    ctx: Context, backend: FakeBackend
) -> None:
    _deployed(backend, 3)
    _configure(backend, replicas=2, scaleDownTo=2)
    deploy(ctx, "staging")
    assert len(backend.commands("up")) == 1

    _configure(backend, replicas=4)  # from 2 (the last update) to 4: no data moves off anything
    deploy(ctx, "staging")
    assert len(backend.commands("up")) == 2

    # A stale acknowledgement does not cover the next decrease.
    _configure(backend, replicas=1, scaleDownTo=2)
    with pytest.raises(scaling.ScaleDownRefused, match="from 4 to 1 replicas"):
        deploy(ctx, "staging")


def test_a_stack_never_deployed_has_nothing_to_lose(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("staging", config={"rag:qdrant": {"replicas": 1}}, resources=0)  # no update yet
    assert scaling.deployed_replicas(ctx.workspace(), "staging") is None
    scaling.check_scale_down(ctx.workspace(), "staging")


def test_a_failed_update_that_may_have_scaled_up_counts(ctx: Context, backend: FakeBackend) -> None:
    _deployed(backend, 3)
    # An `up` to 5 nodes failed half-way: its StatefulSet may already run 5 pods holding shards.
    backend.stacks["staging"].history.append(
        _history("update", {"update": 1}, "failed", {"rag:qdrant": _entry({"replicas": 5})})
    )
    assert scaling.deployed_replicas(ctx.workspace(), "staging") == 5
    _configure(backend, replicas=3)
    with pytest.raises(scaling.ScaleDownRefused, match="from 5 to 3 replicas"):
        scaling.check_scale_down(ctx.workspace(), "staging")


def test_an_unset_replicas_key_is_the_declared_default(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("staging", config={"rag:environment": "staging"})  # Pulumi.yaml's default: 1 node
    assert scaling.deployed_replicas(ctx.workspace(), "staging") == 1
    _configure(backend, replicas=3)
    scaling.check_scale_down(ctx.workspace(), "staging")
    assert read_config(backend.work_dir, "staging")["rag:qdrant"]["objectValue"]["replicas"] == 3


def test_preview_reports_the_refusal_without_previewing(ctx: Context, backend: FakeBackend) -> None:
    _deployed(backend, 3)
    _configure(backend, replicas=1)

    report = run_preview(ctx.workspace(), "staging")

    assert not report.ok
    assert "from 3 to 1 replicas" in str(report.error)
    assert "(qdrant-1, qdrant-2)" in str(report.error)
    assert backend.commands("preview") == []
