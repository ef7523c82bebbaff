"""The service as a real process (`python -m service`) on a free loopback port, for tests that need a socket:
a browser loading /docs, the bulk-ingest client honouring 429s, the prod-like local run, and the delivery
CLI (`ragops reindex`, `ragops smoke`) against a deployed URL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.servers import ServerError, _stop, _wait_until, free_port

ROOT = Path(__file__).resolve().parents[2]


def service_env(**settings: str) -> dict[str, str]:
    """The parent's environment minus every service setting it may carry, plus `settings` (upper-cased)."""
    from service.app.core.config import Settings

    names = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key not in names}
    env.update({key.upper(): value for key, value in settings.items()})
    env.setdefault("PYTHONPATH", str(ROOT))
    # The offline model lives in the repo; the process runs elsewhere (its own data dir, no repo .env).
    env.setdefault("EMBEDDING_MODEL_PATH", str(ROOT / ".models" / "all-MiniLM-L6-v2"))
    return env


@dataclass
class ApiProcess:
    """A started `python -m service`: its process (to signal it), base URL and combined output log."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


def start_api(workdir: Path, *, ready_path: str = "/healthz", **settings: str) -> ApiProcess:
    """Start `python -m service` with `settings` in `workdir` (no .env read from the repo); return once
    ``ready_path`` answers 200 (``/readyz`` when the test needs the stores ready, not only the process). The
    caller stops it (or kills it: `_stop` after a signal is harmless). ``log_json`` may be overridden (false by
    default: readable in a failure message).

    The port is picked free, then bound by the child: another process may take it in between, and the child
    exits saying it cannot listen there. That start is retried on a new port (twice at most); any other exit
    fails the test."""
    for attempt in range(3):
        try:
            return _start_api_once(workdir, ready_path, settings)
        except PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class PortTaken(ServerError):
    """The child exited because another process took the port it was given."""


def _start_api_once(workdir: Path, ready_path: str, settings: dict[str, str]) -> ApiProcess:
    port = free_port()
    env = service_env(**{"log_json": "false", **settings, "host": "127.0.0.1", "port": str(port)})
    # Beside the test's own files (a pytest tmp_path, cleaned with them), not a directory of /tmp of its own
    # that nothing removed: 215 of those piled up on one machine.
    log = Path(workdir) / f"api-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_until(ready, "the API process", proc, log)
    except ServerError as exc:
        _stop(proc)
        output = log.read_text(errors="replace")
        # The service's own bind probe, or uvicorn's bind when the port went in the probe's wake.
        if f"cannot listen on 127.0.0.1:{port}" in output or "address already in use" in output.lower():
            raise PortTaken(str(exc)) from exc
        raise
    except BaseException:
        _stop(proc)
        raise
    return ApiProcess(proc, url, log)


@contextmanager
def api_process(workdir: Path, *, ready_path: str = "/healthz", **settings: str) -> Iterator[str]:
    """`start_api` as a context manager: yields the base URL, stops the process on exit."""
    started = start_api(workdir, ready_path=ready_path, **settings)
    try:
        yield started.url
    finally:
        _stop(started.proc)
