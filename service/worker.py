"""`python -m service.worker`: the ingestion worker, an arq worker on the Redis queue JOBS_QUEUE_NAME.

It builds the same services as the API (registry, vector store, embedder, ingest) from the same settings and
runs up to JOBS_MAX_CONCURRENCY jobs at once; scale it apart from the API (its own Deployment). Job state is
written to Redis (`rag:job:<id>`), where any API replica answers `GET /v1/jobs/{id}`. Needs REDIS_URL.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from arq.worker import Worker, func
from pydantic import ValidationError

from service.app.core.config import Settings, SettingsError, describe_settings_error, get_settings
from service.app.core.logging import configure_logging
from service.app.jobs.models import IngestPayload
from service.app.jobs.queue import ARQ_FUNCTION, RedisJobStore, redis_settings, run_ingest

logger = logging.getLogger("service.worker")

ServicesFactory = Callable[[Settings], Awaitable[Any]]


async def ingest_document(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The arq job: ingest one extracted document and record the outcome; failures are recorded, not raised."""
    record = await run_ingest(ctx["services"].ingest, ctx["job_store"], IngestPayload.model_validate(payload))
    return {"job_id": record.job_id, "status": record.status.value}


async def _default_services(settings: Settings) -> Any:
    from anyio import to_thread

    from service.app.main import build_services

    # Same container as the API (migrates the registry, ensures the collection, loads the model).
    return await to_thread.run_sync(build_services, settings)


def worker_settings(
    settings: Settings, *, services: Any = None, services_factory: ServicesFactory = _default_services
) -> dict[str, Any]:
    """arq Worker keyword arguments; `services` injects a ready container (tests share the API's)."""
    if not settings.redis_url:
        raise SettingsError("the worker needs REDIS_URL (without Redis the API runs jobs in-process)")

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["owns_services"] = services is None
        ctx["services"] = services if services is not None else await services_factory(settings)
        ctx["job_store"] = RedisJobStore(ctx["redis"], settings.jobs_result_ttl_seconds)
        logger.info("worker ready", extra={"queue": settings.jobs_queue_name})

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        container = ctx.get("services")
        if ctx.get("owns_services") and container is not None:
            container.close()

    return {
        # Failures are recorded, not raised, so arq never retries them; its tries only count runs cut short
        # by a worker shutdown, which arq re-queues for the next worker.
        "functions": [func(ingest_document, name=ARQ_FUNCTION, max_tries=3)],
        "queue_name": settings.jobs_queue_name,
        "redis_settings": redis_settings(settings),
        "max_jobs": settings.jobs_max_concurrency,
        "keep_result": 3600,
        "job_timeout": 3600,
        # On SIGTERM stop taking jobs and let running ones finish (inside Kubernetes' 30 s grace period).
        "job_completion_wait": 25,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
    }


def build_worker(settings: Settings, *, services: Any = None, **overrides: Any) -> Worker:
    """A configured arq Worker (tests pass `burst=True, handle_signals=False` and the API's services)."""
    return Worker(**{**worker_settings(settings, services=services), **overrides})


def main() -> int:
    """Run the worker until SIGTERM/SIGINT (arq finishes or re-queues running jobs)."""
    try:
        settings = get_settings()
        configure_logging(settings)
        worker = build_worker(settings)
    except (SettingsError, ValidationError) as exc:
        print(f"service.worker: error: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    worker.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
