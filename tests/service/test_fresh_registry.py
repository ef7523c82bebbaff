"""A refused start removes the SQLite registry it created only while no process has served it: the creating start
marks the file (its user_version) and every process clears the mark before it serves, in one transaction with
the check, as the removal checks and replaces the mark in one transaction. Real processes throughout: the
service, and helper processes standing for a second start sharing the file."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

import service.__main__ as service_main
from service.__main__ import registry_served_refusal
from service.app.store.registry import open_registry
from tests.service.prod_support import API_KEYS, KEY_A, bearer
from tests.support.processes import ROOT, _stop, service_env, start_api
from tests.support.servers import _wait_until, free_port

# `python -m service` whose uvicorn serves until SIGUSR1, then raises: a process that served and then exits
# with an exception (its exit path is the refused start's one).
SERVES_THEN_RAISES = """
import signal
import uvicorn

import service.__main__

def run_server(app, listener, options):
    server = uvicorn.Server(uvicorn.Config(app, **options))
    signal.signal(signal.SIGUSR1, lambda *_: setattr(server, "should_exit", True))
    server.run(sockets=[listener])
    raise RuntimeError("a failure after serving")

service.__main__.run_server = run_server
service.__main__.main()
"""

# A second process beside the service: creates the registry as a start does, then removes it as a refused
# start does when told to (stdin), printing what it did.
CREATES_THEN_UNDOES = """
import sys
from pathlib import Path
from service.__main__ import create_fresh_registry, undo_fresh_registry

path = Path(sys.argv[1])
token = create_fresh_registry(path)
print("created" if token else "not created", flush=True)
sys.stdin.readline()
undo_fresh_registry(path, False, token)
print("removed" if not path.exists() else "kept", flush=True)
"""

# A start that opened (and migrated) the registry and has not served yet; told to (stdin), it does what the
# service does just before it serves, and prints the refusal (or "serves").
OPENS_THEN_SERVES = """
import sys
from service.__main__ import registry_served_refusal
from service.app.store.registry import open_registry

url = sys.argv[1]
registry = open_registry(url)
print("opened", flush=True)
sys.stdin.readline()
print(registry_served_refusal(url) or "serves", flush=True)
registry.close()
"""


def helper(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=service_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def tell(proc: subprocess.Popen[str]) -> str:
    """Let the helper go on; its next line."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_a_registry_that_served_and_was_emptied_survives_an_exit_with_an_exception(tmp_path: Path) -> None:
    # The removal checked documents and jobs only: a fresh registry that served, was emptied, and whose process
    # then exited with an exception was removed with its index pointer.
    data = tmp_path / "data"
    port = free_port()
    env = service_env(
        data_dir=str(data), api_keys=API_KEYS, environment="test", host="127.0.0.1", port=str(port)
    )
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVES_THEN_RAISES],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_until(ready, "the API process", proc, log)
        put = httpx.put(
            f"{url}/v1/documents/d1", json={"text": "one text"}, headers=bearer(KEY_A), timeout=60
        )
        assert put.status_code == 201, put.text
        gone = httpx.delete(f"{url}/v1/documents/d1", headers=bearer(KEY_A), timeout=60)
        assert gone.status_code == 204, gone.text
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=120) == 1, log.read_text()
    finally:
        _stop(proc)
    assert "a failure after serving" in log.read_text()
    registry = open_registry(f"sqlite:///{data / 'registry.db'}")
    try:
        assert registry.index_pointer() is not None  # the next start finds its collection
    finally:
        registry.close()


