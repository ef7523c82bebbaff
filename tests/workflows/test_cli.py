"""The `ragops` CLI through typer's CliRunner: exit codes 0 ok, 1 refused/failed, 2 usage, and their messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from semver import VersionInfo
from typer.testing import CliRunner

from infra.workflows.cli import app
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import DIGEST, FakeBackend, policy_event, step_event

runner = CliRunner()


def _invoke(ctx: Context, *args: str):
    return runner.invoke(app, list(args), obj=ctx)


def test_preview_writes_the_comment_and_exits_0(ctx: Context, backend: FakeBackend, tmp_path: Path) -> None:
    backend.add_stack("dev")
    backend.script("dev").preview_events = [step_event("create", "rag-hpa")]
    backend.script("dev").preview_summary = {"create": 1, "same": 3}
    out = tmp_path / "comment.md"

    result = _invoke(ctx, "preview", "--stack", "dev", "--comment-file", str(out), "--quiet")

    assert result.exit_code == 0, result.output
    assert "preview of dev: 1 create" in result.output
    assert out.read_text().startswith("<!-- ragops-preview:dev -->\n### Pulumi preview for `dev`")
    assert "--policy-pack" in backend.commands("preview")[0]


def test_failed_preview_still_writes_the_comment_and_exits_1(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    backend.add_stack("dev")
    backend.script("dev").preview_events = [policy_event("qdrant-api-key", "Qdrant has no API key")]
    backend.script("dev").preview_error = "error: 1 mandatory policy violation"
    out = tmp_path / "comment.md"

    result = _invoke(ctx, "preview", "-s", "dev", "--comment-file", str(out), "--no-policy")

    assert result.exit_code == 1
    assert "preview of dev failed" in result.output
    assert "**Preview failed.**" in out.read_text()
    assert "qdrant-api-key" in out.read_text()
    assert "--policy-pack" not in backend.commands("preview")[0]


def test_preview_streams_pulumi_output_unless_quiet(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev")
    assert "12 unchanged" in _invoke(ctx, "preview", "-s", "dev").output
    assert "12 unchanged" not in _invoke(ctx, "preview", "-s", "dev", "-q").output


def test_promote_ok(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev", outputs={"imageDigest": DIGEST})
    backend.add_stack("staging")
    result = _invoke(ctx, "promote", "--from", "dev", "--to", "staging", "-q")
    assert result.exit_code == 0, result.output
    assert f"promoted {DIGEST} dev -> staging (by octocat at 2026-03-01T12:00:00Z)" in result.output.replace(
        "\n", ""
    )


def test_promote_wrong_order_is_usage_exit_2(ctx: Context, backend: FakeBackend) -> None:
    result = _invoke(ctx, "promote", "--from", "dev", "--to", "prod")
    assert result.exit_code == 2
    assert "only allowed promotions" in result.output
    assert backend.calls == []


def test_promote_refusal_exits_1(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev", outputs={"imageDigest": "registry.example.com/rag/service:latest"})
    backend.add_stack("staging")
    result = _invoke(ctx, "promote", "--from", "dev", "--to", "staging")
    assert result.exit_code == 1
    assert "refused:" in result.output
    assert "not an immutable digest" in result.output.replace("\n", " ")


def test_drift_exit_codes(ctx: Context, backend: FakeBackend, tmp_path: Path) -> None:
    backend.add_stack("prod")
    summary = tmp_path / "summary.md"
    clean = _invoke(ctx, "drift", "--stack", "prod", "--report-file", str(summary))
    assert clean.exit_code == 0
    assert "No drift" in clean.output

    backend.script("prod").refresh_summary = {"update": 1, "same": 11}
    backend.script("prod").refresh_events = [step_event("refresh", "rag-service", diffs=["spec"])]
    drifted = _invoke(ctx, "drift", "--stack", "prod", "--report-file", str(summary))
    assert drifted.exit_code == 1
    assert "Drift detected in stack 'prod'" in drifted.output
    text = summary.read_text()
    assert "No drift" in text  # appended, not overwritten
    assert "Drift detected" in text


def test_ephemeral_up_destroy_cycle(ctx: Context, backend: FakeBackend) -> None:
    up = _invoke(ctx, "ephemeral", "up", "--name", "pr-42", "--ttl", "12h", "-q")
    assert up.exit_code == 0, up.output
    assert "pr-42 is up until 2026-03-02T00:00:00Z (owner octocat)" in up.output
    assert backend.stacks["pr-42"].resources == 12

    first = _invoke(ctx, "ephemeral", "destroy", "-s", "pr-42", "-q")
    again = _invoke(ctx, "ephemeral", "destroy", "-s", "pr-42", "-q")
    assert first.exit_code == 0
    assert "destroyed and removed" in first.output
    assert again.exit_code == 0
    assert "already gone" in again.output


@pytest.mark.parametrize(
    "args",
    [
        ["ephemeral", "up", "--name", "Bad_Name", "--ttl", "1h"],
        ["ephemeral", "up", "--name", "pr-1", "--ttl", "forever"],
        ["ephemeral", "up", "--name", "pr-1", "--ttl", "30d"],
        ["ephemeral", "destroy", "--stack", "staging"],
        ["ephemeral", "reap", "--now", "yesterday"],
        ["ephemeral", "up", "--ttl", "1h"],  # missing --name
        ["promote", "--from", "dev"],  # missing --to
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2_without_calling_pulumi(
    ctx: Context, backend: FakeBackend, args: list[str]
) -> None:
    result = _invoke(ctx, *args)
    assert result.exit_code == 2, result.output
    assert backend.calls == []


def test_failed_ephemeral_up_exits_1_after_teardown(ctx: Context, backend: FakeBackend) -> None:
    backend.script("pr-13").up_error = "error: update failed"
    result = _invoke(ctx, "ephemeral", "up", "--name", "pr-13", "-q")
    assert result.exit_code == 1
    assert "pulumi failed" in result.output
    assert "destroyed and removed after the failure" in result.output
    assert "pr-13" not in backend.stacks


def test_interrupted_ephemeral_up_exits_1_after_teardown(ctx: Context, backend: FakeBackend) -> None:
    backend.script("pr-14").up_interrupt = True
    result = _invoke(ctx, "ephemeral", "up", "--name", "pr-14", "-q")
    assert result.exit_code == 1
    assert "interrupted" in result.output
    assert "pr-14" not in backend.stacks


def test_sigterm_during_ephemeral_up_still_tears_down(ctx: Context, backend: FakeBackend) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    backend.script("pr-15").up_sigterm = True
    result = _invoke(ctx, "ephemeral", "up", "--name", "pr-15", "-q")
    assert result.exit_code == 1
    assert "interrupted" in result.output
    assert "destroyed and removed" in result.output
    assert "pr-15" not in backend.stacks
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored afterwards


def test_destroy_without_record_is_refused_then_forced(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("pr-16")
    refused = _invoke(ctx, "ephemeral", "destroy", "--stack", "pr-16", "-q")
    assert refused.exit_code == 1
    assert "Pass --force" in refused.output.replace("\n", " ")
    forced = _invoke(ctx, "ephemeral", "destroy", "--force", "--stack", "pr-16", "-q")
    assert forced.exit_code == 0
    assert "pr-16" not in backend.stacks


def test_reap_with_now_and_failure_exit_codes(ctx: Context, backend: FakeBackend) -> None:
    record = {"name": "pr-1", "owner": "a", "expiresAt": "2026-03-01T00:00:00Z"}
    backend.add_stack("pr-1", config={"rag:ephemeral": record})

    early = _invoke(ctx, "ephemeral", "reap", "--now", "2026-02-28T00:00:00Z", "-q")
    assert early.exit_code == 0
    assert "kept pr-1 (not expired)" in early.output

    backend.script("pr-1").destroy_error = "error: boom"
    failing = _invoke(ctx, "ephemeral", "reap", "-q")
    assert failing.exit_code == 1
    assert "FAILED pr-1" in failing.output

    backend.script("pr-1").destroy_error = None
    ok = _invoke(ctx, "ephemeral", "reap", "-q")
    assert ok.exit_code == 0
    assert "destroyed pr-1" in ok.output


def test_missing_pulumi_cli_is_a_clear_failure(
    work_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    result = runner.invoke(app, ["drift", "--stack", "dev"], obj=Context(work_dir=work_dir))
    assert result.exit_code == 1
    assert "Pulumi CLI is not on PATH" in result.output


def test_up_runs_pulumi_up_with_the_policy_pack(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev")
    result = _invoke(ctx, "up", "--stack", "dev", "-q")
    assert result.exit_code == 0, result.output
    assert "up dev: 12 create" in result.output
    assert backend.commands("up") == [
        [
            "up",
            "--yes",
            "--skip-preview",
            "--message",
            "ragops up dev",
            "--policy-pack",
            "infra/policy",
            "--exec-kind",
            "auto.local",
            "--event-log",
            "<event-log>",
            "--stack",
            "dev",
        ]
    ]


def test_failed_up_exits_1(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev")
    backend.script("dev").up_error = "error: policy violation"
    result = _invoke(ctx, "up", "--stack", "dev", "-q")
    assert result.exit_code == 1
    assert "policy violation" in result.output


# --- errors a user meets on the first day: one red line, the stderr alone, and the fix ---------------------------
@pytest.mark.parametrize(
    ("stderr", "hint"),
    [
        (
            "error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions",
            "hint: not logged in to a backend: run `pulumi login <backend URL>`",
        ),
        (
            "error: getting stack configuration: get stack secrets manager: passphrase must be set with "
            "PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE environment variables",
            "hint: the stack's secrets need its passphrase: set PULUMI_CONFIG_PASSPHRASE",
        ),
        (
            'error: failed to load checkpoint: blob (key ".pulumi/stacks/rag/dev.json") (code=Unknown): '
            "NoSuchBucket: The specified bucket does not exist",
            "hint: the state backend is unreachable or missing: check PULUMI_BACKEND_URL",
        ),
    ],
    ids=["not-logged-in", "no-passphrase", "no-backend"],
)
def test_a_pulumi_failure_prints_a_red_line_the_stderr_and_a_hint(
    ctx: Context, backend: FakeBackend, stderr: str, hint: str
) -> None:
    backend.add_stack("dev")
    backend.script("dev").up_error = stderr
    result = _invoke(ctx, "up", "-s", "dev", "-q")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert out.startswith(f"pulumi failed: {' '.join(stderr.split())}")
    assert hint in out
    # Only the stderr: not the CommandResult dump with the exit code and every line of stdout.
    assert "code: 255" not in out
    assert "stdout:" not in out
    assert "Updating (stack)" not in out


#: The display of an `up` whose program refused its config: the language host logs the program's RunError as its
#: message, which the CLI prints under the stack's Diagnostics on stdout; a failed program is a "bail", so stderr is
#: empty (pulumi/pulumi pkg/cmd/pulumi PrintEngineResult).
REFUSAL = (
    "rag:cluster.eks.version in Pulumi.{stack}.yaml: the cluster runs 1.33, and EKS upgrades one minor at a time "
    "(UpdateClusterVersion refuses 1.35): set 1.34, `ragops up`, and raise it again after that update"
)


def _refused_display(stack: str) -> str:
    return (
        f"Updating ({stack})\n\n     Type                 Name       Status\n"
        f" +   pulumi:pulumi:Stack  rag-{stack}  **failed**     1 error\n\n"
        f"Diagnostics:\n  pulumi:pulumi:Stack (rag-{stack}):\n    \x1b[31merror: \x1b[0m{REFUSAL.format(stack=stack)}\n\n"
        "Resources:\n\nDuration: 3s\n"
    )


@pytest.mark.parametrize("command", ["up", "promote"])
def test_a_program_refusal_is_the_red_line(ctx: Context, backend: FakeBackend, command: str) -> None:
    """`ragops up`/`promote` of a stack whose program refuses its config (here an EKS version two minors ahead of
    what runs) print that refusal, naming the key and the stack file, as the red line: not "failed without saying
    why" (stderr is empty) nor the CommandResult dump."""
    backend.add_stack("dev", outputs={"imageDigest": DIGEST})
    backend.add_stack("staging")
    target = "dev" if command == "up" else "staging"
    backend.script(target).up_error = ""
    backend.script(target).up_stdout = _refused_display(target)
    args = (
        ("up", "-s", "dev", "-q")
        if command == "up"
        else ("promote", "--from", "dev", "--to", "staging", "-q")
    )
    result = _invoke(ctx, *args)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert out.startswith(f"pulumi failed: {REFUSAL.format(stack=target)}"), out
    assert "without saying why" not in out
    assert "code: 255" not in out
    assert "Diagnostics" not in out


