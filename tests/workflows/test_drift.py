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
        # The state's read-only resources, left out of the refresh (none here).
        ["stack", "export", "--show-secrets", "--stack", "prod"],
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


IMAGE_URN = "urn:pulumi:dev::rag::rag:build:ServiceImage$docker-build:index:Image::service-image-image"
# pulumi-docker-build 0.0.22 `Image.Read` (provider/internal/image.go): any registry error but "not found" keeps
# the state and warns with this text (the registry here: kind's localhost:5001, unreachable from a CI runner).
UNVERIFIED = (
    'unable to verify image tags, leaving state unchanged: fetching "localhost:5001/rag/rag-service@sha256:ab": '
    "dial tcp 127.0.0.1:5001: connect: connection refused"
)


def _diagnostic(urn: str, message: str, severity: str = "warning") -> dict:
    return {
        "diagnosticEvent": {
            "urn": urn,
            "message": message + "\n",
            "color": "never",
            "severity": severity,
        }
    }


def test_an_image_the_runner_cannot_inspect_is_not_verified_rather_than_drifted(
    ctx: Context, backend: FakeBackend
) -> None:
    backend.add_stack("dev")
    script = backend.script("dev")
    script.refresh_events = [
        step_event("refresh", "service-image-image", "docker-build:index:Image"),
        _diagnostic(IMAGE_URN, UNVERIFIED),
        _diagnostic(IMAGE_URN, UNVERIFIED),  # the engine may repeat a diagnostic: listed once
        _diagnostic("urn:pulumi:dev::rag::pulumi:pulumi:Stack::rag-dev", "some stack-level note", "info"),
        outputs_event("same", "service-image-image", "docker-build:index:Image"),
    ]
    script.refresh_summary = {"same": 45}
    backend.stacks["dev"].urns = [IMAGE_URN]

    report = check_drift(ctx, "dev")

    # The image stays in the refresh: no --target/--exclude (only read-only resources are left out, and the image
    # is managed), so a registry that says "gone" is reported.
    assert backend.commands("refresh")[0] == [
        "refresh",
        "--preview-only",
        "--expect-no-changes",
        "--exec-kind",
        "auto.local",
        "--event-log",
        "<event-log>",
        "--stack",
        "dev",
    ]
    assert not report.has_drift
    assert [(u.type, u.name) for u in report.unverified] == [
        ("docker-build:index:Image", "service-image-image")
    ]
    lines = report.render().splitlines()
    assert lines[0] == "No drift: stack 'dev' matches its state."
    assert lines[1].startswith("Warnings from the refresh")
    assert lines[2] == f"  docker-build:index:Image service-image-image: {UNVERIFIED}"
    assert len(lines) == 3


def test_an_image_the_registry_no_longer_has_is_drift(ctx: Context, backend: FakeBackend) -> None:
    # Read returned an empty ID (the registry answered "not found" for every pushed tag): the engine plans a delete.
    backend.add_stack("dev")
    script = backend.script("dev")
    script.refresh_events = [step_event("delete", "service-image-image", "docker-build:index:Image")]
    script.refresh_summary = {"delete": 1, "same": 44}

    report = check_drift(ctx, "dev")

    assert report.has_drift
    assert [(s.op, s.type, s.name) for s in report.drifted] == [
        ("delete", "docker-build:index:Image", "service-image-image")
    ]
    assert "pulumi up -s dev" in report.render()


LIVE_READ_URN = "urn:pulumi:prod::rag::rag:net:TlsGateway$kubernetes:gateway.networking.k8s.io/v1:Gateway::gateway-gateway-live"
SERVICE_URN = "urn:pulumi:prod::rag::kubernetes:apps/v1:Deployment::rag-service"


def test_a_read_only_resource_whose_live_object_changed_is_left_out_not_drift(
    ctx: Context, backend: FakeBackend
) -> None:
    """The entry's live read (`ingressAddress`) is compared by its whole live object on refresh (pulumi/pulumi
    step.go RefreshStep.ResultOp: external resources by outputs), so a controller's status write failed the
    nightly drift check with `1 update` and no resource named. The refresh leaves the stack's reads out."""
    backend.add_stack("prod")
    backend.stacks["prod"].urns = [SERVICE_URN, LIVE_READ_URN]
    backend.stacks["prod"].external_urns = {LIVE_READ_URN}
    backend.script("prod").refresh_changed_reads = [LIVE_READ_URN]

    report = check_drift(ctx, "prod")

    assert not report.has_drift, report.render()
    refresh = backend.commands("refresh")[0]
    assert refresh[refresh.index("--exclude") + 1] == LIVE_READ_URN
    assert refresh.count("--exclude") == 1  # the managed Deployment is refreshed


def test_a_stack_whose_state_cannot_be_exported_is_refreshed_whole(
    ctx: Context, backend: FakeBackend
) -> None:
    backend.add_stack("prod")
    backend.script("prod").refresh_changed_reads = [LIVE_READ_URN]
    original = backend.stacks["prod"].urns
    assert original == []  # nothing in the export: nothing is left out

    report = check_drift(ctx, "prod")

    assert report.has_drift
    assert "--exclude" not in backend.commands("refresh")[0]
