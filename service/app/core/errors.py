"""Domain errors of the service and the one place they become HTTP responses.

Hierarchy (raise these from services and adapters; routes stay thin):

    RagError(Exception)            500 internal         base: ``status_code``, ``code``, ``message``, ``details``
    ├── BadRequest                 400 bad_request      the HTTP request is ambiguous (two Authorization headers)
    ├── InvalidInput               422 invalid_input    the request is well-formed HTTP but the content is unusable
    ├── NotFound                   404 not_found        unknown document (in this tenant)
    ├── PayloadTooLarge            413 payload_too_large body over MAX_DOCUMENT_BYTES
    ├── UnsupportedMediaType       415 unsupported_media_type  a content type we cannot extract text from
    ├── Conflict                   409 conflict         a concurrent write won
    ├── Unauthorized               401 unauthorized     missing/unknown API key
    ├── Forbidden                  403 forbidden        key valid but not allowed
    ├── RateLimited                429 rate_limited     carries ``retry_after`` seconds (sent as Retry-After)
    └── ServiceUnavailable         503 service_unavailable  a backend (vector store, registry, embedder) failed;
        │                                                nothing visible changed, the client may retry
        └── DiskFull               503 service_unavailable  ... for want of disk space (``"disk_full": true``)

Every error response has the body ``{"error": {"code": ..., "message": ..., **details}}`` where ``message`` is a
human-readable reason. Request validation errors (bad JSON, wrong types) map to 422 ``invalid_input`` with the
offending fields listed, except a body that is not declared as JSON on a JSON route: 415
``unsupported_media_type`` naming the Content-Type to send; anything unexpected is logged with its traceback and answered with a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

logger = logging.getLogger(__name__)


class RagError(Exception):
    """Base of all domain errors; subclasses fix the HTTP status and the machine-readable code."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def headers(self) -> dict[str, str] | None:
        """Extra response headers for this error (none by default)."""
        return None


class BadRequest(RagError):
    """The HTTP request itself is ambiguous or malformed (e.g. two Authorization headers)."""

    status_code = 400
    code = "bad_request"


class InvalidInput(RagError):
    """The request content is unusable (empty text, bad metadata, unreadable PDF...)."""

    status_code = 422
    code = "invalid_input"


class NotFound(RagError):
    """The addressed resource does not exist in the caller's tenant."""

    status_code = 404
    code = "not_found"