def test_a_program_refusal_is_what_a_failed_preview_and_its_comment_show(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    """`ragops preview` (a PR's check) prints the refusal's line, and the PR comment says it under "Preview
    failed", instead of the CommandResult dump with every line of the display."""
    backend.add_stack("dev")
    backend.script("dev").preview_error = ""
    backend.script("dev").preview_stdout = _refused_display("dev")
    comment = tmp_path / "comment.md"
    result = _invoke(ctx, "preview", "-s", "dev", "-q", "--comment-file", str(comment))
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert f"preview of dev failed (no changes) {REFUSAL.format(stack='dev')}" in out, out
    assert "code: 255" not in out
    assert f"**Preview failed:** {REFUSAL.format(stack='dev')}" in comment.read_text(encoding="utf-8")


def test_a_missing_stack_hints_at_pulumi_stack_init(ctx: Context, backend: FakeBackend) -> None:
    result = _invoke(ctx, "up", "-s", "qa", "-q")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "pulumi failed: error: no stack named 'qa' found" in out
    assert "create it with `pulumi stack init qa`" in out


def test_an_unrecognised_failure_still_shows_its_stderr_without_a_hint(
    ctx: Context, backend: FakeBackend
) -> None:
    backend.add_stack("dev")
    backend.script("dev").up_error = "error: something nobody has seen before\n  details line"
    out = _invoke(ctx, "up", "-s", "dev", "-q").output
    assert "pulumi failed: error: something nobody has seen before" in out
    assert "details line" in out
    assert "hint:" not in out


def test_a_too_old_pulumi_cli_is_refused_before_any_command(backend: FakeBackend, work_dir: Path) -> None:
    old = Context(work_dir=work_dir, pulumi_command=backend.command(VersionInfo(3, 150, 0)))
    backend.add_stack("dev")
    result = _invoke(old, "up", "-s", "dev")
    assert result.exit_code == 1
    assert "refused: The Pulumi CLI is 3.150.0, ragops needs 3.170.0 or newer" in " ".join(
        result.output.split()
    )
    assert backend.calls == []


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert re.fullmatch(r"ragops \d+\.\d+\.\d+\S*\n", result.output)


def test_every_single_stack_command_takes_the_same_stack_option() -> None:
    for command in (
        ["preview"],
        ["up"],
        ["rollback"],
        ["drift"],
        ["status"],
        ["smoke"],
        ["reconcile"],
        ["ephemeral", "up"],
        ["ephemeral", "destroy"],
    ):
        help_text = runner.invoke(app, [*command, "--help"]).output
        assert "--stack" in help_text, command
        assert "-s " in help_text, command


# --- ephemeral stacks: list, reap --dry-run, the URL a reviewer opens --------------------------------------------
def _ephemeral(backend: FakeBackend, name: str, expires: str, owner: str = "octocat") -> None:
    record = {"name": name, "owner": owner, "expiresAt": expires}
    backend.add_stack(name, config={"rag:ephemeral": record}, outputs={"ephemeral": record})


def test_ephemeral_list_shows_owner_expiry_and_state(ctx: Context, backend: FakeBackend) -> None:
    _ephemeral(backend, "pr-1", "2026-03-01T11:00:00Z", "alice")
    _ephemeral(backend, "pr-2", "2026-03-02T11:00:00Z", "bob")
    backend.add_stack("dev")
    backend.add_stack("handmade")
    result = _invoke(ctx, "ephemeral", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines == [
        "handmade\t?\texpires -\towner -\tnot ephemeral (no rag:ephemeral record)",
        "pr-1\tEXPIRED\texpires 2026-03-01T11:00:00Z\towner alice",
        "pr-2\tactive\texpires 2026-03-02T11:00:00Z\towner bob",
    ]
    assert backend.commands("destroy") == []


def test_reap_dry_run_lists_what_it_would_destroy_and_changes_nothing(
    ctx: Context, backend: FakeBackend
) -> None:
    _ephemeral(backend, "pr-1", "2026-03-01T11:00:00Z")
    _ephemeral(backend, "pr-2", "2026-03-02T11:00:00Z")
    result = _invoke(ctx, "ephemeral", "reap", "--dry-run", "-q")
    assert result.exit_code == 0, result.output
    assert "would destroy pr-1 (expired)" in result.output
    assert "kept pr-2 (not expired)" in result.output
    assert backend.commands("destroy") == []
    assert set(backend.stacks) == {"pr-1", "pr-2"}
    real = _invoke(ctx, "ephemeral", "reap", "-q")
    assert "destroyed pr-1" in real.output
    assert set(backend.stacks) == {"pr-2"}


def test_ephemeral_up_prints_the_url_and_writes_the_pr_comment(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    comment = tmp_path / "ephemeral.md"
    result = _invoke(
        ctx, "ephemeral", "up", "--name", "pr-9", "--ttl", "2h", "--comment-file", str(comment), "-q"
    )
    assert result.exit_code == 0, result.output
    assert "url: https://pr-9.rag.example.com" in result.output  # the fake backend's serviceUrl output
    text = comment.read_text()
    assert text.startswith("<!-- ragops-ephemeral:pr-9 -->")
    assert "- URL: https://pr-9.rag.example.com" in text
    assert "pulumi stack output apiKeys --show-secrets -s pr-9" in text
    # The hostname the stack is configured with is under the preview domain, not a loopback name.
    assert backend.stacks["pr-9"].config_value("rag:gateway")["hostname"] == "pr-9.preview.example.com"


@pytest.mark.parametrize(
    "domain", ["rag.localtest.me", "localhost", "127.0.0.1.nip.io", "app.127-0-0-1.sslip.io"]
)
def test_ephemeral_up_refuses_a_preview_domain_a_reviewer_cannot_reach(
    ctx: Context, backend: FakeBackend, domain: str
) -> None:
    result = _invoke(ctx, "ephemeral", "up", "--name", "pr-9", "--domain", domain)
    assert result.exit_code == 2
    assert "127.0.0.1" in result.output or "Invalid preview domain" in result.output
    assert backend.calls == []


def test_ephemeral_up_without_a_preview_domain_says_how_to_set_one(
    ctx: Context, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAGOPS_PREVIEW_DOMAIN")
    result = _invoke(ctx, "ephemeral", "up", "--name", "pr-9")
    assert result.exit_code == 2
    assert "RAGOPS_PREVIEW_DOMAIN" in result.output
    assert backend.calls == []


def test_promote_preview_only_writes_the_summary_and_updates_nothing(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    backend.add_stack("dev", outputs={"imageDigest": "registry.example.com/rag/service@sha256:" + "ab" * 32})
    backend.add_stack("staging", outputs={})
    out = tmp_path / "promotion.md"
    result = _invoke(
        ctx, "promote", "--from", "dev", "--to", "staging", "--preview-only", "--comment-file", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "preview of promote dev -> staging:" in result.output
    assert out.read_text().strip()
    assert backend.commands("up") == []
    refused = _invoke(ctx, "promote", "--from", "dev", "--to", "staging", "--comment-file", str(out))
    assert refused.exit_code == 2
    assert backend.commands("up") == []


def test_promote_check_source_only_writes_the_record_the_target_jobs_read(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    """promote.yml's three steps: the source check (source's credentials), the approver's preview and the
    promotion (target's credentials), the record passed between them."""
    backend.add_stack("dev", outputs={"imageDigest": DIGEST})
    backend.add_stack("staging", outputs={})
    record = tmp_path / "source.json"
    checked = _invoke(ctx, "promote", "--from", "dev", "--check-source-only", "--record-file", str(record))
    assert checked.exit_code == 0, checked.output
    assert f"promotion source dev checked: {DIGEST}, no pending changes" in checked.output
    assert record.read_text().count("\n") == 1
    backend.calls.clear()
    summary = tmp_path / "summary.md"
    previewed = _invoke(
        ctx,
        "promote",
        "--from",
        "dev",
        "--to",
        "staging",
        "--checked-source",
        str(record),
        "--preview-only",
        "--comment-file",
        str(summary),
    )
    assert previewed.exit_code == 0, previewed.output
    assert summary.read_text().strip()
    promoted = _invoke(ctx, "promote", "--from", "dev", "--to", "staging", "--checked-source", str(record))
    assert promoted.exit_code == 0, promoted.output
    assert not [c for c in backend.commands() if c[c.index("--stack") + 1 :][:1] == ["dev"]]
    assert backend.stacks["staging"].config_value("rag:image") == DIGEST


def test_a_target_updated_after_the_approvers_preview_is_not_promoted(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    """REVIEW_INFRA20 R2: the approval may come days after the preview job; a rollback or a hand-run `up` of the
    target in between means the approved `up` would apply a diff nobody read. The preview job records the target's
    last update version, and the approved promotion refuses when it moved, before anything is written."""
    from infra.workflows.stacks import select

    backend.add_stack("dev", outputs={"imageDigest": DIGEST})
    backend.add_stack("staging", outputs={})
    record, version = tmp_path / "source.json", tmp_path / "previewed" / "target-version.json"
    version.parent.mkdir()
    assert (
        _invoke(
            ctx, "promote", "--from", "dev", "--check-source-only", "--record-file", str(record)
        ).exit_code
        == 0
    )
    common = ["promote", "--from", "dev", "--to", "staging", "--checked-source", str(record)]

    def preview() -> dict:
        done = _invoke(ctx, *common, "--preview-only", "--record-target-version", str(version))
        assert done.exit_code == 0, done.output
        return json.loads(version.read_text())

    seen = preview()
    assert seen == {"kind": "ragops-previewed-target", "stack": "staging", "version": 1}
    select(ctx.workspace(), "staging").up()  # someone's hand-run `up` while the approval waits
    before_ups = len(backend.commands("up"))
    refused = _invoke(ctx, *common, "--previewed-target-version", str(version))
    assert refused.exit_code == 1, refused.output
    assert (
        "staging changed since the preview the approvers read (update 1 -> 2): run the workflow again"
        in " ".join(refused.output.split())
    )
    assert len(backend.commands("up")) == before_ups
    assert "rag:image" not in backend.stacks["staging"].config  # nothing written

    assert preview()["version"] == 2  # the workflow run again: the new preview is what the approvers read
    promoted = _invoke(ctx, *common, "--previewed-target-version", str(version))
    assert promoted.exit_code == 0, promoted.output
    assert backend.stacks["staging"].config_value("rag:image") == DIGEST


@pytest.mark.parametrize(
    ("args", "content", "reason"),
    [
        (["--preview-only", "--previewed-target-version", "{file}"], None, "goes with the promotion"),
        (["--record-target-version", "{file}"], None, "goes with --preview-only"),
        (["--previewed-target-version", "{file}"], "", "is not a previewed-target record"),
        (["--previewed-target-version", "{file}"], '{"kind": "x"}', "is not a previewed-target record"),
        (
            ["--previewed-target-version", "{file}"],
            '{"kind": "ragops-previewed-target", "stack": "qa", "version": 3}',
            "records the preview of 'qa', not 'staging'",
        ),
        (
            ["--previewed-target-version", "{file}"],
            '{"kind": "ragops-previewed-target", "stack": "staging", "version": "3"}',
            "has no update version",
        ),
    ],
)
def test_previewed_target_version_misuse_is_a_usage_error(
    ctx: Context, backend: FakeBackend, tmp_path: Path, args: list[str], content: str | None, reason: str
) -> None:
    file = tmp_path / "v.json"
    file.write_text(
        '{"kind": "ragops-previewed-target", "stack": "staging", "version": 1}'
        if content is None
        else content
    )
    result = _invoke(ctx, "promote", "--from", "dev", "--to", "staging", *[a.format(file=file) for a in args])
    assert result.exit_code == 2, result.output
    assert reason in " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())
    assert backend.calls == []


@pytest.mark.parametrize(
    "args",
    [
        ["--check-source-only"],  # no --record-file
        ["--check-source-only", "--record-file", "r.json", "--to", "staging"],
        ["--record-file", "r.json", "--to", "staging"],
        [],  # no --to
    ],
)
def test_promote_source_check_options_are_usage_errors(
    ctx: Context, backend: FakeBackend, args: list[str]
) -> None:
    result = _invoke(ctx, "promote", "--from", "dev", *args)
    assert result.exit_code == 2, result.output
    assert backend.calls == []


def test_an_empty_checked_source_is_refused_with_the_reason(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    """GitHub passes an empty job output when it withheld it as possibly holding a secret."""
    empty = tmp_path / "source.json"
    empty.write_text("")
    result = _invoke(ctx, "promote", "--from", "dev", "--to", "staging", "--checked-source", str(empty))
    assert result.exit_code == 2
    assert "is empty, not a source check record" in " ".join(result.output.split())
    assert backend.calls == []


@pytest.mark.parametrize("umask_002", [True, False])
def test_a_preview_of_an_image_rebuilt_by_a_checkouts_file_modes_names_the_cause(
    ctx: Context, backend: FakeBackend, umask_002: bool
) -> None:
    """REVIEW10 F6 from a laptop: pulumi-docker-build hashes each file's mode into the build context, so `ragops
    preview -s dev` from a clone made under umask 002 shows dev's image as rebuilt with the same content. The hint
    a refused promotion gives is printed by the preview too (note20: it covered promotions only)."""
    from tests.workflows.test_promote import IMAGE_BUILD, _git

    backend.add_stack("dev")
    (ctx.work_dir / "service").mkdir()
    (ctx.work_dir / "service" / "Dockerfile").write_text("FROM scratch\n")
    for path in ctx.work_dir.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    _git(ctx.work_dir, "init", "-q")
    _git(ctx.work_dir, "add", "-A")
    _git(ctx.work_dir, "commit", "-q", "-m", "one")
    for path in ctx.work_dir.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            path.chmod(0o664 if umask_002 else 0o644)
    backend.script("dev").preview_summary = {"update": 1, "same": 11}
    backend.script("dev").preview_events = [
        step_event("update", "service-image", IMAGE_BUILD, diffs=["contextHash"])
    ]

    result = _invoke(ctx, "preview", "-s", "dev", "-q")

    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "preview of dev: 1 update" in output
    assert ("(-rw-rw-r--)" in output) is umask_002
    assert ("umask 002" in output) is umask_002
    assert ("chmod g-w,o-w" in output) is umask_002
