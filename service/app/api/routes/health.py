"""Liveness and readiness probes: /healthz says the process serves, /readyz that its backends answer."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.app.api.deps import ServicesDep
from service.app.core.faults import faked_free_bytes

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

READY_CHECK_TIMEOUT_SECONDS = 5.0


# HEAD as well as GET: some load balancers and uptime checkers probe with HEAD (it was a 405). Left out of the
# OpenAPI document: the same operation, without a body.
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process is up and its event loop answers; no backend is consulted."""
    return {"status": "ok"}


def _ping_vectors(vectors: Any) -> None:
    ping = getattr(vectors, "ping", None)
    if callable(ping):
        ping()
        return
    # A metadata call that needs the collection to exist, which a ready service requires anyway.
    if not vectors.client.collection_exists(vectors.collection):
        raise RuntimeError(f"collection {vectors.collection} does not exist")


def _check_disk(settings: Any, vectors: Any = None) -> None:
    """Free space under DATA_DIR: a full disk fails every write while every ping still answers; and an embedded
    store that refuses writes since a failed sync of its log (edge.EdgeVectorStore.write_failure)."""
    failure = getattr(vectors, "write_failure", None)
    if isinstance(failure, str):
        raise RuntimeError(failure)
    stats = os.statvfs(settings.data_dir)
    free = faked_free_bytes(stats.f_bavail * stats.f_frsize)
    if free < settings.ready_min_free_bytes:
        raise RuntimeError(
            f"{free // (1024 * 1024)} MiB free in DATA_DIR, below READY_MIN_FREE_BYTES "
            f"({settings.ready_min_free_bytes // (1024 * 1024)} MiB)"
        )


def _ping_registry(registry: Any) -> None:
    registry.ping()


async def _run_check(check: Callable[[], Awaitable[None]]) -> str | None:
    """None when the check passes, else a short reason."""
    try:
        await asyncio.wait_for(check(), timeout=READY_CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer within {READY_CHECK_TIMEOUT_SECONDS:.0f} s"
    except Exception as exc:
        return str(getattr(exc, "message", None) or exc) or type(exc).__name__
    return None


async def _redis_check(services: Any) -> None:
    jobs = getattr(services, "jobs", None)
    cache = getattr(services, "cache", None)
    limiter = getattr(services, "limiter", None)
    if jobs is not None and not await jobs.ping():
        raise RuntimeError("job queue Redis does not answer")
    if cache is not None and hasattr(cache, "ping") and not await run_in_threadpool(cache.ping):
        raise RuntimeError("cache Redis does not answer")
    if limiter is not None and not await limiter.check_storage():
        raise RuntimeError("rate-limit Redis does not answer")


#: What a pod cannot serve any request without. The database and Redis are shared by every replica and the
#: service degrades without them (searches keep working, the cache is bypassed, jobs wait): failing the
#: Kubernetes readiness probe on them would take EVERY pod out of the load balancer at the same moment, so a Redis
#: restart or a managed-database failover would turn into "no healthy upstream" for all traffic.
#: Nor does a low disk (or an embedded store that refuses writes since a failed log sync): writes are refused,
#: but searches, reads and deletes are still served, so `disk` gates /readyz (the signal for ingest) and not
#: /readyz/serving, which reports it as `degraded` (EYES10: a nearly full disk took a VM's reads offline behind a
#: health-checking proxy).
SERVING_CHECKS = frozenset({"qdrant"})


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", responses={503: {"description": "a backend failed; the body names each failed check"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness of the whole service: the vector store, the database, free space in DATA_DIR (embedded stores)
    and (when REDIS_URL is set) Redis answer; else 503. For people, smoke checks and `make serve`."""
    return await _readiness(services, gating=None)


@router.head("/readyz/serving", include_in_schema=False)
@router.get(
    "/readyz/serving",
    responses={503: {"description": "the vector store failed; the body names each failed check"}},
)
async def readyz_serving(services: ServicesDep) -> JSONResponse:
    """The Kubernetes readiness probe (and GKE's load-balancer health check): 503 only when this pod cannot serve
    searches at all (the vector store); a failed database or Redis, and a disk too full to write (`disk`), are
    reported as `degraded` with 200: every replica shares the first two and the service degrades rather than
    stops without them, and a full disk refuses writes while searches go on. /readyz fails on all of them."""
    return await _readiness(services, gating=SERVING_CHECKS)


async def _readiness(services: Any, *, gating: frozenset[str] | None) -> JSONResponse:
    checks: dict[str, Callable[[], Awaitable[None]]] = {
        "qdrant": lambda: run_in_threadpool(_ping_vectors, services.vectors),
        "database": lambda: run_in_threadpool(_ping_registry, services.registry),
    }
    if services.settings.uses_data_dir:
        checks["disk"] = lambda: run_in_threadpool(_check_disk, services.settings, services.vectors)
    if services.settings.redis_url:
        checks["redis"] = lambda: _redis_check(services)
    results = await asyncio.gather(*(_run_check(check) for check in checks.values()))
    report = {
        name: ("ok" if error is None else "failed") for name, error in zip(checks, results, strict=True)
    }
    failed = {name: error for name, error in zip(checks, results, strict=True) if error is not None}
    blocking = failed if gating is None else {name: error for name, error in failed.items() if name in gating}
    if failed:
        # Something failed: 503 when it gates this probe, else 200 with the service degraded.
        status, code, prefix, http_status = (
            ("unavailable", "not_ready", "failed checks: ", 503)
            if blocking
            else ("degraded", "degraded", "serving without: ", 200)
        )
        logger.warning("not ready" if blocking else "degraded", extra={"failed_checks": failed})
        return JSONResponse(
            {
                "status": status,
                "checks": report,
                "error": {"code": code, "message": prefix + ", ".join(sorted(failed)), "failed": failed},
            },
            status_code=http_status,
        )
    body: dict[str, Any] = {"status": "ok", "checks": report}
    warning = await _index_warning(services)
    if warning is not None:
        # Serving works (the previous index answers), so this gates nothing; it is here to be seen.
        body["warnings"] = {"index": warning}
    return JSONResponse(body)


async def _index_warning(services: Any) -> str | None:
    """Why the served index lacks the deployed settings (a failed start-up re-index), or None."""
    attention = getattr(getattr(services, "reindexer", None), "attention", None)
    if attention is None:
        return None
    try:
        return await asyncio.wait_for(run_in_threadpool(attention), timeout=READY_CHECK_TIMEOUT_SECONDS)
    except Exception:  # the database check reports a failing registry; a warning must not fail the probe
        return None
