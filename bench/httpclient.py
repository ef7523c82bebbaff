"""A minimal keep-alive HTTP/1.1 client for the search benchmarks: one socket, responses parsed by httptools.

Why a second client: the benchmarks compare the service over HTTP with an in-process raw path, so whatever the
client itself spends per request counts against the service. httpx, which the benchmarks used alone until
2026-11-26, spends ~2 ms of Python per request on this machine (request and response models, header
normalisation, its transport and pool layers), measured side by side with this client against the same server
in bench/ingest_search.py and bench/scale.py. The standard library's ``http.client``, this client until
2026-11-27, still spent ~300-400 µs of CPU per search on a 5 ms-paced benchmark (its ``email``-based header
parser, buffered file objects, a request assembled in several writes); this one sends each request as one
``sendall`` of prebuilt bytes and feeds the answer to httptools' response parser (llhttp, the C parser uvicorn
runs on the server side): ~100-150 µs (docs/benchmarks.md, "Where one small-collection search goes"). It is
still a whole HTTP/1.1 exchange on a kept-alive TCP connection (status line, headers, a Content-Length or
chunked body, ``Connection: close`` honoured): what a latency-sensitive caller (a Go or Rust service, curl with
keep-alive, a tuned Python client) would spend. The benchmarks report httpx's figure beside it, so httpx's cost
stays visible and nothing the service spends is hidden: the server-side time of every request is in the
service's own /metrics either way.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httptools


class HTTPStatusError(RuntimeError):
    """A non-2xx answer (the benchmark stops: it must not time errors as searches)."""


class ConnectionDropped(ConnectionError):
    """The server closed the connection before a whole response arrived."""


class _Response:
    """httptools callbacks: the body, whether the connection stays open and whether the message is complete."""

    __slots__ = ("body", "complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete, httptools' should_keep_alive() answers False whatever it was.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class KeepAliveClient:
    """One keep-alive connection; requests are sent one at a time (one client per thread)."""

    def __init__(self, base_url: str, timeout: float = 60) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._timeout = timeout
        self._authority = f"{self._host}:{self._port}".encode("ascii")
        self._socket: socket.socket | None = None

    def post_json(self, path: str, body: Any) -> bytes:
        """POST ``body`` as JSON; the response body (HTTPStatusError unless 2xx)."""
        return self._request(b"POST", path, json.dumps(body).encode(), b"content-type: application/json\r\n")

    def put_json(self, path: str, body: Any) -> bytes:
        """PUT ``body`` as JSON; the response body (HTTPStatusError unless 2xx)."""
        return self._request(b"PUT", path, json.dumps(body).encode(), b"content-type: application/json\r\n")

    def get(self, path: str) -> bytes:
        return self._request(b"GET", path, None, b"")

    def _request(self, method: bytes, path: str, payload: bytes | None, headers: bytes) -> bytes:
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s" % (method, path.encode("ascii"), self._authority, headers)
        if payload is not None:
            head += b"content-length: %d\r\n" % len(payload)
        message = head + b"\r\n" + (payload or b"")
        for attempt in (1, 2):
            reused = self._socket is not None
            if self._socket is None:
                self._socket = socket.create_connection((self._host, self._port), timeout=self._timeout)
                self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._socket.sendall(message)
                status, data, keep_alive = self._read_response(self._socket)
            except (ConnectionDropped, ConnectionResetError, BrokenPipeError):
                # The server closes keep-alive connections idle longer than HTTP_KEEP_ALIVE_SECONDS: reconnect
                # once (the benchmarks only send idempotent requests). A fresh connection failing is an error.
                self.close()
                if reused and attempt == 1:
                    continue
                raise
            if not keep_alive:
                self.close()
            if not 200 <= status < 300:
                raise HTTPStatusError(f"{method.decode()} {path}: {status} {data[:300]!r}")
            return data
        raise AssertionError("unreachable")

    @staticmethod
    def _read_response(connection: socket.socket) -> tuple[int, bytes, bool]:
        """The status, body and keep-alive of the next response on ``connection``."""
        response = _Response()
        while not response.complete:
            data = connection.recv(65536)
            if not data:
                raise ConnectionDropped("the server closed the connection before a whole response")
            response.parser.feed_data(data)
        return response.parser.get_status_code(), b"".join(response.body), response.keep_alive

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
