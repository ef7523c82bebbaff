"""`--help` of the commands configured by the environment only (EYES9 L1): `python -m service --help` started
the server, `python -m service.tools.serve_prod --help` started Postgres, Redis, the API and the worker, and
`python -m service.worker --help` failed on a missing REDIS_URL. Each now prints its usage and exits 0 without
starting anything, and refuses any other argument (exit 2)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
#: A command that starts serving instead of printing its usage runs into this and fails the test.
TIMEOUT_SECONDS = 120
#: After the timeout: how long the command's group has to stop what it started after a SIGTERM, before SIGKILL.
GRACE_SECONDS = 60


class StartedInsteadOfExiting(AssertionError):
    """The command was still running at the timeout; its process group was stopped (output attached)."""


def run_bounded(
    argv: list[str], env: dict[str, str], *, timeout: float = TIMEOUT_SECONDS
) -> subprocess.CompletedProcess[str]:
    """``argv`` in a process group of its own. Past ``timeout`` the whole group is stopped, SIGTERM first (so
    serve_prod stops and removes the Postgres and Redis it started, as on Ctrl-C), SIGKILL after GRACE_SECONDS,
    and the test fails: a regressed ``--help`` must not leave servers behind."""
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        try:  # bounded too: a process that left the group (setsid) may still hold the pipes
            stdout, stderr = proc.communicate(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            stdout, stderr = "(still held open)", ""
        raise StartedInsteadOfExiting(
            f"{argv} still ran after {timeout:g} s; stopped. stdout: {stdout[-2000:]} stderr: {stderr[-2000:]}"
        ) from None
    finally:
        if proc.poll() is None:  # anything else that went wrong in between (KeyboardInterrupt, ...)
            _stop_group(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    for signum, wait in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if signum == signal.SIGKILL:
            return
        # the leader is gone; SIGKILL what it left in its group (the leader's pid still names the group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def run(module: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DATA_DIR": str(tmp_path / "data"),
        "AUTH_DISABLED": "true",
        # whatever a command that starts by mistake creates (serve_prod's throwaway servers) lands in tmp_path
        "TMPDIR": str(tmp_path),
    }
    for name in ("REDIS_URL", "DATABASE_URL", "QDRANT_URL"):
        env.pop(name, None)
    return run_bounded([sys.executable, "-m", module, *args], env)


@pytest.mark.parametrize(
    ("module", "mentions"),
    [
        ("service", "API_KEYS_FILE"),
        ("service.worker", "REDIS_URL"),
        ("service.tools.serve_prod", "API_KEYS"),
    ],
)
def test_help_prints_the_usage_and_starts_nothing(module: str, mentions: str, tmp_path: Path) -> None:
    done = run(module, "--help", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module}"), done.stdout
    assert mentions in " ".join(done.stdout.split())
    assert "error" not in done.stderr.lower(), done.stderr
    assert not (tmp_path / "data").exists()  # nothing was opened or created


@pytest.mark.parametrize("module", ["service", "service.worker", "service.tools.serve_prod"])
def test_an_unknown_argument_is_a_usage_error(module: str, tmp_path: Path) -> None:
    done = run(module, "--port", "9000", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "unrecognized arguments: --port 9000" in done.stderr
    assert not (tmp_path / "data").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie waits for its parent to reap it: nothing left running


def test_a_command_that_keeps_running_is_stopped_with_everything_it_started(tmp_path: Path) -> None:
    # What a regressed --help of serve_prod would do: start children (Postgres, Redis) and keep serving. The
    # runner must fail the test AND leave nothing running: here a child that ignores SIGTERM, so only the
    # group's SIGKILL after the leader exited reaches it.
    pid_file = tmp_path / "child.pid"
    script = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-S', '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(3600)'], "
        "stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"  # the child ignores SIGTERM from here on
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('serving', flush=True)\n"
        "time.sleep(3600)\n"
    )
    with pytest.raises(StartedInsteadOfExiting, match="serving"):
        # 20 s: long enough for the script to start its child on a loaded machine (it never exits, so the
        # outcome does not depend on the value); the pid file below proves the child was running.
        run_bounded([sys.executable, "-S", "-c", script], dict(os.environ), timeout=20)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:  # SIGKILL is delivered asynchronously
        time.sleep(0.05)
    assert not _alive(child), f"the child {child} of the stopped command still runs"
