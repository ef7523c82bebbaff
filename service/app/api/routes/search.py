"""Search route: semantic search over the caller's documents. Logic lives in SearchService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from service.app.api.deps import services_of, tenant_of
from service.app.core.errors import error_responses
from service.app.search.models import SearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])

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
    # The router's rate_limit dependency has authenticated the caller (401s happen there, before the body is
    # read); services and tenant are plain calls here, not two more dependencies to resolve per search.
    result = await services_of(request).search.search(tenant_of(request), body)
    # Already a validated SearchResponse: serialise once instead of FastAPI's dump/re-validate/dump.
    return Response(result.model_dump_json(), media_type="application/json")
