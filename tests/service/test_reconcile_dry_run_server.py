"""`reconcile --dry-run` against a Qdrant server (QDRANT_URL) opens the real store and registry in place (only the
embedded store is copied): it used to create a missing collection, apply the memory layout and payload indexes,
and record an index pointer in a registry without one. Now a dry run only reads: a missing collection or a
registry without a served index is refused in one line, and the server sees no request but reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.app.ingest.index import IndexConfig
from service.app.store.registry import DocumentRegistry

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVED = "rag__served__384"


@contextmanager
def fake_qdrant() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A Qdrant that holds no collection and records every request (method, path); writes answer as accepted."""
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            path = self.path.split("?")[0]
            if path == "/":
                result: object = {"title": "qdrant", "version": "1.15.0"}
                body = result
            else:
                if path == "/collections":
                    result = {"collections": []}
                elif path.endswith("/exists"):
                    result = {"exists": False}
                else:
                    result = True
                body = {"result": result, "status": "ok", "time": 0.0}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def registry_at(data: Path, *, pointer: bool) -> Path:
    data.mkdir()
    registry = DocumentRegistry(f"sqlite:///{data / 'registry.db'}")
    try:
        registry.migrate()
        if pointer:
            config = IndexConfig("sentence-transformers/all-MiniLM-L6-v2", 512, 64).as_dict()
            registry.switch_index(SERVED, config, expected=None)
    finally:
        registry.close()
    return data / "registry.db"


def dry_run(data: Path, qdrant_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL")},
        "ENVIRONMENT": "test",
        "DATA_DIR": str(data),
        "QDRANT_URL": qdrant_url,
        "GC_ENABLED": "false",
        "LOG_JSON": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "service.reconcile", "--dry-run"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("pointer", "says"),
    [(True, "does not exist on the Qdrant server (QDRANT_URL)"), (False, "records no served index yet")],
    ids=["collection missing", "no served index"],
)
def test_a_dry_run_against_a_qdrant_server_only_reads(tmp_path: Path, pointer: bool, says: str) -> None:
    path = registry_at(tmp_path / "data", pointer=pointer)
    before = path.read_bytes()
    with fake_qdrant() as (url, seen):
        result = dry_run(tmp_path / "data", url)
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert line.startswith("reconcile: error: "), line
    assert says in line, line
    assert "dry run changes nothing" in line, line
    assert [request for request in seen if request[0] != "GET"] == []  # it used to PUT the collection
    assert path.read_bytes() == before  # nor record an index pointer
