"""Admin routes (cross-tenant): the blue/green re-index. Logic lives in service.app.jobs.reindex.

They take the ADMIN_API_KEY as bearer token (never a tenant's key); without ADMIN_API_KEY they refuse (403),
unless AUTH_DISABLED=true (local runs).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from service.app.api.deps import ServicesDep
from service.app.api.routing import AuthenticatedRoute
from service.app.core.errors import Forbidden, InvalidInput, error_responses
from service.app.core.security import InvalidApiKey, MissingApiKey, bearer_token
from service.app.ingest.index import IndexConfig


async def require_admin(request: Request) -> None:
    """401 without a bearer token, 403 when no ADMIN_API_KEY is configured, 401 for a wrong key. With
    AUTH_DISABLED (`make serve`) the routes are open only while no ADMIN_API_KEY is set: a key that is set is
    always checked (EYES9 L4: it was ignored, so `HOST=0.0.0.0 make serve` with a key left re-indexing open)."""
    settings = request.app.state.services.settings
    if settings.auth_disabled and settings.admin_api_key is None:
        return
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise MissingApiKey("missing admin key: send `Authorization: Bearer <ADMIN_API_KEY>`")
    if settings.admin_api_key is None:
        raise Forbidden("admin routes are disabled: set ADMIN_API_KEY")
    if not hmac.compare_digest(token.encode(), settings.admin_api_key.get_secret_value().encode()):
        raise InvalidApiKey("invalid admin key")


# Its own scheme (not the tenants' `bearer`): Swagger UI's "Authorize" then asks for the ADMIN_API_KEY here.
admin_scheme = HTTPBearer(
    scheme_name="admin",
    bearerFormat="ADMIN_API_KEY",
    description="The ADMIN_API_KEY (never a tenant's key), sent as `Authorization: Bearer <key>`.",
    auto_error=False,
)


async def declare_admin_scheme(
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(admin_scheme)],
) -> None:
    """Declares the admin scheme in the OpenAPI document (require_admin does the checking)."""


def admin_dependencies(*, auth_disabled: bool) -> list[Any]:
    """What main includes the router with: the open API (AUTH_DISABLED) claims no scheme, like /v1."""
    return [] if auth_disabled else [Depends(declare_admin_scheme)]


# require_admin also runs before a route reads its body (service.app.api.routing): a ReindexRequest that is not
# JSON from a caller without the admin key is a 401, not a 422.
require_admin.before_body = require_admin  # type: ignore[attr-defined]
router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)], route_class=AuthenticatedRoute
)


class ReindexRequest(BaseModel):
    """Body of POST /v1/admin/reindex: what to change; omitted fields keep the current index's value."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, min_length=1, max_length=256, description="fastembed model name")
    chunk_size: StrictInt | None = Field(None, ge=16, le=8192, description="tokens per chunk")
    chunk_overlap: StrictInt | None = Field(None, ge=0, le=8192, description="tokens shared by neighbours")
    allow_missing: StrictBool = Field(
        False, description="switch even if some documents have no kept text (they drop out of search)"
    )


class ReindexStatusOut(BaseModel):
    """State and progress of the re-index, the index search serves from, and the rollback target."""

    state: str = Field(
        description="idle, waiting (another replica holds the re-index lease), building, catching_up, "
        "switching, switched, failed, rolled_back or interrupted (a build whose builder died before it "
        "switched and that is not being resumed: `error` says why and what to do); `building` on a replica "
        "that is not the builder means another replica builds (progress is on that replica)"
    )
    current: dict[str, Any]
    standby: dict[str, Any] | None
    target: dict[str, Any] | None
    documents_total: int
    documents_done: int
    documents_replayed: int
    documents_without_text: int
    without_text: list[str]
    error: str | None
    builder: str | None = Field(
        None, description="the replica holding the re-index lease (it builds), or null when none does"
    )
    replica: str = Field("", description="this replica's lease holder id (host:pid:random)")
    attempt: int = Field(
        0,
        description="1 for a fresh build; n when it continues a build that was interrupted n-1 times (its "
        "builder died: kill -9, out of memory, a lost node); 0 before any build",
    )
    resumed_from: str | None = Field(
        None, description="the replica whose interrupted build this one continues (into the same collection)"
    )
    started_at: Any
    finished_at: Any
    serving: dict[str, Any] | None = Field(
        None,
        description="The persisted index pointer every replica follows (collection + config); `current` is "
        "what this replica serves, which follows the pointer within INDEX_POINTER_TTL_SECONDS",
    )
    chosen_by: str | None = Field(
        None,
        description="who chose the served index: `config` (it follows the deployed settings), `rollback` or "
        "`manual` (an operator, through this API, chose one that differs from the deployed settings)",
    )
    pinned_settings: dict[str, Any] | None = Field(
        None,
        description="for an operator's choice: the deployed settings (model, chunk_size, chunk_overlap) it was "
        "made against. Start-ups keep serving it (no re-index towards the settings) until the stack's settings "
        "differ from these",
    )
    settings: dict[str, Any] | None = Field(
        None, description="this replica's deployed settings (EMBEDDING_MODEL, CHUNK_SIZE, CHUNK_OVERLAP)"
    )
    startup: str | None = Field(
        None, description="why this replica's start-up did or did not re-index towards its settings"
    )


def _status(services: Any) -> dict[str, Any]:
    """This replica's status and the persisted pointer: both read the registry (the status follows the pointer
    first), so this runs in a worker thread, never on the event loop."""
    status = services.reindexer.status().as_dict()
    pointer = services.registry.index_pointer()
    serving = None if pointer is None else {"collection": pointer.collection, **pointer.config}
    return {**status, "serving": serving}


@router.get("/reindex", response_model=ReindexStatusOut)
async def reindex_status(services: ServicesDep) -> ReindexStatusOut:
    """The re-index's state and progress (this replica's), the index pointer all replicas follow, and who
    chose the served index."""
    return ReindexStatusOut(**await to_thread.run_sync(lambda: _status(services)))


@router.post(
    "/reindex",
    status_code=202,
    response_model=ReindexStatusOut,
    responses=error_responses(401, 403, 409, 415, 422),
)
async def start_reindex(body: ReindexRequest, services: ServicesDep) -> ReindexStatusOut:
    """Build the index for a new model/chunking in the background; search switches when it is complete."""
    current = services.reindexer.index.current.config
    config = IndexConfig(
        body.model or current.model,
        body.chunk_size if body.chunk_size is not None else current.chunk_size,
        body.chunk_overlap if body.chunk_overlap is not None else current.chunk_overlap,
    )
    if config.chunk_overlap >= config.chunk_size:
        # The same rule as CHUNK_OVERLAP/CHUNK_SIZE at start-up: an overlap as large as the chunk never advances.
        raise InvalidInput(
            f"chunk_overlap ({config.chunk_overlap}) must be below chunk_size ({config.chunk_size})",
            chunk_size=config.chunk_size,
            chunk_overlap=config.chunk_overlap,
        )
    status = await to_thread.run_sync(
        lambda: services.reindexer.start(config, allow_missing=body.allow_missing)
    )
    return ReindexStatusOut(**status.as_dict())


@router.post(
    "/reindex/rollback", response_model=ReindexStatusOut, responses=error_responses(401, 403, 409, 422)
)
async def rollback_reindex(services: ServicesDep) -> ReindexStatusOut:
    """Serve from the previous index again (it kept receiving every write)."""
    status = await to_thread.run_sync(services.reindexer.rollback)
    return ReindexStatusOut(**status.as_dict())
