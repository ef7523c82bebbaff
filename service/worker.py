"""`python -m service.worker`: the ingestion worker, an arq worker on the Redis queue JOBS_QUEUE_NAME.

It builds the same services as the API (registry, vector store, embedder, ingest) from the same settings and
runs up to JOBS_MAX_CONCURRENCY jobs at once; scale it apart from the API (its own Deployment). Jobs are rows in
the registry database (service.app.store.jobstore); Redis only carries wake-ups. Needs REDIS_URL and a vector
store it can share with the API (QDRANT_URL): the embedded local-mode store is locked by the API process.

Riding out Redis: arq's worker stops on a Redis error, so `run` supervises it: on a disconnect it logs one
warning, waits (doubling back-off up to 30 s) and starts a new arq worker on the same services, while a sweeper
re-sends wake-ups for jobs the database says are due (those a Redis crash lost included).

Observability (service.app.jobs.health): on WORKER_METRICS_PORT the worker serves /metrics (its job counters,
job duration, chunks, embedding time, failures, and the queue depth / oldest queued job's age from the job
table) and /healthz, /readyz, which fail once no poll of the queue has succeeded for WORKER_STALE_SECONDS: a
worker stuck on a dead Redis or wedged in a call is restarted rather than left looking healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker, func
from pydantic import ValidationError
from redis.exceptions import RedisError

from service.app.core.config import Settings, SettingsError, describe_settings_error, get_settings
from service.app.core.logging import configure_logging
from service.app.core.metrics import FAILURES
from service.app.core.usage import parse_no_arguments
from service.app.jobs.health import HealthServer, WorkerHealth, health_app
from service.app.jobs.queue import (
    ARQ_FUNCTION,
    REDIS_TIMEOUT_SECONDS,
    queue_stats,
    redis_settings,
    run_durable_job,
    sweep,
)
from service.app.store.jobstore import JobTable

logger = logging.getLogger("service.worker")

ServicesFactory = Callable[[Settings], Awaitable[Any]]
MAX_BACKOFF_SECONDS = 30.0


async def ingest_document(ctx: dict[str, Any], job_id: str | dict[str, Any]) -> str:
    """The arq job: claim the stored job and run it; outcomes are recorded in the database, not raised."""
    if isinstance(job_id, dict):  # a wake-up sent by an API of the previous release (payload in Redis)
        job_id = str(job_id.get("job_id", ""))
    return await run_durable_job(
        ctx["services"].ingest, JobTable(ctx["services"].registry), ctx["redis"], ctx["settings"], job_id
    )


async def _default_services(settings: Settings) -> Any:
    from anyio import to_thread

    from service.app.main import build_services

    vectors = None
    if settings.vector_store_url and not settings.qdrant_url:
        from service.app.store.remote import RemoteVectorStore

        # The API owns the embedded store; this worker writes through it (service.app.store.remote).
        vectors = RemoteVectorStore.from_settings(settings)
    # Same container as the API (migrates the registry, ensures the collection, loads the model).
    services = await to_thread.run_sync(
        lambda: build_services(settings, vectors=vectors, start_reindex=False, queries=False)
    )
    if vectors is not None:
        services.closers.append(vectors.close)
    return services


def check_worker_settings(settings: Settings) -> None:
    """The worker needs Redis, and a vector store another process can open."""
    if not settings.redis_url:
        raise SettingsError("the worker needs REDIS_URL (without Redis the API runs jobs in-process)")
    if settings.vector_store_url and settings.internal_token is None:
        raise SettingsError("VECTOR_STORE_URL needs INTERNAL_TOKEN (the token the owning API expects)")
    if not settings.qdrant_url and not settings.vector_store_url:
        raise SettingsError(
            "REDIS_URL needs QDRANT_URL: workers and the API are separate processes and the embedded vector "
            f"store (VECTOR_STORE={settings.vector_store}) opens in one process only; unset REDIS_URL to run jobs "
            "in the API process, or write through the API's store with VECTOR_STORE_URL + INTERNAL_TOKEN "
            "(make serve-prod)"
        )


def worker_settings(
    settings: Settings, *, services: Any = None, services_factory: ServicesFactory = _default_services
) -> dict[str, Any]:
    """arq Worker keyword arguments; `services` injects a ready container (tests share the API's)."""
    if not settings.redis_url:
        raise SettingsError("the worker needs REDIS_URL (without Redis the API runs jobs in-process)")

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["owns_services"] = services is None
        ctx["services"] = services if services is not None else await services_factory(settings)
        ctx["settings"] = settings
        logger.info("worker ready", extra={"queue": settings.jobs_queue_name})

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        container = ctx.get("services")
        if ctx.get("owns_services") and container is not None:
            container.close()

    return {
        # Outcomes are recorded in the database, never raised, so arq's own retries only cover runs cut short by
        # a shutdown; our retries (back-off on outages) are rows put back to queued with a deferred wake-up.
        "functions": [func(ingest_document, name=ARQ_FUNCTION, max_tries=3)],
        "queue_name": settings.jobs_queue_name,
        "redis_settings": redis_settings(settings),
        "max_jobs": settings.jobs_max_concurrency,
        "keep_result": 60,
        "job_timeout": max(60, int(settings.gc_grace_seconds)),
        # On SIGTERM stop taking jobs and let running ones finish (inside Kubernetes' 30 s grace period).
        "job_completion_wait": 25,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
    }


class PollingWorker(Worker):
    """arq's Worker, recording each successful poll of the queue for the probes and the last-poll metric."""

    def __init__(self, *args: Any, health: WorkerHealth | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._health = health

    async def _poll_iteration(self) -> None:
        # arq 0.28's loop body (pinned): it raises when Redis fails, so reaching the end means the queue answered.
        await super()._poll_iteration()
        if self._health is not None:
            self._health.polled()


def build_worker(
    settings: Settings, *, services: Any = None, health: WorkerHealth | None = None, **overrides: Any
) -> Worker:
    """A configured arq Worker (tests pass `burst=True, handle_signals=False` and the API's services)."""
    return PollingWorker(**{**worker_settings(settings, services=services), **overrides}, health=health)


async def _sweep_forever(table: JobTable, settings: Settings, stop: asyncio.Event) -> None:
    pool = ArqRedis.from_url(
        settings.redis_url or "",
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    try:
        while not stop.is_set():
            try:
                await sweep(table, pool, settings)
            except Exception as exc:  # a database outage: the next sweep retries
                logger.warning("job sweep failed: %s", getattr(exc, "message", exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.jobs_sweep_seconds)
    finally:
        with contextlib.suppress(Exception):
            await pool.aclose()


async def _stop_worker_on(stop: asyncio.Event, current: list[Worker]) -> None:
    await stop.wait()
    if current and current[0].main_task is not None:
        current[0].main_task.cancel()


async def run(
    settings: Settings,
    services: Any = None,
    *,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
    health: WorkerHealth | None = None,
) -> None:
    """Serve jobs until SIGTERM/SIGINT (or ``stop`` is set), restarting the arq worker whenever Redis goes away."""
    health = health or WorkerHealth(settings.worker_stale_seconds)
    server: HealthServer | None = None
    if settings.worker_metrics_port:
        # Up before the model loads: /healthz answers (within the stale limit) while the worker starts.
        server = HealthServer(health_app(health), settings.host, settings.worker_metrics_port)
        await server.start()
    owns = services is None
    try:
        services = services if services is not None else await _default_services(settings)
    except BaseException:
        if server is not None:
            await server.stop()
        raise
    table = JobTable(services.registry)
    health.refresh_queue = lambda: queue_stats(table)
    stop = stop or asyncio.Event()
    current: list[Worker] = []

    def on_signal(signum: int) -> None:
        stop.set()
        if current:
            current[0].handle_sig_wait_for_completion(signum)

    if install_signals:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
    stopper = asyncio.create_task(_stop_worker_on(stop, current))
    sweeper = asyncio.create_task(_sweep_forever(table, settings, stop))
    backoff = 1.0
    try:
        while not stop.is_set():
            worker = build_worker(settings, services=services, health=health, handle_signals=False)
            current[:] = [worker]
            worker.main_task = asyncio.create_task(worker.main(), name="arq-worker")
            try:
                await worker.main_task
            except asyncio.CancelledError:
                if not stop.is_set():
                    raise
            except (RedisError, OSError) as exc:
                # Counted: with no traffic this is the only Redis failure a prod stack (no RedisDown on a
                # managed Redis) has for RedisUnreachableFromService to see.
                FAILURES.labels(component="jobs").inc()
                logger.warning(
                    "Redis unavailable (%s); worker reconnects in %.0f s", type(exc).__name__, backoff
                )
            else:
                backoff = 1.0
            finally:
                current.clear()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await worker.close()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
    finally:
        stop.set()
        await sweeper
        await stopper
        if server is not None:
            await server.stop()
        if owns:
            services.close()


def main() -> int:
    """Run the worker until SIGTERM/SIGINT (arq finishes or re-queues running jobs)."""
    parse_no_arguments(
        "python -m service.worker",
        "Run the ingestion worker: consume the Redis job queue, extract, chunk and embed documents, and serve "
        "its own /healthz, /readyz and /metrics port.",
        "Configured by the API's environment variables (REDIS_URL and DATABASE_URL required, QDRANT_URL or "
        "INTERNAL_TOKEN for the vector store, JOBS_MAX_CONCURRENCY, WORKER_PORT, ...); see docs/operations.md.",
    )
    try:
        settings = get_settings()
        configure_logging(settings)
        check_worker_settings(settings)
    except (SettingsError, ValidationError) as exc:
        print(f"service.worker: error: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
