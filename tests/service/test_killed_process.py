"""`kill -9` of `python -m service` after the extraction pool started: multiprocessing's resource tracker, a
process of its own, unlinks the pool's named semaphores, and says nothing on the service's stderr (EYES7 L4:
"resource_tracker: There appear to be 2 leaked semaphore objects to clean up at shutdown" after `make serve`)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.service.support import make_pdf
from tests.support.processes import _stop, start_api

BOUND_SECONDS = 60.0  # bounds a tracker that never exits; asserts nothing about time


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie nobody reaps (a container's init) has exited too


def _semaphores() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("sem.mp-*")}


def test_kill_9_after_extractions_leaves_no_semaphore_and_no_leak_warning(tmp_path: Path) -> None:
    # /dev/shm is the machine's: semaphores other processes made (or leaked: any process killed with -9 before
    # its tracker ran) are there before this service starts, and are not its to clean up.
    others = _semaphores()
    started = start_api(tmp_path, data_dir=str(tmp_path / "data"), auth_disabled="true", environment="test")
    try:
        pdf = make_pdf(["A quarterly report about the harbour."])
        stored = httpx.post(
            f"{started.url}/v1/documents",
            files={"file": ("report.pdf", pdf, "application/pdf")},
            data={"document_id": "report"},
            timeout=120,
        )
        assert stored.status_code == 201, stored.text  # extracted in the worker pool: the tracker runs
        trackers = [
            pid
            for pid, cmdline in children(started.proc.pid).items()
            if "resource_tracker import main" in cmdline
        ]
        assert len(trackers) == 1, children(started.proc.pid)
        semaphores = _semaphores() - others  # the service's own (its extraction pool's)
        assert semaphores, "the extraction pool made no semaphore: nothing is tested"
        os.kill(started.proc.pid, signal.SIGKILL)
        started.proc.wait(timeout=60)
        deadline = time.monotonic() + BOUND_SECONDS
        while not exited(trackers[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exited(trackers[0]), "the resource tracker outlived its parent"
    finally:
        _stop(started.proc)
    log = started.log.read_text()
    assert "leaked semaphore" not in log, log
    assert "resource_tracker" not in log, log
    # The clean-up itself still happened: none of the semaphores that existed before the kill is left.
    assert not semaphores & _semaphores()
