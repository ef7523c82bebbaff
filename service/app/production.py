"""Production features attached to the `Services` container: API-key auth, rate limiter, search cache, job queue.

`attach(services)` runs in the app lifespan right after the core services are built; it returns the coroutine
that releases what it opened (Redis connections, running in-process jobs), which the lifespan awaits on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from service.app.core.ratelimit import RateLimiter
from service.app.core.security import ApiKeyAuthenticator
from service.app.jobs.queue import build_job_queue
from service.app.search.models import SearchResponse
from service.app.store.cache import CachedSearch, RedisCache, build_cache
from service.app.store.jobstore import JobTable

logger = logging.getLogger(__name__)


async def attach(services: Any) -> Callable[[], Awaitable[None]]:
    """Add auth, limiter, cache (wrapping `services.search`) and jobs to `services`; return their closer."""
    settings = services.settings
    services.auth = ApiKeyAuthenticator(settings)
    if settings.auth_disabled:
        configured = [
            name
            for name, value in (("API_KEYS", settings.api_keys), ("API_KEYS_FILE", settings.api_keys_file))
            if value
        ]
        logger.warning(
            "authentication is OFF (AUTH_DISABLED=true): every request acts as tenant %r%s",
            settings.default_tenant,
            f"; {' and '.join(configured)} set but ignored" if configured else "",
        )
    services.limiter = RateLimiter(settings)
    services.cache = build_cache(settings)
    if services.cache is not None:
        services.search = CachedSearch(
            services.search,
            services.cache,
            services.registry,
            model_name=services.embedder.model_name,
            ttl_seconds=settings.cache_ttl_seconds,
            response_model=SearchResponse,
        )
    # The embedded store is open, so this process holds its exclusive lock, and the registry beside it is a
    # SQLite file: no other process runs these jobs. (An embedded store with a Postgres registry may share that
    # database with other processes: their running jobs are reclaimed by lease, as with workers.)
    services.jobs = await build_job_queue(
        settings,
        services.ingest,
        JobTable(services.registry),
        exclusive=settings.embedded_vector_store is not None
        and settings.resolved_database_url.startswith("sqlite"),
    )

    async def close() -> None:
        await services.jobs.close()
        await services.limiter.close()
        if isinstance(services.cache, RedisCache):
            await run_in_threadpool(services.cache.close)

    return close
