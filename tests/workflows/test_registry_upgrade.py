"""The managed registry's major-version guard (O6): `ragops up|preview` refuse a change of `rag:postgres.version`
on an RDS / Cloud SQL stack that `rag:postgres.managed.majorUpgrade.fromVersion` does not declare, reading the
running major from the backend's update history (what the program cannot see)."""

from __future__ import annotations

from typing import Any

import pytest

from infra.guards import CNPG_UNRECOVERABLE
from infra.workflows import registry_upgrade
from infra.workflows.deploy import deploy
from infra.workflows.preview import run_preview
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import FakeBackend, _entry, _history, write_config

UPGRADE = {"applyImmediately": True, "majorUpgrade": {"fromVersion": "17"}}


def _deployed(backend: FakeBackend, version: str = "17", mode: str = "managed") -> None:
    """prod, last deployed with a managed registry of `version` (its update history records that config)."""
    backend.add_stack("prod", config={"rag:postgres": {"mode": mode, "version": version}})


def _configure(backend: FakeBackend, version: str, **managed: Any) -> None:
    """The stack file as the operator edited it for the next `up`."""
    postgres = {"mode": "managed", "version": version, "managed": managed}
    write_config(backend.work_dir, "prod", {"rag:postgres": _entry(postgres)})


def test_an_undeclared_major_change_is_refused_before_pulumi_runs(ctx: Context, backend: FakeBackend) -> None:
    _deployed(backend, "17")
    _configure(backend, "18")
    with pytest.raises(registry_upgrade.MajorUpgradeRefused) as caught:
        deploy(ctx, "prod")
    message = str(caught.value)
    assert "rag:postgres.version goes from 17 to 18" in message
    assert "pulumi config set --path rag:postgres.managed.majorUpgrade.fromVersion 17 -s prod" in message
    assert registry_upgrade.RUNBOOK in message
    assert backend.commands("up") == []
    # `ragops preview` reports it instead of previewing.
    report = run_preview(ctx.workspace(), "prod")
    assert report.error is not None
    assert "goes from 17 to 18" in report.error
    assert backend.commands("preview") == []


def test_a_major_downgrade_is_refused_with_its_own_advice(ctx: Context, backend: FakeBackend) -> None:
    """EYES8 L7: 18 -> 17 is not an undeclared upgrade (whose fromVersion advice led to a second error)."""
    _deployed(backend, "18")
    _configure(backend, "17")
    with pytest.raises(registry_upgrade.MajorUpgradeRefused) as caught:
        deploy(ctx, "prod")
    message = str(caught.value)
    assert (
        "rag:postgres.version goes from 18 down to 17: PostgreSQL has no in-place major downgrade" in message
    )
    assert "fromVersion" not in message
    assert backend.commands("up") == []


def test_the_declared_upgrade_and_its_cleared_follow_up_go_ahead(ctx: Context, backend: FakeBackend) -> None:
    _deployed(backend, "17")
    _configure(backend, "18", **UPGRADE)
    deploy(ctx, "prod")
    assert len(backend.commands("up")) == 1
    # The history now records 18: the declaration may stay for one more `up` or be cleared.
    backend.stacks["prod"].history.append(
        _history(
            "update", {"update": 1}, config={"rag:postgres": _entry({"mode": "managed", "version": "18"})}
        )
    )
    _configure(backend, "18", **UPGRADE)
    registry_upgrade.check_major_upgrade(ctx.workspace(), "prod")
    _configure(backend, "18")
    deploy(ctx, "prod")
    assert len(backend.commands("up")) == 2


def test_a_declaration_from_a_major_the_registry_does_not_run_is_refused(
    ctx: Context, backend: FakeBackend
) -> None:
    _deployed(backend, "16")
    _configure(backend, "18", **UPGRADE)  # says 17, runs 16
    with pytest.raises(registry_upgrade.MajorUpgradeRefused, match="ran PostgreSQL 16"):
        registry_upgrade.check_major_upgrade(ctx.workspace(), "prod")


def test_a_failed_update_may_have_upgraded_and_counts(ctx: Context, backend: FakeBackend) -> None:
    _deployed(backend, "17")
    # An `up` to 18 failed: the instance may run either major now; going back to 17 is not a plain change either.
    backend.stacks["prod"].history.append(
        _history(
            "update",
            {"update": 1},
            "failed",
            {"rag:postgres": _entry({"mode": "managed", "version": "18", "managed": UPGRADE})},
        )
    )
    assert {r.major for r in registry_upgrade.deployed_registries(ctx.workspace(), "prod")} == {"17", "18"}
    _configure(backend, "18", **UPGRADE)
    registry_upgrade.check_major_upgrade(ctx.workspace(), "prod")  # the retry goes ahead
    _configure(backend, "16")
    with pytest.raises(
        registry_upgrade.MajorUpgradeRefused,
        match=r"from 17 or 18 down to 16: .* Set it back to the major the registry runs",
    ):
        registry_upgrade.check_major_upgrade(ctx.workspace(), "prod")


