"""The hint for a stack missing from the backend (E8 of EYES4): the command that creates it, for real.

`ragops ephemeral` refuses the permanent names (dev, staging, prod), so the hint offers it only for other names;
a promotion says whether its source or its target is missing. Run through the real CLI against the fake backend.
"""

from __future__ import annotations

from typer.testing import CliRunner

from infra.workflows import errors
from infra.workflows.cli import app
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import FakeBackend

runner = CliRunner()


def invoke(ctx: Context, *args: str) -> str:
    result = runner.invoke(app, list(args), obj=ctx)
    assert result.exit_code != 0, result.output
    return " ".join(result.output.split())


def test_a_permanent_stack_is_not_offered_as_an_ephemeral_one(ctx: Context) -> None:
    for args in (("status", "-s", "dev"), ("rollback", "-s", "prod")):
        out = invoke(ctx, *args)
        name = args[-1]
        assert (
            f"hint: the stack does not exist in this backend: create it with `pulumi stack init {name}`"
            in out
        )
        assert "ephemeral" not in out
    # The command the old hint offered is refused by the CLI itself.
    refused = invoke(ctx, "ephemeral", "up", "--name", "dev")
    assert "'dev' is a permanent stack" in refused


def test_another_name_may_also_be_an_ephemeral_stack(ctx: Context) -> None:
    out = invoke(ctx, "status", "-s", "pr-7")
    assert (
        "create it with `pulumi stack init pr-7` (ephemeral PR stacks: `ragops ephemeral up --name pr-7`)"
        in out
    )


def test_a_promotion_says_which_of_its_stacks_is_missing(ctx: Context, backend: FakeBackend) -> None:
    out = invoke(ctx, "promote", "--from", "dev", "--to", "staging")
    assert "hint: dev (the source of the promotion) does not exist in this backend" in out
    assert "ephemeral" not in out


def test_the_hint_reads_a_fully_qualified_stack_name() -> None:
    stderr = "error: no stack named 'acme/rag/staging' found"
    assert errors.hint_for(stderr) == (
        "the stack does not exist in this backend: create it with `pulumi stack init acme/rag/staging`"
    )
    assert errors.hint_for(stderr, {"staging": "the target of the promotion"}).startswith(
        "staging (the target of the promotion) does not exist"
    )


def test_a_committed_stack_file_is_a_permanent_stack_and_not_offered_as_an_ephemeral_one(
    ctx: Context,
) -> None:
    # A fourth permanent stack (docs/delivery.md, "Adding a permanent stack"): its committed file has config and
    # no rag:ephemeral record, and `ragops ephemeral up --name qa` refuses it, so the hint must not offer that.
    (ctx.work_dir / "Pulumi.qa.yaml").write_text("config:\n  rag:environment: staging\n")
    out = invoke(ctx, "status", "-s", "qa")
    assert "create it with `pulumi stack init qa`" in out
    assert "ephemeral" not in out
    assert "'qa' is not an ephemeral stack" in invoke(ctx, "ephemeral", "up", "--name", "qa")
    # A PR stack's file (written by `ragops ephemeral up`) keeps the offer.
    (ctx.work_dir / "Pulumi.pr-8.yaml").write_text("config:\n  rag:ephemeral:\n    owner: me\n")
    assert "(ephemeral PR stacks: `ragops ephemeral up --name pr-8`)" in invoke(ctx, "status", "-s", "pr-8")
