"""The worker's own HTTP port (WORKER_METRICS_PORT): Prometheus metrics and probes that fail when it stops consuming.

A worker process has no API to probe, and "the process is up" says nothing about whether it still takes jobs:
arq's loop can be stuck reconnecting to a Redis that is gone, or wedged on a call that never returns, while the
process looks healthy. So the probes are about the queue: every successful poll of the queue records its time
(`rag_worker_last_poll_timestamp_seconds`), and

    /healthz  200 while the last successful poll (or, before the first, the start) is under WORKER_STALE_SECONDS
              old; else 503, so the kubelet restarts a worker that stopped consuming (jobs are rows in the
              database: a restart loses none)
    /readyz   the same, and 503 until the first poll succeeded
    /metrics  the process's metrics (jobs, job duration, chunks, embedding time, failures) plus the queue depth
              and the oldest queued job's age read from the job table at scrape time

A blocked event loop cannot answer at all, which the probe's timeout turns into a failure too. The server is
uvicorn on the worker's own event loop, with uvicorn's signal handling left to the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.app.core.metrics import WORKER_LAST_POLL
from service.app.jobs.queue import SPACE_WAITS

logger = logging.getLogger(__name__)


class WorkerHealth:
    """When the worker last polled its queue successfully, and whether that is recent enough."""

    def __init__(self, stale_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.stale_seconds = stale_seconds
        self._clock = clock
        self.started_at = clock()
        self.last_poll: float | None = None
        # Async callable updating the queue gauges before a scrape (set once the job table is open).
        self.refresh_queue: Callable[[], Awaitable[Any]] | None = None

    def polled(self) -> None:
        self.last_poll = self._clock()
        WORKER_LAST_POLL.set(self.last_poll)

    def report(self, *, need_poll: bool) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): healthy when the last poll (or the start, unless `need_poll`) is recent enough."""
        now = self._clock()
        since = self.last_poll if self.last_poll is not None else self.started_at
        age = max(0.0, now - since)
        ok = age <= self.stale_seconds and (self.last_poll is not None or not need_poll)
        body: dict[str, Any] = {
            "status": "ok" if ok else "not_consuming",
            "last_poll_age_seconds": round(age, 3) if self.last_poll is not None else None,
            "stale_after_seconds": self.stale_seconds,
            # Jobs held back until the disk has room: restarting the worker would not help, so not a failure.
            "jobs_waiting_for_space": SPACE_WAITS.refresh(),
        }
        if not ok:
            body["reason"] = (
                f"no successful poll of the queue for {age:.0f} s (limit {self.stale_seconds:g} s)"
                if self.last_poll is not None or not need_poll
                else "the queue has not been polled yet"
            )
        return ok, body


def health_app(health: WorkerHealth) -> Starlette:
    """The probe and metrics routes of a worker."""

    async def healthz(_request: Request) -> JSONResponse:
        ok, body = health.report(need_poll=False)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def readyz(_request: Request) -> JSONResponse:
        ok, body = health.report(need_poll=True)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(_request: Request) -> Response:
        if health.refresh_queue is not None:
            # A database outage must not break the scrape (the failure counters say what is wrong).
            with contextlib.suppress(Exception):
                await health.refresh_queue()
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn on a loop it does not own: the worker, not uvicorn, handles SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HealthServer:
    """Runs `health_app` on host:port as a task of the current event loop."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="worker-health-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error (port in use...) to the caller
                raise RuntimeError("the worker's health server stopped before it started")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
