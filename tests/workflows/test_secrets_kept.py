"""Secrets set from a laptop are not silently dropped by the next deploy from a fresh checkout (CI).

An operator runs `pulumi config set --secret rag:serviceApiKeys ...` (README step 3) in their checkout and
`ragops up -s prod`: the update records the secret keys in the backend's history. The next CI job deploys from a
fresh checkout of the committed Pulumi.prod.yaml, which lacks them: `up` and `promote` must refuse, before they
write or update anything, naming the keys and the stack file, unless `--drop-secret` says the removal is meant.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.workflows.cli import app
from infra.workflows.deploy import deploy
from infra.workflows.promote import promote
from infra.workflows.secrets import SecretsDropped
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import DIGEST, FakeBackend, read_config, write_config

runner = CliRunner()
COMMITTED_PROD = "config:\n  rag:environment: prod\n  rag:service:\n    replicas: 5\n"
SECRETS = {
    "rag:serviceApiKeys": '{"k-acme-0123456789abcdef0123456789": "acme"}',
    "rag:slackWebhookUrl": "https://hooks.slack.com/services/T0/B0/x",
}
PROMOTION = {"from": "staging", "digest": DIGEST, "at": "2026-03-01T12:00:00Z", "by": "octocat"}


def _checkout(root: Path, name: str, secrets: dict[str, str] | None = None) -> Path:
    """A checkout of the committed files; `secrets` set in it the way `pulumi config set --secret` does."""
    checkout = root / name
    checkout.mkdir()
    (checkout / "Pulumi.yaml").write_text("name: rag\nruntime: python\nmain: infra/\n")
    (checkout / "Pulumi.prod.yaml").write_text(COMMITTED_PROD)
    if secrets:
        entries = read_config(checkout, "prod")
        entries.update({k: {"value": v, "secret": True} for k, v in secrets.items()})
        write_config(checkout, "prod", entries)
    return checkout


@pytest.fixture
def prod_with_laptop_secrets(tmp_path: Path) -> FakeBackend:
    """prod promoted by CI, then updated from a laptop whose stack file holds two secrets nobody committed."""
    promote_job = tmp_path / "promote-job"
    promote_job.mkdir()
    backend = FakeBackend(promote_job)
    backend.add_stack(
        "prod",
        config={"rag:environment": "prod", "rag:image": DIGEST, "rag:promotion": PROMOTION},
        outputs={"imageDigest": DIGEST},
    )
    laptop = _checkout(tmp_path, "laptop", SECRETS)
    deploy(Context(work_dir=laptop, pulumi_command=backend.command()), "prod", policy_pack=None)
    assert backend.stacks["prod"].deployed_config()["rag:slackWebhookUrl"]["secret"] is True
    return backend


def test_a_fresh_checkout_without_the_secrets_is_refused_before_anything_changes(
    tmp_path: Path, prod_with_laptop_secrets: FakeBackend
) -> None:
    backend = prod_with_laptop_secrets
    ci = _checkout(tmp_path, "ci")
    ups = len(backend.commands("up"))
    before = (ci / "Pulumi.prod.yaml").read_text()

    with pytest.raises(SecretsDropped) as refused:
        deploy(Context(work_dir=ci, pulumi_command=backend.command()), "prod", policy_pack=None)

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        "Refusing to deploy prod: Pulumi.prod.yaml lacks the secret config rag:serviceApiKeys, "
        "rag:slackWebhookUrl that the stack's last deploy ran with"
    )
    assert message.endswith("pass --drop-secret rag:serviceApiKeys --drop-secret rag:slackWebhookUrl.")
    assert len(backend.commands("up")) == ups  # no update ran
    # The history was read without secrets: no passphrase needed to find the names.
    assert ["stack", "history", "--json", "--page-size", "20", "--page", "1", "--stack", "prod"] in (
        backend.commands("stack")
    )
    # keep_promoted carried the promoted image into the file; no secret was written or invented.
    assert "slackWebhookUrl" not in (ci / "Pulumi.prod.yaml").read_text()
    assert before != (ci / "Pulumi.prod.yaml").read_text()


def test_committed_encrypted_secrets_deploy(tmp_path: Path, prod_with_laptop_secrets: FakeBackend) -> None:
    backend = prod_with_laptop_secrets
    ci = _checkout(tmp_path, "ci", SECRETS)  # the laptop's encrypted values, committed
    deploy(Context(work_dir=ci, pulumi_command=backend.command()), "prod", policy_pack=None)
    assert (
        backend.stacks["prod"].deployed_config()["rag:serviceApiKeys"]["value"]
        == SECRETS["rag:serviceApiKeys"]
    )


def test_ragops_up_drops_only_the_secrets_it_is_told_to(
    tmp_path: Path, prod_with_laptop_secrets: FakeBackend
) -> None:
    backend = prod_with_laptop_secrets
    ci = _checkout(tmp_path, "ci")
    ctx = Context(work_dir=ci, pulumi_command=backend.command())
    ups = len(backend.commands("up"))

    refused = runner.invoke(app, ["up", "-s", "prod", "-q", "--no-policy"], obj=ctx)
    assert refused.exit_code == 1
    assert "lacks the secret config rag:serviceApiKeys, rag:slackWebhookUrl" in " ".join(
        refused.output.split()
    )

    one = runner.invoke(
        app, ["up", "-s", "prod", "-q", "--no-policy", "--drop-secret", "slackWebhookUrl"], obj=ctx
    )
    assert one.exit_code == 1
    assert "lacks the secret config rag:serviceApiKeys that" in " ".join(one.output.split())
    assert len(backend.commands("up")) == ups

    drop_both = ["--drop-secret", "rag:slackWebhookUrl", "--drop-secret", "rag:serviceApiKeys"]
    both = runner.invoke(app, ["up", "-s", "prod", "-q", "--no-policy", *drop_both], obj=ctx)
    assert both.exit_code == 0, both.output
    ran = backend.stacks["prod"].deployed_config()
    assert "rag:serviceApiKeys" not in ran
    assert "rag:slackWebhookUrl" not in ran
    assert ran["rag:image"]["value"] == DIGEST
    # Dropped once, the next deploy from the same committed file goes through without the flag.
    again = runner.invoke(app, ["up", "-s", "prod", "-q", "--no-policy"], obj=ctx)
    assert again.exit_code == 0, again.output


def test_a_promotion_is_refused_before_it_writes_the_target(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("staging", config={"rag:service": {"replicas": 3}}, outputs={"imageDigest": DIGEST})
    prod = backend.add_stack("prod", config={"rag:environment": "prod"}, outputs={})
    # prod's last update ran with a PagerDuty key set on somebody's laptop; the runner's checkout lacks it.
    prod.history[-1]["config"]["rag:pagerdutyRoutingKey"] = {"value": "r0ut1ng", "secret": True}

    with pytest.raises(
        SecretsDropped, match=r"Pulumi\.prod\.yaml lacks the secret config rag:pagerdutyRoutingKey"
    ):
        promote(ctx, "staging", "prod")
    assert [c for c in backend.commands("config") if c[1] == "set-all" and c[-3] == "prod"] == []
    assert [c for c in backend.commands("up") if c[-1] == "prod"] == []

    promote(ctx, "staging", "prod", drop_secrets=["rag:pagerdutyRoutingKey"])
    assert prod.deployed_config()["rag:image"]["value"] == DIGEST


def test_a_preview_fails_saying_which_secret_the_update_it_previews_would_drop(
    tmp_path: Path, prod_with_laptop_secrets: FakeBackend
) -> None:
    """A PR's `ragops preview` from a fresh checkout says what the deploy after the merge would be refused for,
    in the CLI's output and the PR comment, before the preview runs; `--drop-secret` lets it run."""
    backend = prod_with_laptop_secrets
    ctx = Context(work_dir=_checkout(tmp_path, "ci"), pulumi_command=backend.command())
    comment = tmp_path / "comment.md"
    previews = len(backend.commands("preview"))
    args = ["preview", "-s", "prod", "-q", "--no-policy", "--comment-file", str(comment)]

    refused = runner.invoke(app, args, obj=ctx)
    assert refused.exit_code == 1
    said = " ".join(refused.output.split())
    assert (
        "Refusing to preview prod: Pulumi.prod.yaml lacks the secret config rag:serviceApiKeys, "
        "rag:slackWebhookUrl that the stack's last deploy ran with, so the update it previews would run without "
        "them." in said
    )
    assert "pass --drop-secret rag:serviceApiKeys --drop-secret rag:slackWebhookUrl." in said
    assert "lacks the secret config rag:serviceApiKeys, rag:slackWebhookUrl" in " ".join(
        comment.read_text().split()
    )
    assert len(backend.commands("preview")) == previews  # refused before the preview

    one = runner.invoke(app, [*args, "--drop-secret", "rag:slackWebhookUrl"], obj=ctx)
    assert one.exit_code == 1
    assert "lacks the secret config rag:serviceApiKeys that" in " ".join(one.output.split())

    drop_both = ["--drop-secret", "rag:slackWebhookUrl", "--drop-secret", "serviceApiKeys"]
    both = runner.invoke(app, [*args, *drop_both], obj=ctx)
    assert both.exit_code == 0, both.output
    assert len(backend.commands("preview")) == previews + 1
    assert "lacks the secret" not in comment.read_text()


