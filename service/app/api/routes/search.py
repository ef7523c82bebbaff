"""Search route: semantic search over the caller's documents. Logic lives in SearchService."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.app.api.deps import ServicesDep, TenantDep
from service.app.core.errors import error_responses
from service.app.search.models import SearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])


@router.post("/search", response_model=SearchResponse, responses=error_responses(413, 503))
async def search_documents(body: SearchRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """The chunks most similar to the query, best first, optionally filtered by metadata."""
    result = await services.search.search(tenant, body)
    # Already a validated SearchResponse: serialise once instead of FastAPI's dump/re-validate/dump.
    return Response(result.model_dump_json(), media_type="application/json")
