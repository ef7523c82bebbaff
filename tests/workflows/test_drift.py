"""`ragops drift`: refresh --preview-only --expect-no-changes, drift reported, real failures propagated."""

from __future__ import annotations

import pytest
from pulumi.automation.errors import CommandError

from infra.workflows.drift import check_drift
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import FakeBackend, outputs_event, step_event


def test_no_drift(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("prod")
    backend.script("prod").refresh_events = [
        step_event("refresh", "rag-service"),
        outputs_event("same", "rag-ns"),
    ]

    report = check_drift(ctx, "prod")

    assert backend.commands() == [
        ["stack", "select", "--stack", "prod"],
        [
            "refresh",
            "--preview-only",
            "--expect-no-changes",
            "--exec-kind",
            "auto.local",
            "--event-log",
            "<event-log>",
            "--stack",
            "prod",
        ],
        [
            "stack",
            "history",
            "--json",
            "--show-secrets",
            "--page-size",
            "1",
            "--page",
            "1",
            "--stack",
            "prod",
        ],
    ]
    assert not report.has_drift
    assert report.render() == "No drift: stack 'prod' matches its state."


def test_drift_is_reported_with_resources_and_diffs(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("staging")
    script = backend.script("staging")
    script.refresh_events = [
        step_event("refresh", "rag-service", diffs=["spec.replicas"]),
        step_event("refresh", "rag-ns", "kubernetes:core/v1:Namespace"),  # unchanged refresh: not listed
        step_event("delete", "rag-backup", "kubernetes:batch/v1:CronJob"),
    ]
    script.refresh_summary = {"update": 1, "delete": 1, "same": 10}

    report = check_drift(ctx, "staging")

    assert report.has_drift
    assert [(s.op, s.name) for s in report.drifted] == [("refresh", "rag-service"), ("delete", "rag-backup")]
    text = report.render()
    assert text.splitlines()[0] == "Drift detected in stack 'staging':"
    assert "changes on refresh: 1 delete, 1 update" in text
    assert "rag-service (spec.replicas)" in text
    assert "kubernetes:batch/v1:CronJob rag-backup" in text
    assert "pulumi up -s staging" in text
    # The CLI failed (expect-no-changes) and nothing was written: no history read after the failure.
    assert backend.commands()[-1][0] == "refresh"


def test_a_refresh_that_fails_without_drift_is_an_error(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev")
    backend.script("dev").refresh_error = "error: could not reach the cluster"
    with pytest.raises(CommandError, match="could not reach the cluster"):
        check_drift(ctx, "dev")