def test_promotes_preview_of_its_source_is_not_refused_for_secrets(
    ctx: Context, backend: FakeBackend
) -> None:
    """`promote` previews the source stack as deployed only to find pending changes: the secrets check is the
    target's (above), not a reason to fail that preview."""
    from infra.workflows.preview import run_preview

    backend.add_stack("staging", config={"rag:service": {"replicas": 3}}, outputs={"imageDigest": DIGEST})
    backend.stacks["staging"].history[-1]["config"]["rag:slackWebhookUrl"] = {"value": "x", "secret": True}
    assert run_preview(ctx.workspace(), "staging", policy_pack=None).ok
    refused = run_preview(ctx.workspace(), "staging", policy_pack=None, drop_secrets=())
    assert not refused.ok
    assert refused.error is not None
    assert refused.error.startswith(
        "Refusing to preview staging: Pulumi.staging.yaml lacks the secret config"
    )


def test_ephemeral_up_refuses_to_drop_a_secret_set_on_the_pr_stack_and_keeps_the_stack(
    ctx: Context, backend: FakeBackend
) -> None:
    """A PR stack's config is written again from the template at every push (secure values dropped): a secret set
    on it by hand would be gone at the next push. Refused before the config is written, and the stack is kept
    (not torn down as a failed `up` is); `--drop-secret` lets the push go on without it."""
    from infra.workflows import ephemeral

    ephemeral.up(ctx, "pr-5", "24h")
    # Set on the PR stack by hand and deployed with it: its last update ran with the secret.
    backend.stacks["pr-5"].history[-1]["config"]["rag:slackWebhookUrl"] = {"value": "x", "secret": True}
    ups, writes = len(backend.commands("up")), len(backend.commands("config"))

    refused = runner.invoke(app, ["ephemeral", "up", "--stack", "pr-5", "-q"], obj=ctx)
    assert refused.exit_code == 1
    said = " ".join(refused.output.split())
    assert said.startswith(
        "refused: Refusing to deploy pr-5: Pulumi.pr-5.yaml lacks the secret config rag:slackWebhookUrl that the "
        "stack's last deploy ran with, so this one would run without it. An ephemeral stack's config is written "
        "again from ephemeral.template.yaml at every `ragops ephemeral up`"
    ), said
    assert said.endswith("pass --drop-secret rag:slackWebhookUrl.")
    assert "destroyed" not in said
    assert "pr-5" in backend.stacks  # kept: nothing torn down
    assert backend.commands("destroy") == []
    assert len(backend.commands("up")) == ups
    assert [c for c in backend.commands("config")[writes:] if c[1] == "set-all"] == []

    ephemeral.up(ctx, "pr-5", "24h", drop_secrets=["slackWebhookUrl"])
    assert len(backend.commands("up")) == ups + 1
    assert "rag:slackWebhookUrl" not in backend.stacks["pr-5"].deployed_config()
