"""OpenAI-compatible servers for the answer tests, each its own process on a free loopback port.

`openai_test_server()` runs tests/support/openai_server.py (scriptable: 429, 5xx, delays, endless streams).
Nothing here skips: a server that does not come up is an error with its log.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import _stop, _wait_until, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ScriptedServer:
    """Handle on a running tests/support/openai_server.py process."""

    root: str  # http://127.0.0.1:port

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def _post(self, path: str, body: Any) -> Any:
        response = httpx.post(self.root + path, json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self._post("/_reset", {})

    def script(self, *behaviours: dict[str, Any]) -> None:
        self._post("/_script", list(behaviours))

    def default(self, **behaviour: Any) -> None:
        self._post("/_default", behaviour)

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(self.root + "/_requests", timeout=10).json()

    def wait_events(self, kind: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        """Events of ``kind`` once ``count`` happened (or what there is after ``timeout``: a bounded wait)."""
        params = {"kind": kind, "count": count, "timeout": timeout}
        return httpx.get(self.root + "/_events", params=params, timeout=timeout + 10).json()


@contextmanager
def openai_test_server() -> Iterator[ScriptedServer]:
    tmp = Path(tempfile.mkdtemp(prefix="rag-openai-"))
    log = tmp / "server.log"
    port = free_port()
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.openai_server", "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = ScriptedServer(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            return httpx.get(server.root + "/_health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_until(ready, "OpenAI-compatible test server", proc, log)
        yield server
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
