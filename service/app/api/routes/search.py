"""Search route: semantic search over the caller's documents. Logic lives in SearchService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response

from service.app.api.deps import services_of, tenant_of
from service.app.api.routing import AuthenticatedRoute
from service.app.core.errors import error_responses
from service.app.core.security import rate_limit
from service.app.search.models import SearchRequest, SearchResponse

router = APIRouter(
    prefix="/v1",
    tags=["search"],
    dependencies=[Depends(rate_limit("search"))],
    route_class=AuthenticatedRoute,
)

# Each example runs against a fresh service in the tests (they succeed, with or without matching documents).
SEARCH_EXAMPLES = {
    "simple": {"summary": "a question", "value": {"query": "how many days of paid leave do I get?"}},
    "filtered": {
        "summary": "top 3 chunks of HR documents from 2024 on, scoring at least 0.2",
        "value": {
            "query": "carry over unused leave",
            "top_k": 3,
            "filter": {"team": {"any": ["hr", "people"]}, "year": {"gte": 2024}},
            "score_threshold": 0.2,
        },
    },
    "keyword": {
        "summary": "an identifier, ranked by BM25 alone",
        "value": {"query": "FALLOC_FL_COLLAPSE_RANGE", "mode": "sparse"},
    },
}


@router.post("/search", response_model=SearchResponse, responses=error_responses(409, 413, 415, 503))
async def search_documents(
    body: Annotated[SearchRequest, Body(openapi_examples=SEARCH_EXAMPLES)],
    request: Request,
) -> Response:
    """The chunks best matching the query (dense, sparse or hybrid `mode`), best first, optionally filtered."""
    # Served by service.app.api.fast_search.FastSearch, which does what this route does without the framework's
    # per-request work; this route documents the operation (OpenAPI) and is the reference the tests compare
    # FastSearch with. The router's rate_limit dependency has authenticated the caller before the body was read
    # (service.app.api.routing); services and tenant are plain calls here.
    result = await services_of(request).search.search(tenant_of(request), body)
    # Already a validated SearchResponse: serialise once instead of FastAPI's dump/re-validate/dump.
    return Response(result.model_dump_json(), media_type="application/json")
