"""A refused start removes the SQLite registry it created only while no process has served it: the creating start
marks the file (its user_version) and every process clears the mark before it serves, in one transaction with
the check, as the removal checks and replaces the mark in one transaction. Real processes throughout: the
service, and helper processes standing for a second start sharing the file."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from service.app.store.registry import open_registry
from tests.service.prod_support import API_KEYS, KEY_A, bearer
from tests.support.processes import ROOT, _stop, service_env, start_api
from tests.support.servers import _wait_until, free_port

# `python -m service` whose uvicorn serves until SIGUSR1, then raises: a process that served and then exits
# with an exception (its exit path is the refused start's one).
SERVES_THEN_RAISES = """
import signal
import uvicorn

def run(app, **options):
    server = uvicorn.Server(uvicorn.Config(app, **options))
    signal.signal(signal.SIGUSR1, lambda *_: setattr(server, "should_exit", True))
    server.run()
    raise RuntimeError("a failure after serving")

uvicorn.run = run
from service.__main__ import main
main()
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
