"""HTTP hygiene as pure ASGI middleware: request ids, access logs, HTTP metrics, security headers, rate-limit
headers, CORS, and a request-body size limit enforced while the body streams in.

Order (outermost first): RequestContext -> CORS -> BodySizeLimit -> FastSearch -> the app. FastSearch
(service.app.api.fast_search) answers POST /v1/search itself, inside every other layer. RequestContext is outermost so
every response, including CORS preflights, 413s and unexpected 500s, carries `X-Request-ID` and the security
headers, and is counted in `rag_http_requests_total` under its route *template* (`/v1/documents/{document_id}`),
never the raw path, which would explode label cardinality.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app.api.fast_search import FastSearch
from service.app.core.config import Settings
from service.app.core.errors import error_body
from service.app.core.logging import CUT_AFTER_RESPONSE_STARTED, request_id_var
from service.app.core.metrics import REQUEST_SECONDS, REQUESTS
from service.app.core.ratelimit import RATE_LIMIT_HEADERS

logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The global backstop sits above the routes' own limits (MAX_DOCUMENT_BYTES, + 64 KiB for a multipart envelope)
# so those answer first with their precise message; this one guards every other route before any code runs.
BODY_LIMIT_SLACK_BYTES = 128 * 1024
#: scope["state"] key set, to why and with what consequence, on a request the shutdown cut (here on uvicorn's cancel
#: past SHUTDOWN_GRACE_SECONDS; by a streamed answer that sse-starlette ended at shutdown): logged as one WARNING
#: line instead of the access line.
SHUT_DOWN = "cut_by_shutdown"
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")
QUIET_PATHS = (
    "/healthz",
    "/readyz",
    "/readyz/serving",
    "/metrics",
)  # probes and scrapes: access-logged at DEBUG

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The Swagger UI page loads its bundle from /docs/static (no CDN) and bootstraps it with an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"


def valid_request_id(value: str | None) -> str:
    """The client's X-Request-ID when it is a safe token, else a fresh one (never trust it into logs raw)."""
    if value and _REQUEST_ID_RE.fullmatch(value):
        return value
    return uuid.uuid4().hex


