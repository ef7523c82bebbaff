"""Prometheus exposition of the metrics in service.app.core.metrics (multi-process aware)."""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from service.app.api.deps import ServicesDep
from service.app.core.metrics import CACHE_REQUESTS, FAILURES, JOB_SECONDS, JOBS

router = APIRouter(tags=["operations"])

# Known label values start at 0, so dashboards and rate() see a series before its first event.
for _result in ("hit", "miss", "error"):
    CACHE_REQUESTS.labels(result=_result)
for _status in ("succeeded", "failed"):
    JOBS.labels(status=_status)
    JOB_SECONDS.labels(status=_status)
for _component in ("vector_store", "registry", "embedder", "cache", "jobs", "rate_limiter"):
    FAILURES.labels(component=_component)


#: Per registry: (data_version, active documents) per tenant as last counted (DocumentRegistry.document_counts).
_DOCUMENT_COUNTS: weakref.WeakKeyDictionary[Any, dict[str, tuple[int, int]]] = weakref.WeakKeyDictionary()


class _DocumentGauge:
    """rag_documents{tenant}, rendered from this scrape's counts by the process that answers it.

    Not a prometheus_client Gauge: with WORKERS > 1 a Gauge's samples live in each worker's file of
    PROMETHEUS_MULTIPROC_DIR and are merged at scrape time, so a worker that last reported a tenant kept that
    count after the tenant was emptied until the same worker was scraped again."""

    def __init__(self, counts: dict[str, tuple[int, int]]) -> None:
        self.counts = counts

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "rag_documents",
            "Active documents in the registry, per tenant that ever wrote (0: emptied; read at scrape time).",
            labels=["tenant"],
        )
        for tenant, (_, count) in sorted(self.counts.items()):
            family.add_metric([tenant], count)
        return [family]


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
    # An unreachable registry must not break the scrape either (/readyz reports it): the last counts are shown.
    registry = services.registry
    counts = _DOCUMENT_COUNTS.get(registry, {})
    with contextlib.suppress(Exception):
        counts = await to_thread.run_sync(registry.document_counts, counts)
        _DOCUMENT_COUNTS[registry] = counts
    reindexer = getattr(services, "reindexer", None)
    if reindexer is not None:
        # Follows the pointer and lease (a registry read, off the event loop; within INDEX_POINTER_TTL_SECONDS
        # of the last follow it reads nothing), so rag_reindex_interrupted is current without any traffic.
        with contextlib.suppress(Exception):
            await to_thread.run_sync(reindexer.sync)
    documents = CollectorRegistry(auto_describe=False)
    documents.register(_DocumentGauge(counts))
    body = generate_latest(_registry()) + generate_latest(documents)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
