"""Prometheus exposition of the metrics in service.app.core.metrics (multi-process aware)."""

from __future__ import annotations

import contextlib
import os

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from service.app.api.deps import ServicesDep
from service.app.core.metrics import JOB_QUEUE_DEPTH

router = APIRouter(tags=["operations"])


def _registry() -> CollectorRegistry:
    # With WORKERS > 1 every uvicorn process writes its samples to PROMETHEUS_MULTIPROC_DIR; merge them here.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format; the job queue depth is refreshed from the queue at scrape time."""
    jobs = getattr(services, "jobs", None)
    if jobs is not None:
        # An unreachable queue must not break the scrape; /readyz reports it.
        with contextlib.suppress(Exception):
            JOB_QUEUE_DEPTH.set(await jobs.depth())
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)