def security_headers(settings: Settings, path: str) -> list[tuple[bytes, bytes]]:
    """Headers added to every response; HSTS only outside development (local HTTP must keep working)."""
    csp = DOCS_CSP if path.startswith(DOCS_PATHS) and settings.resolved_docs_enabled else API_CSP
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", csp.encode()),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]
    if settings.environment != "development":
        headers.append((b"strict-transport-security", HSTS.encode()))
    return headers


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    # Rendered by JSONResponse, as the routes' error handlers render theirs: one error format byte for byte
    # (`json.dumps` with its default separators wrote `{"error": {` here and `{"error":{` there; EYES10).
    payload = JSONResponse(body).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestContextMiddleware:
    """Request id (validated or generated, echoed), security headers, access log, HTTP metrics, last-resort 500."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        # The security headers depend only on the settings and whether the path is a docs page: built once.
        self._api_headers = security_headers(settings, "/")
        self._docs_headers = security_headers(settings, DOCS_PATHS[0])
        # Metric children per label set: `labels()` costs a lock and a dict build on every request.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                raw = value  # the last one, as dict(headers) had it
        request_id = valid_request_id(raw.decode("latin-1") if raw is not None else None)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        path = scope["path"]
        extra_headers = [
            (b"x-request-id", request_id.encode()),
            *(self._docs_headers if path.startswith(DOCS_PATHS) else self._api_headers),
        ]
        status = 500
        started = False
        cut_answered = False
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                present = {name.lower() for name, _ in message.get("headers", [])}
                # Set by the rate_limit dependency on every /v1 request it checked, 429s included.
                quota = scope["state"].get("rate_limit_quota")
                message["headers"] = [
                    *message.get("headers", []),
                    *(h for h in extra_headers if h[0] not in present),
                    *(quota.headers() if quota is not None else ()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            # Only uvicorn cancels a request's task: at shutdown, past SHUTDOWN_GRACE_SECONDS. Re-raised, it
            # reached uvicorn as an "Exception in ASGI application" traceback (and a 500 in the access log and
            # the metrics); here it is one line saying what was cut, the client gets a 503 when nothing was sent
            # yet, and the task ends (the process is going down: nothing waits on it).
            scope["state"][SHUT_DOWN] = (
                f"still running SHUTDOWN_GRACE_SECONDS={self.settings.shutdown_grace_seconds:g} after the signal; "
                "what it had committed stays stored, the rest was not written"
            )
            if not started:
                status, cut_answered = 503, True
                await _send_json(
                    send,
                    503,
                    error_body(
                        "service_unavailable",
                        "the service shut down before this request finished; what it had stored stays "
                        "stored, send it again to finish it",
                    ),
                    [(b"connection", b"close"), (b"retry-after", b"1"), *extra_headers],
                )
        except Exception:
            # Starlette's ServerErrorMiddleware sits outside us and would answer without our headers.
            logger.exception("unhandled error", extra={"path": path})
            if started:
                raise
            status = 500
            await _send_json(send, 500, error_body("internal", "internal server error"), extra_headers)
        finally:
            elapsed = time.perf_counter() - start
            route = _route_template(scope)
            method = scope["method"]
            counter = self._counters.get((route, method, status))
            if counter is None:
                counter = self._counters[(route, method, status)] = REQUESTS.labels(
                    route=route, method=method, status=str(status)
                )
            counter.inc()
            timer = self._timers.get((route, method))
            if timer is None:
                timer = self._timers[(route, method)] = REQUEST_SECONDS.labels(route=route, method=method)
            timer.observe(elapsed)
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            if scope["state"].get(SHUT_DOWN):  # one line saying what was cut, instead of the access line
                self._log_cut(scope, path, elapsed, answered=cut_answered)
            elif logger.isEnabledFor(level):
                logger.log(
                    level,
                    "%s %s %s",
                    method,
                    path,
                    status,
                    extra={
                        "method": method,
                        "path": path,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "tenant": scope.get("state", {}).get("tenant"),
                        # The API key's id (service.app.core.security.key_id), never the key; None without one.
                        "key_id": scope.get("state", {}).get("key_id"),
                    },
                )
            request_id_var.reset(token)

    def _log_cut(self, scope: Scope, path: str, elapsed: float, *, answered: bool) -> None:
        if not answered:
            CUT_AFTER_RESPONSE_STARTED.set(True)  # uvicorn's line about the incomplete response is dropped
        state = scope.get("state", {})
        progress = state.get("progress")
        method = scope["method"]
        logger.warning(
            "shutdown cut %s %s after %.1f s in flight, %s: %s%s",
            method,
            path,
            elapsed,
            "answered 503" if answered else "its response was cut short (the connection is closed)",
            state[SHUT_DOWN],
            f" ({progress})" if progress else "",
            extra={
                "method": method,
                "path": path,
                "route": _route_template(scope),
                "tenant": state.get("tenant"),
                "key_id": state.get("key_id"),
                "duration_ms": round(elapsed * 1000, 2),
                "cut": True,
            },
        )


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body crosses the limit; an HTTPException so FastAPI re-raises it as is."""

    def __init__(self, limit: int, message: str) -> None:
        super().__init__(413, message)
        self.limit = limit


class BodySizeLimitMiddleware:
    """Rejects bodies over `max_bytes` with 413: at once from Content-Length, else as soon as the streamed
    (e.g. chunked) body crosses the limit, without reading the rest."""

    def __init__(self, app: ASGIApp, max_bytes: int, derived_from: str = "") -> None:
        self.app = app
        self.max_bytes = max_bytes
        # The limit is derived from settings; a bare number (10131072) named nothing the client could look up.
        self.message = f"request body exceeds the limit of {max_bytes} bytes{derived_from}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes, self.message)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Normally the app's handler already answered 413; this covers code that swallowed nothing but
            # let the exception escape (e.g. a route streaming the body itself without handlers).
            if started:
                raise
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        await _send_json(
            send,
            413,
            error_body(
                "payload_too_large",
                self.message,
                limit=self.max_bytes,
            ),
            [(b"connection", b"close")],
        )


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Add the HTTP hygiene middleware in the documented order (last added runs outermost), and FastSearch
    innermost."""
    app.add_middleware(FastSearch)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=max(settings.max_document_bytes, settings.bulk_max_bytes) + BODY_LIMIT_SLACK_BYTES,
        derived_from=f" (the larger of MAX_DOCUMENT_BYTES ({settings.max_document_bytes}) and BULK_MAX_BYTES "
        f"({settings.bulk_max_bytes}), plus {BODY_LIMIT_SLACK_BYTES} bytes for the request's envelope)",
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After", *RATE_LIMIT_HEADERS],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, settings=settings)
