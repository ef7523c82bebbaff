"""A hard stop for a test that keeps hanging after pytest-timeout failed it (loaded by tests/conftest.py).

pytest-timeout (pyproject ``timeout``, signal method) fails a hung test once: its alarm raises in the main thread,
and it stops its timer as soon as a phase of the test fails (its ``pytest_exception_interact``; pytest's own
faulthandler timeout does the same). Whatever the teardown does next is unbounded: an asyncio test whose worker
thread is blocked hangs in the event loop's close (``shutdown_default_executor`` joins that thread), a fixture
waits on a peer that died, a plain assertion failure is followed by a teardown that blocks. CI then waits for its
own job limit. So each test also arms faulthandler's watchdog (a C thread: it fires even while the main thread
holds the GIL in native code) for the test's timeout plus ``timeout_backstop_grace`` seconds, and keeps it armed
through a failure: when the test is still running then, every thread's stack goes to stderr and the run exits
with status 1 instead of hanging.
"""

from __future__ import annotations

import faulthandler
import os
import time
from collections.abc import Generator
from typing import Any

import pytest

GRACE_SECONDS = 120.0
_DEADLINE = pytest.StashKey[float]()
_STDERR = pytest.StashKey[int]()
_debugging = False  # a debugger session (pdb.set_trace, --pdb) may take as long as it likes


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "timeout_backstop_grace",
        "Seconds after pytest-timeout's timeout at which a test still running ends the run with every stack",
        default=str(GRACE_SECONDS),
    )


def pytest_configure(config: pytest.Config) -> None:
    # The real stderr: capture is suspended while plugins configure, and the dump must outlive the capture.
    config.stash[_STDERR] = os.dup(2)


def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.cancel_dump_traceback_later()
    fd = config.stash.get(_STDERR, None)
    if fd is not None:
        os.close(fd)


def _arm(item: pytest.Item) -> None:
    deadline = item.stash.get(_DEADLINE, None)
    if deadline is None or _debugging:
        return
    faulthandler.dump_traceback_later(
        max(deadline - time.monotonic(), 0.001), exit=True, file=item.config.stash[_STDERR]
    )


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Called by pytest-timeout with the test's effective timeout (ini, --timeout or its marker); returns
    None so that pytest-timeout's own timer is set too."""
    grace = float(item.config.getini("timeout_backstop_grace"))
    item.stash[_DEADLINE] = time.monotonic() + float(settings.timeout) + grace
    _arm(item)


@pytest.hookimpl(trylast=True)
def pytest_exception_interact(node: pytest.Item | pytest.Collector) -> None:
    # pytest's faulthandler plugin cancelled the watchdog (tryfirst): arm it again for the rest of the
    # deadline, unless a debugger session is what follows.
    if isinstance(node, pytest.Item) and not node.config.getvalue("usepdb"):
        _arm(node)


def pytest_enter_pdb() -> None:
    global _debugging
    _debugging = True
    faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        if item.stash.get(_DEADLINE, None) is not None:
            faulthandler.cancel_dump_traceback_later()
