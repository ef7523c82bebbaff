"""FastAPI's native OpenTelemetry hooks for a route answered outside its routing (service.app.api.fast_search).

FastAPI 0.165 names a request's span after its route and records validation failures from inside its routing
and request handler, through two functions of its private telemetry module. A route answered in plain ASGI
calls the same two; FastAPI is pinned exactly (requirements.txt), and if a release moves them these become
no-ops rather than a failure to start (the span then only lacks the route, as with any unmatched request).
"""

from __future__ import annotations

from typing import Any

try:
    from fastapi.telemetry._api import _route_selected, _validation_failed
except ImportError:  # pragma: no cover - a FastAPI without native telemetry

    def _route_selected(*, scope: Any, path: str | None, mount: bool = False) -> None:
        return None

    def _validation_failed(exc: Any) -> None:
        return None


def route_selected(*, scope: Any, path: str) -> None:
    """Tell FastAPI's telemetry (when on) which route template serves this request."""
    _route_selected(scope=scope, path=path)


def validation_failed(exc: Any) -> None:
    """Record a request-validation failure on FastAPI's telemetry (when on), as its request handler does."""
    _validation_failed(exc)