class PayloadTooLarge(RagError):
    """The request body is larger than MAX_DOCUMENT_BYTES."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(RagError):
    """The content type is not one we can extract text from."""

    status_code = 415
    code = "unsupported_media_type"


class Conflict(RagError):
    """A concurrent write to the same resource won; retrying is safe."""

    status_code = 409
    code = "conflict"


class Unauthorized(RagError):
    """No or an unknown API key."""

    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(RagError):
    """The API key is valid but not allowed to do this."""

    status_code = 403
    code = "forbidden"


class RateLimited(RagError):
    """Too many requests for this API key; ``retry_after`` is in seconds."""

    status_code = 429
    code = "rate_limited"

    def __init__(
        self, message: str, retry_after: int | None = None, *, quota: Any = None, **details: Any
    ) -> None:
        if retry_after is not None:
            details["retry_after"] = retry_after
        super().__init__(message, **details)
        self.retry_after = retry_after
        # The caller's ratelimit.Quota, sent as RateLimit-* headers by the middleware (not part of the body).
        self.quota = quota

    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(RagError):
    """A backend failed; nothing visible changed and the request can be retried."""

    status_code = 503
    code = "service_unavailable"

    def headers(self) -> dict[str, str] | None:
        retry_after = self.details.get("retry_after")
        return None if retry_after is None else {"Retry-After": str(retry_after)}


class DiskFull(ServiceUnavailable):
    """A write refused for want of disk space (the embedded store's volume below READY_MIN_FREE_BYTES, the
    registry's database full). Space comes back only when someone frees it: an ingestion job waits for it
    without spending its attempts (service.app.jobs.queue). The body says so (``"disk_full": true``), so a
    worker writing through the owning API's store (service.app.store.remote) knows it too."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details, disk_full=True)


class ErrorDetail(BaseModel):
    """The ``error`` object: a machine-readable code, a human-readable reason, and code-specific details."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Body of every error response."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "ambiguous request, e.g. more than one Authorization header",
    401: "missing or unknown API key",
    403: "the route is disabled or the key may not use it",
    404: "unknown resource (in the caller's tenant)",
    409: "a concurrent write to the same document won; retrying is safe",
    413: "request body over the size limit",
    415: "unsupported content type",
    422: "invalid input; the message names the offending field",
    429: "rate limit exceeded; see Retry-After",
    503: "a backend failed; nothing visible changed and the request can be retried",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting these error statuses with the shared error body.

    Listing 422 here also replaces FastAPI's default ``HTTPValidationError`` schema, which this service never
    sends (validation errors use the same error body as everything else).
    """
    return {
        status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses
    }


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The JSON body shared by every error response."""
    return {"error": {"code": code, "message": message, **jsonable_encoder(details)}}


async def _rag_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RagError)
    if exc.status_code >= 500:
        logger.warning("request failed: %s: %s", exc.code, exc.message)
    return JSONResponse(
        error_body(exc.code, exc.message, **exc.details), status_code=exc.status_code, headers=exc.headers()
    )


def _describe_validation_error(error: dict[str, Any]) -> dict[str, Any]:
    # Only location, message and type: echoing the input back could reflect a 10 MB body.
    return {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}


def not_json(declared: str | None) -> UnsupportedMediaType:
    """The 415 for a JSON route whose body is declared as something else (``declared``) or not declared."""
    media_type = (declared or "").split(";", 1)[0].strip().lower()
    what = f"not {media_type or declared!r}" if declared else "declared with no Content-Type"
    return UnsupportedMediaType(
        f"the body must be JSON with Content-Type: application/json, {what} "
        "(curl: add -H 'Content-Type: application/json'); upload a file with POST /v1/documents "
        "(multipart/form-data)"
    )


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if isinstance(exc.body, bytes) and exc.body:
        # FastAPI hands a JSON route its body as raw bytes only when the Content-Type is not JSON (or missing:
        # strict_content_type, which keeps a cross-site form or beacon from posting JSON without a CORS
        # preflight). The validation error would say "Input should be a valid dictionary"; the client's mistake
        # is the header, as PUT and documents:bulk report it (no cost on requests that validate).
        return await _rag_error_handler(request, not_json(request.headers.get("content-type")))
    raw = exc.errors()
    errors = [_describe_validation_error(e) for e in raw]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    if raw and raw[0].get("type") == "json_invalid":
        # FastAPI's entry for a body json.loads refused: loc ("body", character offset), msg "JSON decode
        # error", the parser's reason in ctx. "0: JSON decode error" named neither the problem nor the place.
        reason = (raw[0].get("ctx") or {}).get("error") or first["msg"]
        position = first["loc"][-1] if len(first["loc"]) > 1 else None
        at = f" (at character {position})" if isinstance(position, int) else ""
        message = f"body is not valid JSON: {reason}{at}"
    else:
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        message = f"{where}: {first['msg']}"
    return JSONResponse(error_body("invalid_input", message, errors=errors), status_code=422)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first matching route's).

    Asked of the router itself, one method at a time, so included routers and prefixes need no special case.
    """
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, ValueError | RecursionError):
        # FastAPI's 400 "There was an error parsing the body" for a JSON body json.loads cannot take (not UTF-8,
        # an integer over 4300 digits, nested too deeply): bad JSON is a 422 here, as on every other route.
        reason = "nested too deeply" if isinstance(cause, RecursionError) else str(cause)
        return JSONResponse(error_body("invalid_input", f"body is not valid JSON: {reason}"), status_code=422)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        # /v1/documents/{id} is served by three routes (PUT, GET, DELETE): the Allow header must list all.
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers or None
    )


CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away before the answer; never sent


async def _client_disconnect_handler(request: Request, _exc: Exception) -> Response:
    # Not a server error: the client closed the connection mid-body (a cancelled upload, a timeout on its side).
    logger.info("client disconnected before the request was read", extra={"path": request.url.path})
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors, HTTP errors and anything unexpected to the JSON error body."""
    app.add_exception_handler(RagError, _rag_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(ClientDisconnect, _client_disconnect_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)