def test_in_cluster_registries_and_new_stacks_have_no_instance_to_upgrade(
    ctx: Context, backend: FakeBackend
) -> None:
    _deployed(backend, "17", mode="cloudnative")
    _configure(backend, "18")  # moving to managed: a new instance gets 18
    registry_upgrade.check_major_upgrade(ctx.workspace(), "prod")
    backend.add_stack("fresh", config={"rag:postgres": {"mode": "managed", "version": "18"}}, resources=0)
    assert registry_upgrade.deployed_registries(ctx.workspace(), "fresh") == []
    registry_upgrade.check_major_upgrade(ctx.workspace(), "fresh")


def test_an_unset_key_is_the_declared_default() -> None:
    registry = registry_upgrade.registry_of(None)
    assert (registry.managed, registry.major, registry.upgrade_from) == (False, "17", "")
    assert registry_upgrade.registry_of('{"mode": "managed", "version": "16"}').major == "16"


def test_an_undeclared_cloudnative_major_change_is_refused_and_a_declared_one_goes_ahead(
    ctx: Context, backend: FakeBackend
) -> None:
    """CloudNativePG upgrades in place as soon as the image's major changes: `ragops` refuses an undeclared change
    of an in-cluster registry too, naming its own key, and lets the declared one through."""
    _deployed(backend, "17", mode="cloudnative")
    write_config(backend.work_dir, "prod", {"rag:postgres": _entry({"mode": "cloudnative", "version": "18"})})
    with pytest.raises(registry_upgrade.MajorUpgradeRefused) as caught:
        deploy(ctx, "prod")
    message = str(caught.value)
    assert "goes from 17 to 18, a major upgrade of the CloudNativePG registry" in message
    assert "pulumi config set --path rag:postgres.cloudnative.majorUpgrade.fromVersion 17 -s prod" in message
    assert registry_upgrade.CNPG_RUNBOOK in message
    assert backend.commands("up") == []
    declared = {
        "mode": "cloudnative",
        "version": "18",
        "cloudnative": {"majorUpgrade": {"fromVersion": "17"}},
    }
    write_config(backend.work_dir, "prod", {"rag:postgres": _entry(declared)})
    registry_upgrade.check_major_upgrade(ctx.workspace(), "prod")
    # A managed declaration does not cover the in-cluster registry.
    wrong = {"mode": "cloudnative", "version": "18", "managed": {"majorUpgrade": {"fromVersion": "17"}}}
    write_config(backend.work_dir, "prod", {"rag:postgres": _entry(wrong)})
    with pytest.raises(registry_upgrade.MajorUpgradeRefused, match="CloudNativePG registry"):
        registry_upgrade.check_major_upgrade(ctx.workspace(), "prod")


CLUSTER_URN = "urn:pulumi:staging::rag::rag:data:PostgresDatabase$kubernetes:postgresql.cnpg.io/v1:Cluster::postgres-cluster"


def _after_a_failed_first_up(backend: FakeBackend, phase: str) -> None:
    """staging's first `up` failed: no stack outputs (no update completed), but the state holds what it created,
    the CloudNativePG Cluster with the status pulumi-kubernetes last saw (a create that timed out is recorded)."""
    stack = backend.add_stack("staging", config={"rag:environment": "staging"}, outputs={})
    stack.history[-1]["result"] = "failed"
    stack.urns.append(CLUSTER_URN)
    stack.resource_outputs[CLUSTER_URN] = {
        "metadata": {"name": "postgres", "namespace": "rag"},
        "spec": {"instances": 1, "imageName": "ghcr.io/cloudnative-pg/postgresql:17.6"},
        "status": {"phase": phase},
    }


def test_an_up_after_a_failed_first_up_over_an_unrecoverable_cluster_is_refused(
    ctx: Context, backend: FakeBackend
) -> None:
    """The program's own guard reads resource outputs only once an update completed (infra/guards.py `read_state`),
    so the second `up` after a failed first one waited 60 minutes for the Cluster again; ragops reads the export."""
    _after_a_failed_first_up(backend, CNPG_UNRECOVERABLE)
    with pytest.raises(registry_upgrade.RegistryUnrecoverable) as caught:
        deploy(ctx, "staging")
    message = str(caught.value)
    assert "\n" not in message
    assert "docs/runbooks.md#the-registrys-cluster-never-became-ready-a-failed-instance-job" in message
    assert "pulumi refresh -s staging" in message
    assert backend.commands("up") == []
    report = run_preview(ctx.workspace(), "staging", drop_secrets=())  # as `ragops preview` runs it
    assert report.error is not None
    assert "unrecoverable" in report.error
    assert backend.commands("preview") == []


def test_a_cluster_still_starting_after_a_failed_first_up_is_deployed(
    ctx: Context, backend: FakeBackend
) -> None:
    _after_a_failed_first_up(backend, "Setting up primary")
    deploy(ctx, "staging")
    assert len(backend.commands("up")) == 1
