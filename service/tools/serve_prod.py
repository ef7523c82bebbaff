"""`make serve-prod`: the production shape on one machine, in one command.

Starts, each as its own process on a free loopback port, and stops them all on Ctrl-C / SIGTERM:

    Postgres 15 and Redis   throwaway servers in a temporary directory (the ones the test suite starts:
                            tests/support/servers.py), holding the registry + job rows and the wake-ups
    the API                 `python -m service` with ENVIRONMENT=production, API keys, DATABASE_URL, REDIS_URL
                            and the embedded vector store (qdrant-edge) in the temporary directory
    the worker              `python -m service.worker` with its own metrics/probe port

The vector store: local-mode Qdrant (and qdrant-edge) open in one process only, so the API owns it and lends it
to the worker over `/internal/vectors`, authenticated by a generated INTERNAL_TOKEN; the worker extracts,
chunks and embeds, then writes the points through the API (service.app.store.remote; docs/operations.md). A
deployed stack uses a Qdrant server instead, which every process opens directly.

Everything is thrown away on exit (the temporary directory with the store and the logs too, unless a directory
was passed in). The API key is printed (or pass API_KEYS=key:tenant in the environment). When the API or the
worker exits on its own (a crash, an OOM kill), everything is stopped with one line naming it, its exit status
and its log, and the exit status is 1: an API answering 202s that no worker will ever run is not left behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.app.core.usage import parse_no_arguments

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 180.0


@dataclass(frozen=True)
class ProdLike:
    """What a running prod-like set-up offers."""

    api_url: str
    worker_url: str
    api_key: str
    database_url: str
    redis_url: str
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env() -> dict[str, str]:
    from service.app.core.config import Settings

    # Only what we set: a developer's .env or exported settings must not leak into the prod-like run.
    names = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key not in names}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    import time

    # Readiness polling; the deadline only bounds a process that never comes up.
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready at {url}:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603 - our argv
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def prod_like(workdir: Path | None = None, *, api_keys: str | None = None) -> Iterator[ProdLike]:
    """Start Postgres, Redis, the API and the worker; yield where they are; stop everything on exit."""
    temporary = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="rag-prod-like-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with _started(workdir, api_keys) as run:
            yield run
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)  # after every process stopped: the store, the logs


@contextmanager
def _started(workdir: Path, api_keys: str | None) -> Iterator[ProdLike]:
    from tests.support.servers import postgres_server, redis_server

    api_key = secrets.token_urlsafe(24)
    keys = api_keys or f"{api_key}:default"
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_server("rag"))
        redis_url = stack.enter_context(redis_server())
        api_port, worker_port = _free_port(), _free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        common = {
            **_base_env(),
            "ENVIRONMENT": "production",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "API_KEYS": keys,
            "INTERNAL_TOKEN": secrets.token_urlsafe(32),
            "DATA_DIR": str(workdir / "data"),
            "EMBEDDING_MODEL_PATH": str(ROOT / ".models" / "all-MiniLM-L6-v2"),
            "HOST": "127.0.0.1",
            "LOG_JSON": "true",
        }
        api = stack.enter_context(
            _process(
                [sys.executable, "-m", "service"],
                {**common, "PORT": str(api_port), "DOCS_ENABLED": "true"},
                workdir / "api.log",
                workdir,
            )
        )
        _wait_ready(f"{api_url}/readyz", api, workdir / "api.log", "the API")
        worker = stack.enter_context(
            _process(
                [sys.executable, "-m", "service.worker"],
                {**common, "VECTOR_STORE_URL": api_url, "WORKER_METRICS_PORT": str(worker_port)},
                workdir / "worker.log",
                workdir,
            )
        )
        worker_url = f"http://127.0.0.1:{worker_port}"
        _wait_ready(f"{worker_url}/readyz", worker, workdir / "worker.log", "the worker")
        yield ProdLike(
            api_url=api_url,
            worker_url=worker_url,
            api_key=api_key if api_keys is None else "",
            database_url=database_url,
            redis_url=redis_url,
            workdir=workdir,
            processes={"API": api, "worker": worker},
        )


def supervise(run: ProdLike, stop: threading.Event) -> int:
    """Wait for ``stop`` or for a process of ``run`` to exit on its own: 0 for the first, else 1 after one line on
    stderr naming the process, its exit status and its log."""
    exited: list[str] = []

    def watch(name: str, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        exited.append(name)
        stop.set()

    for name, proc in run.processes.items():
        threading.Thread(target=watch, args=(name, proc), daemon=True, name=f"watch-{name}").start()
    stop.wait()
    if not exited:
        return 0
    name = exited[0]
    log = run.workdir / ("api.log" if name == "API" else "worker.log")
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    print(
        f"serve-prod: error: the {name} exited on its own with status {run.processes[name].returncode}; "
        f"stopping everything (last log line: {tail[0][:300] if tail else 'none'})",
        file=sys.stderr,
        flush=True,
    )
    return 1


def main() -> int:
    parse_no_arguments(
        "python -m service.tools.serve_prod",
        "The production shape on one machine (make serve-prod): throwaway Postgres and Redis, the API and the "
        "worker as separate processes; Ctrl-C stops and removes everything.",
        "Environment: API_KEYS=key:tenant to choose the key (else one is generated and printed).",
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with prod_like(api_keys=os.environ.get("API_KEYS")) as run:
        key = run.api_key or "(from API_KEYS)"
        print(
            f"""prod-like run ready (Ctrl-C stops and removes everything)
  API        {run.api_url}   docs: {run.api_url}/docs   metrics: {run.api_url}/metrics
  worker     {run.worker_url}/readyz   metrics: {run.worker_url}/metrics
  API key    {key}
  Postgres   {run.database_url}
  Redis      {run.redis_url}
  logs       {run.workdir}/api.log, {run.workdir}/worker.log
try:
  curl -s -X PUT '{run.api_url}/v1/documents/hello?async=true' -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' -d '{{"text": "Hello from a prod-like run."}}'
  curl -s -X POST {run.api_url}/v1/search -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' -d '{{"query": "hello"}}'""",
            flush=True,
        )
        return supervise(run, stop)


if __name__ == "__main__":
    raise SystemExit(main())
