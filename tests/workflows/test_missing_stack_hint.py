"""The hint for a stack missing from the backend (E8 of EYES4, M2 of EYES9): for a first deploy the command that
creates it, for real; for a command on a deployed stack the backend in use, never "create it".

`ragops ephemeral` refuses the permanent names (dev, staging, prod), so the hint offers it only for other names;
a promotion says whether its source or its target is missing. Run through the real CLI against the fake backend.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from infra.workflows import errors
from infra.workflows.cli import app
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import FakeBackend

runner = CliRunner()


def invoke(ctx: Context, *args: str) -> str:
    result = runner.invoke(app, list(args), obj=ctx)
    assert result.exit_code != 0, result.output
    # The hint is printed without inserted line breaks: a long backend URL (CI's temp paths) was split mid-word
    # at the console's 80 columns ("pulumi-st ate") and could not be copied.
    for hint in (
        line for line in result.output.splitlines() if line.startswith("hint:") and "backend (" in line
    ):
        assert "): " in hint, result.output  # the backend's whole URL, closed on the hint's own line
    return " ".join(result.output.split())


@pytest.fixture(autouse=True)
def _no_backend_url_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)


def test_a_first_deploy_is_offered_stack_init_naming_the_backend(ctx: Context, backend: FakeBackend) -> None:
    for args in (("up", "-s", "dev", "-q"), ("preview", "-s", "prod", "-q")):
        out = invoke(ctx, *args)
        name = args[2]
        assert (
            f"hint: the stack does not exist in this backend ({backend.url}): create it with "
            f"`pulumi stack init {name}`" in out
        )
        assert "ephemeral" not in out
    # The command the old hint offered is refused by the CLI itself.
    refused = invoke(ctx, "ephemeral", "up", "--name", "dev")
    assert "'dev' is a permanent stack" in refused


def test_a_command_on_a_deployed_stack_points_at_the_backend_never_at_creating_one(
    ctx: Context, backend: FakeBackend
) -> None:
    """EYES9 M2: `ragops status -s prod` against the wrong backend told on-call to `pulumi stack init prod`,
    which creates an empty prod in the wrong backend. Every command that reads or operates a deployed stack now
    names the backend in use (`pulumi whoami`'s URL) and how to check it."""
    for args in (
        ("status", "-s", "prod"),
        ("rollback", "-s", "prod"),
        ("drift", "-s", "prod"),
        ("reindex", "status", "-s", "prod"),
        ("reconcile", "-s", "prod", "--dry-run"),
    ):
        out = invoke(ctx, *args)
        assert "no stack named 'prod' found" in out, args
        assert (
            f"hint: the stack is not in the backend you are logged in to ({backend.url}): you are probably "
            "logged in to another backend" in out
        ), (args, out)
        assert "`pulumi whoami -v`" in out
        assert "PULUMI_BACKEND_URL" in out
        assert "stack init" not in out, args
        assert "ephemeral" not in out, args


def test_the_backend_named_is_pulumi_backend_url_when_set(
    ctx: Context, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://acme-pulumi-state")
    out = invoke(ctx, "status", "-s", "prod")
    assert "is not in the backend you are logged in to (s3://acme-pulumi-state)" in out
    assert not backend.commands("whoami")


def test_another_name_may_also_be_an_ephemeral_stack(ctx: Context, backend: FakeBackend) -> None:
    out = invoke(ctx, "up", "-s", "pr-7", "-q")
    assert (
        "create it with `pulumi stack init pr-7` (ephemeral PR stacks: `ragops ephemeral up --name pr-7`)"
        in out
    )
    # Reading one: it may have been destroyed or reaped, never "create it".
    out = invoke(ctx, "status", "-s", "pr-7")
    assert "a PR stack may also have been destroyed or reaped (`ragops ephemeral list`)" in out
    assert "stack init" not in out


def test_a_promotion_says_which_of_its_stacks_is_missing(ctx: Context, backend: FakeBackend) -> None:
    out = invoke(ctx, "promote", "--from", "dev", "--to", "staging")
    assert "hint: dev (the source of the promotion) is not in the backend you are logged in to" in out
    assert "ephemeral" not in out


def test_the_hint_reads_a_fully_qualified_stack_name() -> None:
    stderr = "error: no stack named 'acme/rag/staging' found"
    assert errors.hint_for(stderr) == (
        "the stack does not exist in this backend: create it with `pulumi stack init acme/rag/staging`"
    )
    assert errors.hint_for(stderr, {"staging": "the target of the promotion"}).startswith(
        "staging (the target of the promotion) does not exist"
    )
    assert errors.hint_for(stderr, creates=False, backend="gs://b").startswith(
        "the stack is not in the backend you are logged in to (gs://b): "
    )


def test_a_committed_stack_file_is_a_permanent_stack_and_not_offered_as_an_ephemeral_one(
    ctx: Context,
) -> None:
    # A fourth permanent stack (docs/delivery.md, "Adding a permanent stack"): its committed file has config and
    # no rag:ephemeral record, and `ragops ephemeral up --name qa` refuses it, so the hint must not offer that.
    (ctx.work_dir / "Pulumi.qa.yaml").write_text("config:\n  rag:environment: staging\n")
    out = invoke(ctx, "up", "-s", "qa", "-q")
    assert "create it with `pulumi stack init qa`" in out
    assert "ephemeral" not in out
    assert "'qa' is not an ephemeral stack" in invoke(ctx, "ephemeral", "up", "--name", "qa")
    # A PR stack's file (written by `ragops ephemeral up`) keeps the offer.
    (ctx.work_dir / "Pulumi.pr-8.yaml").write_text("config:\n  rag:ephemeral:\n    owner: me\n")
    assert "(ephemeral PR stacks: `ragops ephemeral up --name pr-8`)" in invoke(ctx, "up", "-s", "pr-8", "-q")
