"""Search route: semantic search over the caller's documents. Logic lives in SearchService."""

from __future__ import annotations

from fastapi import APIRouter

from service.app.api.deps import ServicesDep, TenantDep
from service.app.search.models import SearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])


@router.post("/search", response_model=SearchResponse)
async def search_documents(body: SearchRequest, services: ServicesDep, tenant: TenantDep) -> SearchResponse:
    """The chunks most similar to the query, best first, optionally filtered by metadata."""
    return await services.search.search(tenant, body)
