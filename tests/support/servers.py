"""Throwaway Postgres and Redis servers for integration tests.

Each server lives in a temporary directory on a free loopback port and is stopped when the context exits.
`json_server` is a scripted HTTP server (a thread) for clients under test that only need JSON answers.
When DATABASE_URL / REDIS_URL are set the tests use those servers instead. Nothing here skips: a missing
binary is an error telling how to get it, so CI can never pass without running the integration tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
# Bounds only a server that never comes up (one that exits fails at once, with its log): the API process loads the
# model and migrates before it listens: 8-9 s to /readyz at a load average of 11 on 2 cores here; 60 s left a
# slower CI machine little room. tests/service/service_process.py waits as long.
READY_TIMEOUT_SECONDS = 120.0


class ServerError(RuntimeError):
    """A throwaway server could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _JsonHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._reply(*self.server.answer(self.path))  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        post = self.server.answer_post  # type: ignore[attr-defined]
        if post is None:
            self._reply(405, {"error": {"message": "this scripted server answers GETs only"}})
            return
        self._reply(*post(self.path, body))

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def json_server(
    answer: Callable[[str], tuple[int, Any]],
    post: Callable[[str, Any], tuple[int, Any]] | None = None,
) -> Iterator[ThreadingHTTPServer]:
    """A real HTTP server on a free loopback port whose GETs answer ``answer(path)`` and POSTs
    ``post(path, JSON body)``: (status, JSON body); without ``post`` a POST is refused with 405."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JsonHandler)
    server.answer = answer  # type: ignore[attr-defined]
    server.answer_post = post  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _pg_binary(name: str) -> str:
    for directory in (os.environ.get("PG_BIN", ""), *PG_BIN_DIRS):
        candidate = Path(directory) / name
        if directory and candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ServerError(f"{name} not found: install postgresql-15 (see .ci/ensure-servers) or set DATABASE_URL")


def _as_unprivileged(cmd: list[str]) -> list[str]:
    # Postgres refuses to run as root; CI runs as root, so drop to the distribution's postgres user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _wait_until(check, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    # Readiness polling, not a timing assertion: the deadline only bounds a server that never comes up.
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(
                f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}"
            )
        if check():
            return
        time.sleep(0.05)
    raise ServerError(f"{what} did not become ready:\n{log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _postgres_cluster(tmp: Path) -> tuple[Path, Path]:
    """initdb a fresh cluster in ``tmp`` (handed to the postgres user when run as root: initdb refuses root);
    returns its data and socket directories."""
    data, sockets = tmp / "data", tmp / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(sockets, "postgres")
    initdb = [
        _pg_binary("initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    ]
    try:
        subprocess.run(_as_unprivileged(initdb), check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        raise ServerError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    return data, sockets


def _postgres_admin(port: int) -> tuple[str, Callable[[], bool]]:
    """The admin connection string of the server on ``port`` and a check that it accepts connections."""
    import psycopg

    admin = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

    def ready() -> bool:
        try:
            with psycopg.connect(admin, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    return admin, ready


@contextmanager
def postgres_server(database: str = "rag_test") -> Iterator[str]:
    """Start a throwaway Postgres and yield a SQLAlchemy URL (`postgresql+psycopg://...`) to a fresh database."""
    import psycopg

    tmp = Path(tempfile.mkdtemp(prefix="rag-pg-"))
    log = tmp / "postgres.log"
    port = free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        data, sockets = _postgres_cluster(tmp)
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                _as_unprivileged(
                    [
                        *(_pg_binary("postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)),
                        *(
                            "-c",
                            "listen_addresses=127.0.0.1",
                            "-c",
                            "fsync=off",
                            "-c",
                            "synchronous_commit=off",
                        ),
                        *("-c", "full_page_writes=off"),
                    ]
                ),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        admin, ready = _postgres_admin(port)
        _wait_until(ready, "postgres", proc, log)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """Start a throwaway redis-server (no persistence) and yield its `redis://` URL."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerError(
            "redis-server not found: `apt-get install redis-server` (make servers does) or set REDIS_URL"
        )
    tmp = Path(tempfile.mkdtemp(prefix="rag-redis-"))
    log = tmp / "redis.log"
    port = free_port()
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"redis://127.0.0.1:{port}/0"

    def ready() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    try:
        _wait_until(ready, "redis-server", proc, log)
        yield url
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class RestartableServer:
    """A server process that a test can kill (-9) or stop and start again on the same port and data."""

    def __init__(self, command: list[str], url: str, ready, log: Path, what: str) -> None:
        self._command = command
        self.url = url
        self._ready = ready
        self._log = log
        self._what = what
        self.proc: subprocess.Popen[bytes] | None = None
        self.on_killed: Callable[[], None] | None = None

    def start(self) -> None:
        with self._log.open("ab") as log_file:
            # Its own process group: a kill reaches the server behind `runuser` and all its children.
            self.proc = subprocess.Popen(
                self._command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_until(self._ready, self._what, self.proc, self._log)

    def kill(self) -> None:
        """SIGKILL to the server and every process it started (Postgres backends call setsid, so a process group
        kill misses them), as a crashed pod would: no connection outlives the kill."""
        if self.proc is not None and self.proc.poll() is None:
            for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()
        if self.on_killed is not None:
            self.on_killed()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@contextmanager
def restartable_redis() -> Iterator[RestartableServer]:
    """A redis-server without persistence (the worst case: a restart forgets everything) that can be killed."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerError("redis-server not found: `apt-get install redis-server` (make servers does)")
    tmp = Path(tempfile.mkdtemp(prefix="rag-redis-"))
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    def ready() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = RestartableServer([*command, "--dir", str(tmp)], url, ready, tmp / "redis.log", "redis-server")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def restartable_postgres(database: str = "rag_test") -> Iterator[RestartableServer]:
    """A throwaway Postgres (as `postgres_server`) that a test can kill -9 and start again."""
    import psycopg

    tmp = Path(tempfile.mkdtemp(prefix="rag-pg-"))
    try:
        data, sockets = _postgres_cluster(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    port = free_port()
    admin, ready = _postgres_admin(port)

    command = _as_unprivileged(
        [
            *(_pg_binary("postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)),
            *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"),
        ]
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    server = RestartableServer(command, url, ready, tmp / "postgres.log", "postgres")

    # The killed postmaster stays a zombie here (no init reaps it), so its lock files would look live: a new pod
    # starts without them.
    def forget_dead_postmaster() -> None:
        for lock in (data / "postmaster.pid", *sockets.glob(".s.PGSQL.*")):
            lock.unlink(missing_ok=True)

    server.on_killed = forget_dead_postmaster
    try:
        server.start()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
