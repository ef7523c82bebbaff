"""Prometheus exposition of the metrics in service.app.core.metrics (multi-process aware)."""

from __future__ import annotations

import contextlib
import os

from anyio import to_thread
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from service.app.api.deps import ServicesDep
from service.app.core.metrics import CACHE_REQUESTS, DOCUMENTS, FAILURES, JOB_SECONDS, JOBS

router = APIRouter(tags=["operations"])

# Known label values start at 0, so dashboards and rate() see a series before its first event.
for _result in ("hit", "miss", "error"):
    CACHE_REQUESTS.labels(result=_result)
for _status in ("succeeded", "failed"):
    JOBS.labels(status=_status)
    JOB_SECONDS.labels(status=_status)
for _component in ("vector_store", "registry", "embedder", "cache", "jobs", "rate_limiter"):
    FAILURES.labels(component=_component)


#: Tenants this process has reported documents for (a tenant emptied since is set to 0).
_DOCUMENT_TENANTS: set[str] = set()


def _registry() -> CollectorRegistry:
    # With WORKERS > 1 every uvicorn process writes its samples to PROMETHEUS_MULTIPROC_DIR; merge them here.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format; queue depth and oldest queued job's age are read from the queue at scrape time,
    so a queue nobody consumes is visible from the API even with no worker running; documents per tenant from
    the registry."""
    jobs = getattr(services, "jobs", None)
    if jobs is not None:
        # An unreachable queue must not break the scrape; /readyz reports it.
        with contextlib.suppress(Exception):
            await jobs.stats()
    # An unreachable registry must not break the scrape either (/readyz reports it): the last values stay.
    with contextlib.suppress(Exception):
        counts = await to_thread.run_sync(services.registry.count_documents_by_tenant)
        for tenant in _DOCUMENT_TENANTS - counts.keys():
            DOCUMENTS.labels(tenant=tenant).set(0)  # emptied (or gone): 0, not its last count
        for tenant, count in counts.items():
            DOCUMENTS.labels(tenant=tenant).set(count)
        _DOCUMENT_TENANTS.update(counts)
    reindexer = getattr(services, "reindexer", None)
    if reindexer is not None:
        # Follows the pointer and lease (a registry read, off the event loop; within INDEX_POINTER_TTL_SECONDS
        # of the last follow it reads nothing), so rag_reindex_interrupted is current without any traffic.
        with contextlib.suppress(Exception):
            await to_thread.run_sync(reindexer.sync)
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)
