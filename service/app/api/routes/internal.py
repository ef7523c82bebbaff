"""`POST /internal/vectors/{operation}`: the API's embedded vector store, lent to worker processes.

Mounted only when INTERNAL_TOKEN is set, outside the OpenAPI document; the caller must send
`Authorization: Bearer <INTERNAL_TOKEN>` (compared in constant time). Why it exists and its trade-off:
service.app.store.remote. It is meant for one machine (`make serve-prod`); a cluster uses a Qdrant server.
"""

from __future__ import annotations

import hmac
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.app.api.deps import ServicesDep
from service.app.core.errors import InvalidInput, NotFound, Unauthorized
from service.app.core.security import bearer_token
from service.app.store.remote import INTERNAL_PREFIX, OPERATIONS, decode_args, encode_result

router = APIRouter(prefix=INTERNAL_PREFIX, include_in_schema=False)


class InternalResult(BaseModel):
    result: Any = None


@router.post("/{operation}")
async def vector_operation(operation: str, request: Request, services: ServicesDep) -> InternalResult:
    """Run one VectorStore operation on this process's store for an authenticated worker."""
    expected = services.settings.internal_token
    presented = bearer_token(request.headers.get("authorization")) or ""
    if expected is None or not hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("invalid internal token")
    if operation not in OPERATIONS:
        raise NotFound(f"unknown vector store operation {operation!r}")
    body = await request.json()
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object of keyword arguments")
    try:
        args = decode_args(operation, body)
    except (TypeError, KeyError) as exc:
        raise InvalidInput(f"bad arguments for {operation}: {exc}") from exc
    # The collection search serves from now (a re-index may have switched it).
    store = services.ingest.vectors
    if operation == "check_room" and not hasattr(store, operation):
        return InternalResult(result=None)  # a store without a disk of its own to manage
    method = getattr(store, operation)
    result = await to_thread.run_sync(lambda: method(**args))
    if operation == "ensure_collection":
        result = {"has_sparse": bool(getattr(store, "has_sparse", False))}
    return InternalResult(result=encode_result(operation, result))
