"""The hang backstop (tests/support/hang_backstop.py) in a pytest run of its own: a test that pytest-timeout failed,
or that failed by itself, and whose teardown then blocks, ends the run with its stack instead of hanging it.

Both cases hang forever without the backstop: pytest-timeout stops its timer once a phase fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

INI = """[pytest]
timeout = 2
timeout_backstop_grace = 1
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

TESTS = """
import asyncio
import threading

import pytest


def test_ok():
    pass


@pytest.fixture
def blocked_teardown():
    yield
    threading.Event().wait()  # a teardown waiting for a peer that never answers


def test_fails_then_its_teardown_blocks(blocked_teardown):
    assert False, "an ordinary failure"


async def test_blocked_in_a_worker_thread():
    # pytest-timeout fails it; closing the loop then joins the blocked worker thread
    await asyncio.to_thread(threading.Event().wait)
"""


def _run(tmp_path: Path, test: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_hangs.py").write_text(TESTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_ADDOPTS", None)
    plugins = ["-p", "no:cacheprovider", "-p", "tests.support.hang_backstop"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-v", *plugins, "-k", f"test_ok or {test}", "test_hangs.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # bounds this test if the backstop does not work (without it: forever)
    )


@pytest.mark.parametrize("test", ["test_fails_then_its_teardown_blocks", "test_blocked_in_a_worker_thread"])
def test_a_teardown_that_blocks_after_a_failure_ends_the_run_with_its_stack(
    tmp_path: Path, test: str
) -> None:
    result = _run(tmp_path, test)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "test_hangs.py::test_ok PASSED" in out  # a test before it ran as usual
    assert f"test_hangs.py::{test} FAILED" in out
    assert "Timeout (0:00:0" in out  # faulthandler's dump of every thread, then the exit
    assert "most recent call first" in out
    if test == "test_fails_then_its_teardown_blocks":
        assert "line 15 in blocked_teardown" in out  # the blocked teardown's frame
    else:
        assert "in _do_shutdown" in out  # the loop's close joining the blocked worker
    assert " passed" not in out.splitlines()[-1]  # no summary: the run ended there
