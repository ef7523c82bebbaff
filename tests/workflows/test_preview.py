"""`ragops preview`: the exact CLI calls, the collected steps/policy findings, and failed previews."""

from __future__ import annotations

import pytest
from pulumi.automation.errors import StackNotFoundError
from semver import VersionInfo

from infra.workflows.preview import run_preview
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import FakeBackend, outputs_event, policy_event, step_event


def test_preview_runs_diff_with_the_policy_pack_and_collects_steps(
    ctx: Context, backend: FakeBackend
) -> None:
    backend.add_stack("dev")
    script = backend.script("dev")
    script.preview_events = [
        step_event("create", "rag-hpa", "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"),
        step_event("update", "rag-service", diffs=["spec"]),
        outputs_event("update", "rag-service", diffs=["spec"]),  # same step again: counted once
        step_event("same", "rag-ns", "kubernetes:core/v1:Namespace"),
        policy_event("no-latest-tag", "image uses :latest", level="advisory"),
    ]
    script.preview_summary = {"create": 1, "update": 1, "same": 10}

    report = run_preview(ctx.workspace(), "dev")

    guard = [  # the Qdrant scale-down guard: the config to apply and the replicas of the latest updates
        ["config", "--show-secrets", "--json", "--stack", "dev"],
        ["stack", "select", "--stack", "dev"],
        ["stack", "history", "--json", "--page-size", "20", "--page", "1", "--stack", "dev"],
        # the registry's major-version guard: the config to apply and the major the latest updates ran (the
        # in-cluster registry is guarded too since b960e7b)
        ["config", "--show-secrets", "--json", "--stack", "dev"],
        ["stack", "select", "--stack", "dev"],
        ["stack", "history", "--json", "--page-size", "20", "--page", "1", "--stack", "dev"],
    ]
    assert backend.commands() == [
        ["stack", "select", "--stack", "dev"],
        *guard,
        [
            "preview",
            "--diff",
            "--policy-pack",
            "infra/policy",
            "--exec-kind",
            "auto.local",
            "--event-log",
            "<event-log>",
            "--stack",
            "dev",
        ],
    ]
    assert backend.calls[1][0] == "--non-interactive"
    assert report.ok
    assert report.changes == {"create": 1, "update": 1, "same": 10}
    assert report.pending == {"create": 1, "update": 1}
    assert [(s.op, s.name, s.diffs) for s in report.steps] == [
        ("create", "rag-hpa", ()),
        ("update", "rag-service", ("spec",)),
    ]
    assert [(v.policy, v.level) for v in report.violations] == [("no-latest-tag", "advisory")]
    assert "12 unchanged" in report.stdout


def test_older_cli_event_log_file_is_read_too(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev")
    backend.script("dev").preview_events = [
        step_event("delete", "old-cronjob", "kubernetes:batch/v1:CronJob")
    ]
    backend.script("dev").preview_summary = {"delete": 1}
    old_cli = Context(work_dir=ctx.work_dir, pulumi_command=backend.command(VersionInfo(3, 200, 0)))

    report = run_preview(old_cli.workspace(), "dev")

    event_log = backend.calls[-1][backend.calls[-1].index("--event-log") + 1]
    assert not event_log.startswith("tcp://")  # a file path, not the gRPC endpoint
    assert [(s.op, s.name) for s in report.steps] == [("delete", "old-cronjob")]
    assert report.pending == {"delete": 1}


def test_preview_without_policy_pack_omits_the_flag(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("staging")
    report = run_preview(ctx.workspace(), "staging", policy_pack=None)
    preview = backend.commands("preview")[0]
    assert "--policy-pack" not in preview
    assert preview[:2] == ["preview", "--diff"]
    assert report.pending == {}


def test_failed_preview_still_reports_violations_and_error(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("prod")
    script = backend.script("prod")
    script.preview_events = [policy_event("tls-outside-dev", "Gateway has no TLS listener")]
    script.preview_error = "error: preview failed: 1 mandatory policy violation"

    report = run_preview(ctx.workspace(), "prod")

    assert not report.ok
    assert "mandatory policy violation" in str(report.error)
    assert [v.policy for v in report.violations] == ["tls-outside-dev"]


def test_preview_of_unknown_stack_raises_not_found(ctx: Context, backend: FakeBackend) -> None:
    with pytest.raises(StackNotFoundError):
        run_preview(ctx.workspace(), "nope")
    assert backend.commands() == [["stack", "select", "--stack", "nope"]]


def test_the_engines_default_providers_are_not_listed_as_changes(ctx: Context, backend: FakeBackend) -> None:
    # REVIEW6 W5: the program's state reads (infra/guards.py) make the engine register package `pulumi`'s default
    # provider; every PR comment showed "+ create pulumi:providers:pulumi default" until the stack's next `up`.
    backend.add_stack("dev")
    script = backend.script("dev")
    script.preview_events = [
        step_event("create", "default", "pulumi:providers:pulumi"),
        step_event("create", "default_4_34_2", "pulumi:providers:kubernetes"),
        step_event("create", "k8s", "pulumi:providers:kubernetes"),  # a provider the program declares: listed
        step_event("update", "rag-service", diffs=["spec"]),
    ]
    script.preview_summary = {"update": 1, "same": 10}
    report = run_preview(ctx.workspace(), "dev")
    assert [(s.op, s.name) for s in report.steps] == [("create", "k8s"), ("update", "rag-service")]
