"""Ephemeral stacks: validation, TTL arithmetic, template config, guaranteed teardown, destroy, the reaper."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pulumi.automation.errors import CommandError

from infra.workflows import ephemeral
from infra.workflows.stacks import Context, UsageError, WorkflowError
from tests.workflows.conftest import NOW
from tests.workflows.fake_pulumi import FakeBackend, FakePulumi

# ---------------------------------------------------------------- validation and TTL arithmetic


@pytest.mark.parametrize("name", ["pr-1", "pr-123", "feature-x", "a", "p" * 40])
def test_valid_names(name: str) -> None:
    assert ephemeral.validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "PR-1", "pr_1", "pr-1-", "-pr", "1pr", "pr.1", "pr/1", "p" * 41, "dev", "staging", "prod", "pr 1"],
)
def test_invalid_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError):
        ephemeral.validate_name(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5m", timedelta(minutes=5)),
        ("300s", timedelta(minutes=5)),
        ("90m", timedelta(minutes=90)),
        ("24h", timedelta(hours=24)),
        ("1d12h", timedelta(hours=36)),
        ("2d", timedelta(days=2)),
        ("7d", timedelta(days=7)),
        ("6d23h59m60s", timedelta(days=7)),
        (" 24H ", timedelta(hours=24)),
    ],
)
def test_ttl_parsing(text: str, expected: timedelta) -> None:
    assert ephemeral.parse_ttl(text) == expected


@pytest.mark.parametrize(
    "text", ["", "24", "h", "24x", "1.5h", "-1h", "24h junk", "0m", "4m", "299s", "7d1s", "8d"]
)
def test_bad_or_out_of_range_ttl_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        ephemeral.parse_ttl(text)


def test_an_out_of_range_ttl_names_the_range_as_ttls_are_written() -> None:
    # EYES4 E13: the range read "between 0:05:00 and 7 days, 0:00:00" (Python's timedelta).
    with pytest.raises(UsageError, match=r"must be between 5m and 7d\.$"):
        ephemeral.parse_ttl("0h")
    assert ephemeral.ttl_text(timedelta(hours=36, seconds=5)) == "1d12h5s"
    assert ephemeral.parse_ttl(ephemeral.ttl_text(timedelta(days=6, minutes=7))) == timedelta(
        days=6, minutes=7
    )


def test_expiry_arithmetic_is_utc_rfc3339() -> None:
    assert ephemeral.expires_at(NOW, timedelta(hours=24)) == "2026-03-02T12:00:00Z"
    assert ephemeral.expires_at(NOW, ephemeral.parse_ttl("1d12h")) == "2026-03-03T00:00:00Z"
    record = {"expiresAt": "2026-03-01T12:00:00Z"}
    assert ephemeral.is_expired(record, NOW)  # at the instant of expiry
    assert not ephemeral.is_expired(record, NOW - timedelta(seconds=1))
    assert ephemeral.is_expired({"expiresAt": "2026-03-01T13:00:00+02:00"}, NOW)  # offsets are honoured
    with pytest.raises(ValueError, match="no expiresAt"):
        ephemeral.is_expired({}, NOW)


def test_template_config_merges_dev_values_drops_secrets_and_substitutes(ctx: Context) -> None:
    values = ephemeral.template_config(ctx.work_dir, "pr-7")
    assert "rag:qdrantApiKey" not in values  # encrypted for the dev stack only
    assert values["rag:namespace"] == "pr-7"
    assert values["rag:gateway"] == {"hostname": "pr-7.preview.example.com", "className": "envoy-gateway"}
    assert values["rag:service"]["settings"]["logLevel"] == "DEBUG"  # from dev
    assert values["rag:monitoring"] == {"enabled": False}
    assert values["rag:image"] == ""


# ---------------------------------------------------------------- up


def test_up_creates_configures_and_updates_the_stack(ctx: Context, backend: FakeBackend) -> None:
    record = ephemeral.up(ctx, "pr-123", "24h", owner="alice")

    assert record.record() == {"name": "pr-123", "owner": "alice", "expiresAt": "2026-03-02T12:00:00Z"}
    cmds = backend.commands()
    assert cmds.pop(0) == ["stack", "ls", "--json"]  # the cap on live ephemeral stacks, counted first
    assert cmds[0] == ["stack", "init", "pr-123"]
    # Counted again once it exists: a simultaneous creation would show now (ephemeral.claim_slot).
    assert cmds.pop(1) == ["stack", "ls", "--json"]
    assert cmds[1][:5] == ["config", "set-all", "--stack", "pr-123", "--json"]
    written = json.loads(cmds[1][5])
    assert written["rag:ephemeral"]["objectValue"] == record.record()
    assert written["rag:namespace"] == {"secret": False, "value": "pr-123"}
    assert cmds[2] == [
        "up",
        "--yes",
        "--skip-preview",
        "--message",
        "ephemeral pr-123 until 2026-03-02T12:00:00Z",
        # The policy pack, as on `ragops up`/`promote`/`rollback`: the PR preview ran it on dev's config only.
        "--policy-pack",
        "infra/policy",
        "--exec-kind",
        "auto.local",
        "--stack",
        "pr-123",
    ]
    stack = backend.stacks["pr-123"]
    assert stack.config_value("rag:ephemeral") == record.record()
    assert stack.outputs["ephemeral"] == record.record()
    assert stack.resources == 12


def test_up_again_updates_the_existing_stack_and_extends_expiry(ctx: Context, backend: FakeBackend) -> None:
    ephemeral.up(ctx, "pr-5", "1h")
    later = Context(
        work_dir=ctx.work_dir,
        pulumi_command=backend.command(),
        clock=lambda: NOW + timedelta(hours=5),
        actor=lambda: "octocat",
    )
    record = ephemeral.up(later, "pr-5", "2h")
    assert record.expires_at == "2026-03-01T19:00:00Z"
    lifecycle = [c for c in backend.commands("stack") if c[1] in ("init", "select", "rm")]
    assert lifecycle == [
        ["stack", "init", "pr-5"],
        ["stack", "init", "pr-5"],
        ["stack", "select", "--stack", "pr-5"],
    ]
    assert backend.stacks["pr-5"].config_value("rag:ephemeral")["expiresAt"] == "2026-03-01T19:00:00Z"
    assert record.owner == "octocat"


def _teardown_calls(name: str) -> list[list[str]]:
    return [
        ["stack", "select", "--stack", name],
        ["stack", "export", "--show-secrets", "--stack", name],
        [
            "destroy",
            "--skip-preview",
            "--yes",
            "--message",
            f"teardown of ephemeral {name}",
            "--exec-kind",
            "auto.local",
            "--stack",
            name,
        ],
        ["stack", "history", "--json", "--show-secrets", "--page-size", "1", "--page", "1", "--stack", name],
        ["stack", "rm", "--yes", name],
    ]


def test_failed_up_is_torn_down_before_the_error_propagates(ctx: Context, backend: FakeBackend) -> None:
    backend.script("pr-9").up_error = "error: update failed: Deployment rag-service timed out"

    with pytest.raises(CommandError, match="timed out") as info:
        ephemeral.up(ctx, "pr-9", "24h")

    assert "pr-9" not in backend.stacks
    assert backend.commands()[-5:] == _teardown_calls("pr-9")
    assert any("destroyed and removed" in note for note in info.value.__notes__)


def test_interrupted_up_is_torn_down_and_the_interrupt_reraised(ctx: Context, backend: FakeBackend) -> None:
    backend.script("pr-10").up_interrupt = True

    with pytest.raises(KeyboardInterrupt):
        ephemeral.up(ctx, "pr-10", "24h")

    assert "pr-10" not in backend.stacks
    assert backend.commands()[-5:] == _teardown_calls("pr-10")


def test_failed_teardown_keeps_the_stack_and_says_so(ctx: Context, backend: FakeBackend) -> None:
    script = backend.script("pr-11")
    script.up_error = "error: update failed"
    script.destroy_error = "error: deleting Namespace pr-11: forbidden"

    with pytest.raises(CommandError, match="update failed") as info:
        ephemeral.up(ctx, "pr-11", "24h")

    assert "pr-11" in backend.stacks  # resources remain, so the stack must stay tracked
    assert backend.commands("stack")[-1] != ["stack", "rm", "--yes", "pr-11"]
    assert any("ragops ephemeral destroy pr-11" in note for note in info.value.__notes__)


def test_up_never_adopts_or_tears_down_a_stack_that_is_not_ephemeral(
    ctx: Context, backend: FakeBackend
) -> None:
    backend.add_stack("scratch", config={"rag:service": {"replicas": 2}})
    backend.script("scratch").up_error = "error: must not be reached"

    with pytest.raises(ephemeral.NotEphemeralError, match="not an ephemeral stack"):
        ephemeral.up(ctx, "scratch", "24h")

    assert backend.commands("up") == []
    assert backend.commands("destroy") == []
    assert backend.stacks["scratch"].config_value("rag:service") == {"replicas": 2}
    assert "rag:ephemeral" not in backend.stacks["scratch"].config


def test_up_validates_before_touching_pulumi(ctx: Context, backend: FakeBackend) -> None:
    with pytest.raises(UsageError):
        ephemeral.up(ctx, "prod", "24h")
    with pytest.raises(UsageError):
        ephemeral.up(ctx, "pr-1", "30d")
    assert backend.calls == []


# ---------------------------------------------------------------- the cap on live stacks


def _live(backend: FakeBackend, count: int, *, expires: str = "2026-03-02T00:00:00Z") -> None:
    for index in range(count):
        _ephemeral_stack(backend, f"pr-{100 + index}", expires)


def test_a_new_stack_past_the_cap_is_refused_naming_the_live_ones_before_anything_is_created(
    ctx: Context, backend: FakeBackend
) -> None:
    _live(backend, 4)
    _ephemeral_stack(backend, "pr-99", "2026-03-01T11:00:00Z")  # expired an hour ago, not reaped yet: counts
    backend.add_stack("scratch", config={}, outputs={})  # not ephemeral: does not count
    backend.add_stack("staging")

    with pytest.raises(ephemeral.TooManyStacksError) as caught:
        ephemeral.up(ctx, "pr-7", "24h")

    message = str(caught.value)
    assert "5 ephemeral stacks are live and the cap is 5" in message
    assert "pr-100 (owner alice, expires 2026-03-02T00:00:00Z)" in message
    assert "pr-99 (owner alice, expires 2026-03-01T11:00:00Z, EXPIRED)" in message
    assert "`ragops ephemeral reap` destroys the 1 expired one(s) (pr-99)" in message
    assert "scratch" not in message
    assert "pr-7" not in backend.stacks
    # Nothing created, configured or deployed.
    assert [c for c in backend.commands("stack") if c[1] in ("init", "rm")] == []
    assert [c for c in backend.commands("config") if c[1] in ("set", "set-all")] == []
    assert backend.commands("up") == []
    assert backend.commands("destroy") == []


def test_below_the_cap_a_new_stack_is_created_and_a_live_one_is_always_updated(
    ctx: Context, backend: FakeBackend
) -> None:
    _live(backend, 4)
    ephemeral.up(ctx, "pr-7", "24h")  # the fifth
    assert "pr-7" in backend.stacks
    # A new push to a PR whose stack is live updates it, at the cap or not.
    ephemeral.up(ctx, "pr-7", "2h")
    assert backend.stacks["pr-7"].config_value("rag:ephemeral")["expiresAt"] == "2026-03-01T14:00:00Z"
    with pytest.raises(ephemeral.TooManyStacksError):
        ephemeral.up(ctx, "pr-8", "24h")
    # Freeing a slot lets the next one in.
    ephemeral.destroy(ctx, "pr-100")
    ephemeral.up(ctx, "pr-8", "24h")
    assert "pr-8" in backend.stacks


class _Gated(FakePulumi):
    """One runner's CLI on the shared backend: its count after `stack init` waits at `barrier` until every runner
    has created its stack (two `ragops ephemeral up` started at the same moment)."""

    def __init__(self, backend: FakeBackend, barrier: threading.Barrier | None) -> None:
        super().__init__(backend)
        self.barrier = barrier
        self.created = False

    def run(self, args, cwd, additional_env, on_output=None, on_error=None):
        if self.created and self.barrier is not None and "ls" in args and "stack" in args:
            self.barrier.wait(timeout=30)
            self.barrier = None
        result = super().run(args, cwd, additional_env, on_output, on_error)
        if "init" in args and "stack" in args:
            self.created = True
        return result


def _runner(ctx: Context, backend: FakeBackend, tmp_path: Path, machine: str, **changes: object) -> Context:
    """Another machine's ragops: its own checkout (a copy of the project files), the same backend."""
    checkout = tmp_path / machine
    checkout.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml"):
        (checkout / name).write_bytes((ctx.work_dir / name).read_bytes())
    return dataclasses.replace(ctx, work_dir=checkout, **changes)