def test_a_refused_start_keeps_the_registry_a_second_process_served_meanwhile(tmp_path: Path) -> None:
    # The refused start created the registry; before it removes it, another process opened the same file and
    # served (here: wrote a document and deleted it again). The removal must leave the file to it.
    database = tmp_path / "registry.db"
    creator = helper(CREATES_THEN_UNDOES, str(database))
    try:
        assert creator.stdout is not None
        assert creator.stdout.readline().strip() == "created"
        settings = {
            "data_dir": str(tmp_path / "data"),
            "database_url": f"sqlite:///{database}",
            "api_keys": API_KEYS,
            "environment": "test",
        }
        started = start_api(tmp_path, **settings)
        try:
            for document_id in ("d1", "d2"):
                put = httpx.put(
                    f"{started.url}/v1/documents/{document_id}",
                    json={"text": f"text {document_id}"},
                    headers=bearer(KEY_A),
                    timeout=60,
                )
                assert put.status_code == 201, put.text
            assert httpx.delete(f"{started.url}/v1/documents/d1", headers=bearer(KEY_A)).status_code == 204
            assert tell(creator) == "kept"
            assert creator.wait(timeout=60) == 0
            after = httpx.put(
                f"{started.url}/v1/documents/d3", json={"text": "text d3"}, headers=bearer(KEY_A), timeout=60
            )
            assert after.status_code == 201, after.text
        finally:
            _stop(started.proc)
        registry = open_registry(f"sqlite:///{database}")
        try:
            assert sorted(r.document_id for r in registry.list("tenant-a", limit=10).items) == ["d2", "d3"]
        finally:
            registry.close()
    finally:
        _stop(creator)


def test_a_start_that_opened_a_registry_a_refused_start_removed_does_not_serve_on_it(tmp_path: Path) -> None:
    # The other order: the second start opened the file, then the refused start removed it (the unlinked file
    # stays open in the second process). Serving would write to a file no later start would ever see.
    database = tmp_path / "registry.db"
    url = f"sqlite:///{database}"
    creator = helper(CREATES_THEN_UNDOES, str(database))
    opener = None
    try:
        assert creator.stdout is not None
        assert creator.stdout.readline().strip() == "created"
        opener = helper(OPENS_THEN_SERVES, url)
        assert opener.stdout is not None
        assert opener.stdout.readline().strip() == "opened"
        assert tell(creator) == "removed"
        refusal = tell(opener)
        assert "removed by a refused start of another process" in refusal, refusal
        assert str(database) in refusal
        assert opener.wait(timeout=60) == 0
    finally:
        _stop(creator)
        if opener is not None:
            _stop(opener)
    assert not database.exists()


# `python -m service` whose bind probe (before the fix: port_in_use, separate from uvicorn's own bind after the
# start-up) found the port free: the test's socket takes it "in between". After the fix the bind that finds it
# taken is the one the service serves on, before anything is opened, so patching the probe changes nothing.
PROBE_SAW_A_FREE_PORT = """
import service.__main__
if hasattr(service.__main__, "port_in_use"):
    service.__main__.port_in_use = lambda host, port: None
service.__main__.main()
"""


def test_a_port_taken_after_the_probe_leaves_no_registry_behind(tmp_path: Path) -> None:
    # The fresh mark used to be cleared when the lifespan completed, before uvicorn bound the port: a start that
    # then failed to bind kept the registry it had created and migrated ("nothing changed" broken).
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(
            data_dir=str(data), api_keys=API_KEYS, environment="test", host="127.0.0.1", port=str(port)
        )
        done = subprocess.run(
            [sys.executable, "-c", PROBE_SAW_A_FREE_PORT],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode != 0, done.stdout + done.stderr
    assert not (data / "registry.db").exists(), sorted(path.name for path in data.iterdir())
    assert f"cannot listen on 127.0.0.1:{port}" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "Application startup" not in done.stdout + done.stderr  # refused before the app was built


def test_the_check_before_serving_takes_no_write_lock_on_a_registry_that_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It ran BEGIN IMMEDIATE (waiting up to 30 s for another process's writer) at every SQLite start; a
    # registry that served carries 0 for good, which a plain read tells.
    database = tmp_path / "registry.db"
    url = f"sqlite:///{database}"
    open_registry(url).close()
    assert registry_served_refusal(url) is None
    writer = sqlite3.connect(database, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process's write transaction in flight
        monkeypatch.setattr(
            service_main,
            "_sqlite_transaction",
            lambda path: pytest.fail("took the write lock of a served registry"),
        )
        assert registry_served_refusal(url) is None
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_the_check_before_serving_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def check(url: str) -> None:
        seen.append(threading.get_ident())

    monkeypatch.setattr(service_main, "registry_served_refusal", check)

    async def app(scope: dict, receive: object, send) -> None:
        await send({"type": "lifespan.startup.complete"})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await service_main.StartupGuard(app, "sqlite:///unused.db")({"type": "lifespan"}, None, send)
    assert sent == [{"type": "lifespan.startup.complete"}]
    assert len(seen) == 1
    assert seen[0] != loop_thread
