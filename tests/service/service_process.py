"""The service as a real process (`python -m service`) for the fault tests: start, wait ready, SIGTERM or SIGKILL.

Waits poll a condition until a deadline that only bounds a process that never gets there (no timing asserts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 120.0


def wait_for(condition: Callable[[], Any], what: str, deadline: float = DEADLINE_SECONDS) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class ServiceProcess:
    """One `python -m service` (or `python -m service.worker`) child process with its own environment."""

    def __init__(self, env: dict[str, str], log: Path, module: str = "service") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {
            **os.environ,
            "ENVIRONMENT": "test",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "AUTH_DISABLED": "true",
            "RATE_LIMIT_ENABLED": "false",
            "LOG_JSON": "true",
            **env,
        }
        for inherited in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "RAG_FAULT_KILL_AT"):
            if inherited not in env:
                full_env.pop(inherited, None)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO_ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, f"the service on {self.url} to be ready")

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"service did not exit:\n{self.tail()}") from exc

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def service_process(env: dict[str, str], log: Path, module: str = "service") -> Iterator[ServiceProcess]:
    process = ServiceProcess(env, log, module)
    try:
        if module == "service":
            process.wait_ready()
        yield process
    finally:
        process.kill()