def test_two_simultaneous_creations_for_the_last_slot_one_takes_it_the_other_backs_out(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    _live(backend, 4)  # the cap is 5: one slot left
    barrier = threading.Barrier(2)
    second_done = threading.Event()
    first = _runner(
        ctx,
        backend,
        tmp_path,
        "runner-a",
        pulumi_command=_Gated(backend, barrier),
        sleep=lambda seconds: second_done.wait(timeout=30),  # until the other has backed out
    )
    second = _runner(ctx, backend, tmp_path, "runner-b", pulumi_command=_Gated(backend, barrier))
    outcome: dict[str, object] = {}

    def create(name: str, runner: Context, done: threading.Event | None) -> None:
        try:
            outcome[name] = ephemeral.up(runner, name, "24h")
        except BaseException as exc:
            outcome[name] = exc
        finally:
            if done is not None:
                done.set()

    threads = [
        threading.Thread(target=create, args=("pr-1", first, None)),
        threading.Thread(target=create, args=("pr-2", second, second_done)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    # Both passed the first count and created their stacks; both then saw each other, and the first name won.
    assert isinstance(outcome["pr-1"], ephemeral.EphemeralStack)
    assert isinstance(outcome["pr-2"], ephemeral.TooManyStacksError)
    assert "pr-1 is being created at the same moment" in str(outcome["pr-2"])
    assert "pr-2" not in backend.stacks  # backed out: removed, never configured nor deployed
    inits = sorted(c for c in backend.commands("stack") if c[1] == "init")
    assert inits == [["stack", "init", "pr-1"], ["stack", "init", "pr-2"]]
    writes = [
        c for c in backend.commands() if "pr-2" in c and (c[0] in ("up", "destroy") or c[1:2] == ["set-all"])
    ]
    assert writes == []
    live = ephemeral.live_stacks(ctx.workspace(), [s.name for s in ctx.workspace().list_stacks()], exclude="")
    assert len(live) == 5  # the cap, not one more


def test_a_stack_that_took_the_last_slot_first_is_never_displaced(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    """The first runner counted before the second created its stack, took the slot and is deploying (no record in
    the backend yet). The second, whose name sorts first, sees it, waits for it to back out in vain and backs out."""
    _live(backend, 4)
    inside = threading.Event()
    release = threading.Event()
    backend.during = lambda op, stack: (inside.set(), release.wait(timeout=30)) if op == "up" else None
    first = _runner(ctx, backend, tmp_path, "runner-a")
    waits: list[float] = []
    second = _runner(ctx, backend, tmp_path, "runner-b", sleep=waits.append)
    outcome: dict[str, object] = {}

    def create_first() -> None:
        try:
            outcome["pr-5"] = ephemeral.up(first, "pr-5", "24h")
        except BaseException as exc:
            outcome["pr-5"] = exc

    thread = threading.Thread(target=create_first)
    thread.start()
    assert inside.wait(timeout=30)  # pr-5 took the slot and its first update is running
    try:
        with pytest.raises(ephemeral.TooManyStacksError, match="pr-5 is being created"):
            ephemeral.up(second, "pr-0", "24h")
    finally:
        release.set()
        thread.join(timeout=60)
    assert waits == [ephemeral.CLAIM_WAIT] * ephemeral.CLAIM_RECOUNTS
    assert isinstance(outcome["pr-5"], ephemeral.EphemeralStack)
    assert "pr-0" not in backend.stacks
    assert "pr-5" in backend.stacks


@pytest.mark.parametrize(
    ("name", "live", "creating", "cap", "decision"),
    [
        ("pr-1", 4, ["pr-1"], 5, "take"),
        ("pr-1", 4, ["pr-1", "pr-2"], 5, "wait"),
        ("pr-2", 4, ["pr-1", "pr-2"], 5, "back out"),
        ("pr-2", 3, ["pr-1", "pr-2", "pr-3"], 5, "wait"),
        ("pr-3", 3, ["pr-1", "pr-2", "pr-3"], 5, "back out"),
        ("pr-1", 5, ["pr-1"], 5, "back out"),
        ("pr-1", 3, ["pr-1", "pr-2"], 5, "take"),
    ],
)
def test_the_slot_decision_is_the_same_on_every_runner(
    name: str, live: int, creating: list[str], cap: int, decision: str
) -> None:
    assert ephemeral.slot_decision(name, live, creating, cap) == decision


def test_the_cap_comes_from_the_environment_or_the_template_and_is_checked(
    ctx: Context, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert ephemeral.max_stacks() == 5  # the committed template
    monkeypatch.setenv(ephemeral.MAX_STACKS_ENV, "1")
    _live(backend, 1)
    with pytest.raises(ephemeral.TooManyStacksError, match="cap is 1"):
        ephemeral.up(ctx, "pr-7", "24h")
    for bad in ("0", "many", "-2"):
        monkeypatch.setenv(ephemeral.MAX_STACKS_ENV, bad)
        with pytest.raises(UsageError, match=r"\$RAGOPS_EPHEMERAL_MAX_STACKS must be a whole number"):
            ephemeral.max_stacks()
    monkeypatch.delenv(ephemeral.MAX_STACKS_ENV)
    template = tmp_path / "template.yaml"
    template.write_text("maxStacks: 2\n")
    assert ephemeral.max_stacks(template) == 2
    template.write_text("maxStacks: true\n")
    with pytest.raises(UsageError, match=r"maxStacks in template\.yaml must be a whole number"):
        ephemeral.max_stacks(template)


# ---------------------------------------------------------------- destroy


def test_destroy_is_destroy_then_rm_and_idempotent(ctx: Context, backend: FakeBackend) -> None:
    ephemeral.up(ctx, "pr-3", "24h")
    backend.calls.clear()

    assert ephemeral.destroy(ctx, "pr-3") is True
    # The record is checked first (it is in the local config here), then destroy, then rm.
    assert backend.commands() == [
        ["config", "--show-secrets", "--json", "--stack", "pr-3"],
        *_teardown_calls("pr-3"),
    ]
    assert "pr-3" not in backend.stacks

    backend.calls.clear()
    assert ephemeral.destroy(ctx, "pr-3") is False  # already gone: success, nothing else attempted
    assert backend.commands() == [["config", "--show-secrets", "--json", "--stack", "pr-3"]]
    backend.calls.clear()
    assert ephemeral.destroy(ctx, "pr-3", force=True) is False
    assert backend.commands() == [["stack", "select", "--stack", "pr-3"]]


def test_destroy_without_kubectl_is_refused_before_anything_is_deleted(
    ctx: Context, backend: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REVIEW_INFRA19 #7: a cloud stack's destroy deletes every namespace, then fails at the volumes-released
    delete (kubectl waits there for the released disks). Without kubectl it is refused first, in one line."""
    backend.add_stack("pr-31", config={"rag:ephemeral": {"name": "pr-31"}})
    urn = f"urn:pulumi:pr-31::rag::command:local:Command::{ephemeral.VOLUMES_RELEASED}"
    backend.stacks["pr-31"].urns.append(urn)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no kubectl
    with pytest.raises(
        WorkflowError, match=r"^kubectl not found on PATH: destroying stack 'pr-31' .*"
    ) as info:
        ephemeral.destroy(ctx, "pr-31")
    assert "\n" not in str(info.value)
    assert backend.commands("destroy") == []
    assert backend.stacks["pr-31"].resources == 12
    # With kubectl on PATH (a stub: the fake destroy never runs the delete script) it goes ahead.
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.write_text("#!/bin/sh\nexit 0\n")
    kubectl.chmod(0o755)
    assert ephemeral.destroy(ctx, "pr-31") is True
    assert "pr-31" not in backend.stacks


def test_destroy_without_kubectl_goes_ahead_on_a_stack_that_does_not_wait_for_volumes(
    ctx: Context, backend: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.add_stack("pr-32", config={"rag:ephemeral": {"name": "pr-32"}})  # an `existing` target's state
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ephemeral.destroy(ctx, "pr-32", force=True) is True


def test_destroy_refuses_a_stack_without_an_ephemeral_record_unless_forced(
    ctx: Context, backend: FakeBackend
) -> None:
    backend.add_stack("scratch", config={"rag:ephemeral": {}})
    with pytest.raises(ephemeral.NotEphemeralError, match="no rag:ephemeral record"):
        ephemeral.destroy(ctx, "scratch")
    assert backend.commands("destroy") == []
    assert backend.stacks["scratch"].resources == 12

    assert ephemeral.destroy(ctx, "scratch", force=True) is True
    assert "scratch" not in backend.stacks


def test_force_never_destroys_a_permanent_stack(ctx: Context, backend: FakeBackend) -> None:
    """EYES8 M2: `destroy --force --stack qa` destroyed and removed a committed fourth permanent stack."""
    backend.add_stack("qa", config={"rag:environment": "staging"})  # a committed Pulumi.qa.yaml
    for force in (False, True):
        with pytest.raises(ephemeral.PermanentStackError, match=r"Pulumi\.qa\.yaml .* no rag:ephemeral"):
            ephemeral.destroy(ctx, "qa", force=force)
    with pytest.raises(ephemeral.PermanentStackError):
        ephemeral.up(ctx, "qa", "24h")
    assert backend.calls == []
    assert backend.stacks["qa"].resources == 12

    # On a checkout without its file: its last update ran without a record (not `ephemeral up`), so still refused,
    # unless the name is CI's pr-<number>, which only PR stacks use.
    for name in ("qa", "pr-21"):
        backend.add_stack(name, config={"rag:environment": "dev"})
        (ctx.work_dir / f"Pulumi.{name}.yaml").unlink()
    with pytest.raises(ephemeral.NotEphemeralError, match="last updated without a rag:ephemeral record"):
        ephemeral.destroy(ctx, "qa", force=True)
    assert backend.commands("destroy") == []
    assert "qa" in backend.stacks
    assert ephemeral.destroy(ctx, "pr-21", force=True) is True
    assert "pr-21" not in backend.stacks


def test_destroy_reads_the_record_from_state_on_a_fresh_checkout(ctx: Context, backend: FakeBackend) -> None:
    record = {"name": "pr-77", "owner": "a", "expiresAt": "2026-03-09T00:00:00Z"}
    backend.add_stack("pr-77", config={}, outputs={"ephemeral": record})  # no local stack file values
    assert ephemeral.destroy(ctx, "pr-77") is True
    assert backend.commands()[:3] == [
        ["config", "--show-secrets", "--json", "--stack", "pr-77"],
        ["stack", "output", "--json", "--stack", "pr-77"],
        ["stack", "output", "--json", "--show-secrets", "--stack", "pr-77"],
    ]


def test_destroy_after_a_failed_teardown_finishes_the_job(ctx: Context, backend: FakeBackend) -> None:
    script = backend.script("pr-4")
    script.up_error = "error: update failed"
    script.destroy_error = "error: transient"
    with pytest.raises(CommandError):
        ephemeral.up(ctx, "pr-4", "24h")
    script.destroy_error = None

    assert ephemeral.destroy(ctx, "pr-4") is True
    assert "pr-4" not in backend.stacks


def test_destroy_of_a_locked_stack_is_refused(ctx: Context, backend: FakeBackend) -> None:
    ephemeral.up(ctx, "pr-6", "24h")
    backend.stacks["pr-6"].lock.acquire()
    try:
        with pytest.raises(WorkflowError, match="locked by another operation"):
            ephemeral.destroy(ctx, "pr-6")
    finally:
        backend.stacks["pr-6"].lock.release()
    assert "pr-6" in backend.stacks


def test_destroy_refuses_permanent_stacks(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("prod")
    with pytest.raises(UsageError, match="permanent"):
        ephemeral.destroy(ctx, "prod")
    assert backend.calls == []
    assert "prod" in backend.stacks


# ---------------------------------------------------------------- reap


def _ephemeral_stack(backend: FakeBackend, name: str, expires: str, *, in_config: bool = True) -> None:
    record = {"name": name, "owner": "alice", "expiresAt": expires}
    backend.add_stack(
        name,
        config={"rag:ephemeral": record} if in_config else {"rag:ephemeral": {}},
        outputs={"ephemeral": record},
    )


def _fleet(backend: FakeBackend) -> None:
    backend.add_stack("dev", config={"rag:ephemeral": {}})
    backend.add_stack("prod")
    _ephemeral_stack(backend, "pr-1", "2026-03-01T11:00:00Z")  # expired an hour ago
    _ephemeral_stack(backend, "pr-2", "2026-03-01T12:00:00Z")  # expires right now
    _ephemeral_stack(backend, "pr-3", "2026-03-01T12:00:01Z")  # still alive
    # Reaped from a fresh CI checkout: no local stack file, the record comes from the state's output.
    _ephemeral_stack(backend, "pr-4", "2026-02-28T00:00:00Z", in_config=False)
    backend.add_stack("scratch", config={}, outputs={})  # not ephemeral: never touched


def test_reap_destroys_expired_stacks_only(ctx: Context, backend: FakeBackend) -> None:
    _fleet(backend)

    report = ephemeral.reap(ctx)

    assert sorted(report.destroyed) == ["pr-1", "pr-2", "pr-4"]
    assert report.kept == ["pr-3"]
    assert report.skipped == {
        "scratch": "not an ephemeral stack (no rag:ephemeral record in config, outputs or history)"
    }
    assert report.failed == {}
    assert sorted(backend.stacks) == ["dev", "pr-3", "prod", "scratch"]
    # Permanent stacks are not even read.
    assert not [c for c in backend.commands() if c[-1] in ("dev", "prod")]
    assert backend.commands("destroy")
    assert all(c[-1] in ("pr-1", "pr-2", "pr-4") for c in backend.commands("destroy"))


def test_reap_uses_the_injected_now(ctx: Context, backend: FakeBackend) -> None:
    _fleet(backend)
    report = ephemeral.reap(ctx, now=NOW - timedelta(days=2))
    assert report.destroyed == []
    assert sorted(report.kept) == ["pr-1", "pr-2", "pr-3", "pr-4"]


def test_reap_is_idempotent(ctx: Context, backend: FakeBackend) -> None:
    _fleet(backend)
    first = ephemeral.reap(ctx)
    backend.calls.clear()
    second = ephemeral.reap(ctx)
    assert sorted(first.destroyed) == ["pr-1", "pr-2", "pr-4"]
    assert second.destroyed == []
    assert second.failed == {}
    assert backend.commands("destroy") == []
    assert sorted(backend.stacks) == ["dev", "pr-3", "prod", "scratch"]


def test_reap_skips_unreadable_expiry_and_reports_failures(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("pr-8", config={"rag:ephemeral": {"name": "pr-8", "expiresAt": "tomorrow"}})
    backend.add_stack("pr-9", config={"rag:ephemeral": {"name": "pr-9", "owner": "x"}})
    _ephemeral_stack(backend, "pr-10", "2026-01-01T00:00:00Z")
    backend.script("pr-10").destroy_error = "error: cloud says no"

    report = ephemeral.reap(ctx)

    assert report.skipped["pr-8"].startswith("unreadable expiry")
    assert report.skipped["pr-9"].startswith("unreadable expiry")
    assert "cloud says no" in report.failed["pr-10"]
    assert {"pr-8", "pr-9", "pr-10"} <= set(backend.stacks)


def test_two_concurrent_reapers_destroy_each_stack_once(ctx: Context, backend: FakeBackend) -> None:
    _fleet(backend)
    b_finished = threading.Event()
    first_destroy = threading.Event()
    errors: list[BaseException] = []

    def during(op: str, stack: str) -> None:
        # Reaper A, holding pr-1's lock, waits until reaper B has run its whole pass.
        if op == "destroy" and stack == "pr-1" and not first_destroy.is_set():
            first_destroy.set()
            assert b_finished.wait(timeout=30), "reaper B never finished"

    backend.during = during
    reports: dict[str, ephemeral.ReapReport] = {}

    def run(label: str) -> None:
        try:
            reports[label] = ephemeral.reap(
                Context(work_dir=ctx.work_dir, pulumi_command=backend.command(), clock=lambda: NOW)
            )
        except BaseException as exc:
            errors.append(exc)
        finally:
            if label == "B":
                b_finished.set()

    a = threading.Thread(target=run, args=("A",))
    a.start()
    assert first_destroy.wait(timeout=30)  # A holds pr-1 before B starts
    b = threading.Thread(target=run, args=("B",))
    b.start()
    b.join(timeout=60)
    a.join(timeout=60)

    assert errors == []
    ra, rb = reports["A"], reports["B"]
    assert ra.failed == {}
    assert rb.failed == {}
    assert rb.skipped["pr-1"] == "locked by another operation (another reaper?)"
    # Every expired stack destroyed exactly once between the two; B took the ones A had not reached.
    assert sorted(ra.destroyed + rb.destroyed) == ["pr-1", "pr-2", "pr-4"]
    assert "pr-1" in ra.destroyed
    destroys = [c[-1] for c in backend.commands("destroy")]
    assert sorted(s for s in destroys) == sorted(
        ["pr-1", "pr-1", "pr-2", "pr-4"]
    )  # B's locked attempt on pr-1
    # A reached pr-2/pr-4 after B had removed them: skipped as already removed, not an error.
    for name in ("pr-2", "pr-4"):
        assert name in rb.destroyed
        assert ra.skipped[name] == "already removed"
    assert sorted(backend.stacks) == ["dev", "pr-3", "prod", "scratch"]


# ---------------------------------------------------------------- the tools the PR stack's `up` runs here


def _template(tmp_path: Path, provider: str) -> Path:
    """A template without a base (nothing demands a shared cluster) whose PR stacks run on `provider`."""
    template = tmp_path / f"ephemeral-{provider}.template.yaml"
    template.write_text(
        "domain: preview.example.com\n"
        "config:\n"
        "  rag:environment: dev\n"
        "  rag:namespace: '{name}'\n"
        f"  rag:cluster:\n    provider: {provider}\n"
    )
    return template


def test_a_pr_stack_that_builds_on_eks_is_refused_before_anything_is_created_without_the_registry_tools(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    from infra.components.image import check_registry_tools

    looked_up: list[str] = []
    ctx.check_registry_tools = lambda p: check_registry_tools(
        p, which=lambda n: looked_up.append(n) or (None if n == "aws" else n)
    )
    with pytest.raises(
        WorkflowError, match=r"Cannot update pr-9: the update tags the image it builds .* aws is not"
    ):
        ephemeral.up(ctx, "pr-9", "24h", template=_template(tmp_path, "eks"))
    assert looked_up == ["skopeo", "aws"]
    assert "pr-9" not in backend.stacks
    assert backend.commands("up") == []
    # With the tools it goes ahead.
    ctx.check_registry_tools = lambda p: check_registry_tools(p, which=lambda n: n)
    ephemeral.up(ctx, "pr-9", "24h", template=_template(tmp_path, "eks"))
    assert len(backend.commands("up")) == 1


def test_a_pr_stack_on_an_existing_cluster_tags_nothing_and_checks_no_registry_tool(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    looked_up: list[str] = []
    ctx.check_registry_tools = looked_up.append
    ephemeral.up(ctx, "pr-9", "24h", template=_template(tmp_path, "existing"))
    ephemeral.up(ctx, "pr-10", "24h")  # the committed template: dev's shared cluster
    assert looked_up == []
