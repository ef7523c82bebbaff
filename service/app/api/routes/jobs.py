"""Async ingestion job status: `GET /v1/jobs/{job_id}` within the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from service.app.api.deps import ServicesDep, TenantDep
from service.app.api.routing import AuthenticatedRoute
from service.app.core.errors import NotFound, error_responses
from service.app.core.security import rate_limit
from service.app.jobs.models import JobRecord

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(rate_limit("search"))],
    route_class=AuthenticatedRoute,
)


@router.get("/{job_id}", response_model=JobRecord, responses=error_responses(404))
async def get_job(
    job_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")], tenant: TenantDep, services: ServicesDep
) -> JobRecord:
    """Status of an ingestion job: queued, running, succeeded (with the result) or failed (with the error)."""
    record = await services.jobs.get(tenant, job_id)
    if record is None:
        # Another tenant's job is indistinguishable from a missing one.
        raise NotFound(f"job {job_id} not found")
    return record
