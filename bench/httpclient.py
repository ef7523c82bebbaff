"""A minimal keep-alive HTTP/1.1 client for the search benchmarks (the standard library's http.client).

Why a second client: the benchmarks compare the service over HTTP with an in-process raw path, so whatever the
client itself spends per request counts against the service. httpx, which the benchmarks used alone until
2026-11-26, spends ~2 ms of Python per request on this machine (request and response models, header
normalisation, its transport and pool layers), measured side by side with this client against the same server
in bench/ingest_search.py and bench/scale.py. This client is one persistent socket and ~20 lines: what a
latency-sensitive caller (a Go or Rust service, curl with keep-alive, a tuned Python client) would spend. The
benchmarks report BOTH clients' numbers, so httpx's cost stays visible and nothing the service spends is hidden:
the server-side time of every request is in the service's own /metrics either way.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


class HTTPStatusError(RuntimeError):
    """A non-2xx answer (the benchmark stops: it must not time errors as searches)."""


class KeepAliveClient:
    """One keep-alive connection; requests are sent one at a time (one client per thread)."""

    def __init__(self, base_url: str, timeout: float = 60) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def post_json(self, path: str, body: Any) -> bytes:
        """POST ``body`` as JSON; the response body (HTTPStatusError unless 2xx)."""
        return self._request("POST", path, json.dumps(body).encode(), {"content-type": "application/json"})

    def get(self, path: str) -> bytes:
        return self._request("GET", path, None, {})

    def _request(self, method: str, path: str, payload: bytes | None, headers: dict[str, str]) -> bytes:
        for attempt in (1, 2):
            reused = self._connection is not None
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                self._connection.request(method, path, body=payload, headers=headers)
                response = self._connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closes keep-alive connections idle longer than HTTP_KEEP_ALIVE_SECONDS: reconnect
                # once (the benchmarks only send idempotent requests). A fresh connection failing is an error.
                self.close()
                if reused and attempt == 1:
                    continue
                raise
            if response.will_close:
                self.close()
            if not 200 <= response.status < 300:
                raise HTTPStatusError(f"{method} {path}: {response.status} {data[:300]!r}")
            return data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
