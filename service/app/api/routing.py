"""The /v1 routes' route class: authenticate (401/403) and spend the rate limit (429) before the body is read.

FastAPI reads and parses a route's JSON body before it resolves any dependency, the router's authentication
and rate limit included. So a caller without a key who sent malformed JSON to POST /v1/search, /v1/answer or
/v1/admin/reindex got a 422 from the parser instead of the 401, the body of an unauthenticated request was
read and parsed at all, and such a request spent no rate budget while a well-formed one did.

`AuthenticatedRoute` runs the checks its dependencies declare as ``before_body`` (the router's `rate_limit`
dependency, `require_admin`) first, then FastAPI's own handling: body, dependencies, validation, the endpoint.
The dependencies still run inside FastAPI too (they declare the security schemes in the OpenAPI document);
`service.app.core.security.charge` spends once per request however often it runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.params import Depends
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

BeforeBody = Callable[[Request], Awaitable[Any]]


def before_body_checks(dependencies: Sequence[Depends]) -> list[BeforeBody]:
    """The checks ``dependencies`` ask to run before the request body is read, in their order."""
    found = (getattr(dependency.dependency, "before_body", None) for dependency in dependencies)
    return [check for check in found if check is not None]


class AuthenticatedRoute(APIRoute):
    """An APIRoute whose ``before_body`` dependencies (authentication, rate limit) run before its body is read."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        checks = before_body_checks(self.dependencies)
        if not checks:
            return handler

        async def authenticated(request: Request) -> Response:
            for check in checks:
                await check(request)
            return await handler(request)

        return authenticated
