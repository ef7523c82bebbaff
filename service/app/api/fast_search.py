"""POST /v1/search in plain ASGI: the route's own checks, parsing, errors and response, without FastAPI's
per-request machinery.

A search is the hot path, and with one client everything on the event loop is on its critical path. FastAPI
spends ~330 Python calls of routing, exit stacks, dependency solving and body-field handling per search
(docs/benchmarks.md, "The fixed cost of one search"), for a route whose work is: authenticate, spend the rate
limit, read the body, parse and validate it, run the search, send the bytes. `FastSearch` does exactly that
with the functions the route uses:

- authentication and the rate limit: the ``before_body`` checks of the route's own dependencies
  (`service.app.core.security.charge`), before the body is read, as every /v1 route does them
  (service.app.api.routing);
- the body: read through the same receive chain (the body-size limit's 413 while it streams in); a body not
  declared as JSON is the 415 `not_json` names; JSON that does not parse, or a body that does not validate
  against `SearchRequest`, is the `RequestValidationError` FastAPI raises, with the same error entries;
- errors: the app's own exception handlers (`service.app.core.errors`), looked up as Starlette's exception
  middleware looks them up; anything unexpected propagates to RequestContextMiddleware's logged 500, as from
  any route;
- the response: the search's JSON bytes, serialised once, with the headers Starlette's `Response` sends;
- FastAPI's native OpenTelemetry (on when an operator configures a provider): the span gets the route
  (``http.route``, its name) and a validation failure its event, through the same FastAPI functions its
  routing calls (FastAPI is pinned; tests/service/test_fast_search.py checks the span).

It sits innermost in the middleware stack, so the request id, security headers, access log, HTTP metrics (under
the route's template: ``scope["route"]`` is the real route), CORS and the body-size limit wrap it as they wrap
every route. Anything but ``POST /v1/search`` (another method, a trailing slash, a root path) goes to the
framework unchanged. tests/service/test_fast_search.py sends the same requests, good and bad, through it and
through the FastAPI route and requires identical answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app.api.deps import services_of, tenant_of
from service.app.api.otel import route_selected, validation_failed
from service.app.api.routes import search
from service.app.api.routing import before_body_checks
from service.app.core.errors import not_json
from service.app.search.models import SearchRequest, SearchResponse

SEARCH_PATH = "/v1/search"
_RESPONSE = TypeAdapter(SearchResponse)


def search_route(router: Any = search.router) -> APIRoute:
    """The FastAPI route of POST /v1/search (its template labels the metrics; its dependencies are the checks)."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path == SEARCH_PATH and "POST" in route.methods:
            return route
    raise LookupError(f"no POST {SEARCH_PATH} route")


def declares_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON as FastAPI reads it: ``application/json`` or ``application/<x>+json``,
    parameters (``; charset=utf-8``) and case aside."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    maintype, _, subtype = media_type.partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_search_request(body: bytes, content_type: str | None) -> SearchRequest:
    """The validated request, or the exception FastAPI's route raises for this body (same type, same errors)."""
    if not body:
        # FastAPI: no body at all is the required body field missing.
        errors = [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        raise RequestValidationError(errors, body=None)
    if not declares_json(content_type):
        # FastAPI hands the raw bytes to validation (strict_content_type); the app's handler answers 415.
        raise not_json(content_type)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        errors = [
            {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
        ]
        raise RequestValidationError(errors, body=exc.doc) from exc
    except Exception as exc:  # not UTF-8, an integer over 4300 digits, nested too deeply: as FastAPI
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    try:
        # from_attributes as FastAPI validates a body field (it only changes the message for a non-object).
        return SearchRequest.model_validate(value, from_attributes=True)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=value) from exc


def exception_handler(app: Any, exc: Exception) -> Callable[..., Any] | None:
    """The app's handler for ``exc`` (nearest class first), as Starlette's ExceptionMiddleware finds it; None for
    what only the catch-all `Exception` handler would take (that one answers outside the middleware: unexpected
    errors reach RequestContextMiddleware's logged 500, as they do from any route)."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None


class FastSearch:
    """ASGI middleware answering ``POST /v1/search`` itself (module docstring); everything else passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = search_route()
        self.checks = before_body_checks(self.route.dependencies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SEARCH_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        route_selected(scope=scope, path=SEARCH_PATH)
        request = Request(scope, receive)
        try:
            for check in self.checks:
                await check(request)  # 401, then 429: before the body is read
            query = parse_search_request(await request.body(), request.headers.get("content-type"))
            result = await services_of(request).search.search(tenant_of(request), query)
            payload = _RESPONSE.dump_json(result)
        except Exception as exc:
            if isinstance(exc, RequestValidationError):
                validation_failed(exc)
            handler = exception_handler(scope["app"], exc)
            if handler is None:
                raise
            response = await handler(request, exc)
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(payload)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
