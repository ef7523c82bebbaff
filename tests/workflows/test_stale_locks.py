"""A cancelled or timed-out PR job leaves a backend lock: it is recognised as stale and cancelled, never a live one.

GitHub cancels a step with SIGINT, SIGTERM 7.5 s later and kills its process tree 2.5 s after that (Workflow
cancellation reference), so a teardown running in the cancelled step dies holding the self-managed backend's lock
file (pulumi/pulumi pkg/backend/diy/lock.go); every later update of the stack then fails "currently locked". The
fake CLI keeps lock files the way that backend does: a killed destroy leaves its file, `pulumi cancel` deletes them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pulumi.automation.errors import CommandError

from infra.workflows import ephemeral
from infra.workflows.stacks import Context, WorkflowError, rfc3339
from tests.workflows.conftest import NOW
from tests.workflows.fake_pulumi import FakeBackend

UPSTREAM_ERROR = (
    "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete "
    "the lock file with `pulumi cancel`.\n  s3://state/.pulumi/locks/organization/rag/pr-7/"
    "0d9a5c1e-7b1f-4a8e-9f55-3b1d2f0c6a11.json: created by runner@fv-az123-456 (pid 2817) at 2026-03-01T12:00:00Z"
)


def dead_pid() -> int:
    """The pid of a process that has exited (a killed CI step's pulumi)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def checkout_at(tmp_path: Path, backend: FakeBackend, name: str, hours: float) -> Context:
    """A fresh CI checkout (no Pulumi.pr-7.yaml) whose clock is `hours` after NOW."""
    checkout = tmp_path / name
    checkout.mkdir()
    (checkout / "Pulumi.yaml").write_text("name: rag\nruntime: python\nmain: infra/\n")
    return Context(
        work_dir=checkout, pulumi_command=backend.command(), clock=lambda: NOW + timedelta(hours=hours)
    )


def failed_first_up_killed_mid_teardown(ctx: Context, backend: FakeBackend, host: str, pid: int) -> None:
    """`ephemeral up` whose first `up` fails and whose in-process teardown is killed (the job was cancelled)."""
    backend.clock = lambda: NOW
    script = backend.script("pr-7")
    script.up_error = "error: the Gateway never became ready"
    script.destroy_killed = (host, pid)
    with pytest.raises(CommandError) as info:
        ephemeral.up(ctx, "pr-7", "5m")
    assert "Teardown of ephemeral stack 'pr-7' also failed" in " ".join(info.value.__notes__)
    script.destroy_killed = None
    assert backend.stacks["pr-7"].lock_files == [("runner", host, pid, rfc3339(NOW))]
    assert backend.stacks["pr-7"].resources  # nothing was destroyed


def test_the_upstream_lock_line_is_parsed() -> None:
    assert ephemeral.parse_locks(UPSTREAM_ERROR) == [
        ephemeral.BackendLock("runner", "fv-az123-456", 2817, NOW)
    ]
    # Pulumi Cloud's conflict names no lock: never judged stale (that backend ends its own leases).
    assert ephemeral.parse_locks("[409] Conflict: Another update is currently in progress.") == []
    assert ephemeral.stale_lock_reason([], NOW + timedelta(days=30)) is None


def test_the_teardown_step_after_a_cancelled_job_cancels_the_dead_lock_and_destroys(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    failed_first_up_killed_mid_teardown(ctx, backend, socket.gethostname(), dead_pid())

    # Without --force nothing is cancelled: the error names the holder and how it gets cleaned up.
    with pytest.raises(
        WorkflowError, match=r"locked by another operation \(runner@.* since 2026-03-01T12:00:00Z\)"
    ):
        ephemeral.destroy(ctx, "pr-7")
    assert backend.commands("cancel") == []

    # pr.yml's `if: cancelled() || failure()` step: same runner, a minute later, the dead pid's lock is stale.
    step = Context(
        work_dir=ctx.work_dir, pulumi_command=backend.command(), clock=lambda: NOW + timedelta(minutes=1)
    )
    assert ephemeral.destroy(step, "pr-7", force=True) is True
    assert "pr-7" not in backend.stacks
    assert backend.commands("cancel") == [["cancel", "--yes", "--stack", "pr-7"]]


def test_the_reaper_finds_a_stack_whose_first_up_failed_and_cancels_its_lock_once_stale(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    # Killed on another runner: only the lock's age says it is dead.
    failed_first_up_killed_mid_teardown(ctx, backend, "fv-az999-1", 2817)
    assert backend.stacks["pr-7"].outputs == {}  # no completed update: no `ephemeral` output

    # Three hours later (expired, lock younger than twice the job timeout): found through the update history, skipped.
    early = ephemeral.reap(checkout_at(tmp_path, backend, "early", 3))
    assert early.skipped == {"pr-7": "locked by another operation (another reaper?)"}
    assert backend.commands("cancel") == []
    assert "pr-7" in backend.stacks

    late = ephemeral.reap(checkout_at(tmp_path, backend, "late", 5))
    assert late.destroyed == ["pr-7"]
    assert late.failed == {}
    assert len(backend.commands("cancel")) == 1
    assert "pr-7" not in backend.stacks


def test_a_lock_of_a_live_process_on_this_machine_is_never_cancelled(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    ephemeral.up(ctx, "pr-7", "5m")
    # A destroy of this machine that has been running for a day (a hung kubectl wait, say): alive, so kept.
    old = rfc3339(NOW - timedelta(days=1))
    backend.stacks["pr-7"].lock_files.append(("runner", socket.gethostname(), os.getpid(), old))
    report = ephemeral.reap(checkout_at(tmp_path, backend, "reaper", 5))
    assert report.skipped == {"pr-7": "locked by another operation (another reaper?)"}
    with pytest.raises(WorkflowError, match="locked by another operation"):
        ephemeral.destroy(ctx, "pr-7", force=True)
    assert backend.commands("cancel") == []
    assert "pr-7" in backend.stacks
