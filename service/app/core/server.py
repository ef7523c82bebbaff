"""Connection deadlines uvicorn lacks: a slow or idle client cannot hold a connection (and a file descriptor).

uvicorn closes a keep-alive connection that stays idle after a response, but nothing bounds a client that opens a
connection and sends its headers one byte at a time, or never finishes its body (slowloris: 900 such connections
held 60 s, ~20,000 exhausted the process's file descriptors). `GuardedHttpToolsProtocol` adds two deadlines:

- HTTP_HEADER_TIMEOUT_SECONDS: from the connection (or the end of the previous response) until the request's
  headers are complete, however the bytes trickle in;
- HTTP_BODY_IDLE_TIMEOUT_SECONDS: the longest silence while a request body is being received (not counted while
  uvicorn itself has paused reading because the app has not consumed what came);
- HTTP_BODY_MIN_RATE_BYTES: past its first HTTP_BODY_IDLE_TIMEOUT_SECONDS, a body must keep arriving at this many
  bytes per second on average (Apache mod_reqtimeout's MinRate; paused reading not counted). Without it a client
  sending one byte every few seconds never went silent for long enough and held its connection for ever (3,000
  such connections without a key stayed open).

A connection that misses one is closed and counted in rag_http_connections_closed_total{reason}. It subclasses
uvicorn's httptools protocol (uvicorn is pinned; tests/service/test_slow_clients.py runs it on real sockets).

It also answers what the parser refuses with the service's JSON error body instead of uvicorn's plain-text
"Invalid HTTP request received." (which reaches no exception handler: the app never sees the request), and
bounds what uvicorn and llhttp leave unbounded: a URL over MAX_URL_BYTES is a 414 (httptools' URL parser fails
at 64 KiB with that plain 400), and request headers over MAX_HEADER_BYTES in total or MAX_HEADERS in number a
431 (nothing bounded them: a client could stream headers into memory until HTTP_HEADER_TIMEOUT_SECONDS). The
limits are Envoy's defaults (60 KiB of headers, 100 headers), so the Gateway in front of production refuses
the same requests first.

And it sends a response's status line and headers in the same write as the start of its body
(`HeadWithBody`): uvicorn writes them separately, so a small response was two TCP segments, and a client
waiting for it was woken twice (docs/benchmarks.md, "The search route without the framework").
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.app.core.config import get_settings
from service.app.core.metrics import CONNECTIONS_CLOSED

logger = logging.getLogger(__name__)

MAX_URL_BYTES = 16384  # uvicorn's h11 protocol refuses a request line longer than this too
MAX_HEADER_BYTES = 61440
MAX_HEADERS = 100


class HeadWithBody:
    """A request cycle's view of the transport: the response's status line and headers are held until the
    first body write and go out with it, in one write.

    Only a response head (a status line other than 1xx, ending in the blank line) is held, and never past the
    end of the current event-loop iteration (a response whose body comes later, e.g. a stream, gets its head
    then); any other write, and ``close``, sends what is held first, so the order of bytes never changes.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
            return
        if data.startswith(b"HTTP/1.") and data[9:10] != b"1" and data.endswith(b"\r\n\r\n"):
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Refused(httptools.HttpParserError):
    """Raised from a parser callback: uvicorn then answers the 4xx (send_400_response) and closes."""


#: How long, and for how many bytes, a connection whose request was refused keeps reading (and dropping) what the
#: client still sends after the answer, so the close does not reset the answer away (lingering close).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1 << 20


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body-idle deadlines from the settings.

    A module-level class (not one built per call) so uvicorn can hand it to spawned worker processes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout = settings.http_header_timeout_seconds
        self.body_idle_timeout = settings.http_body_idle_timeout_seconds
        self.body_min_rate = settings.http_body_min_rate_bytes
        self._body_started = 0.0
        self._body_bytes = 0
        self._paused_total = (
            0.0  # seconds of this body during which uvicorn paused reading (the app was behind)
        )
        self._paused_since: float | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._in_body = False
        self._url_bytes = 0
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._lingering = -1  # bytes discarded since a refusal's response was sent; -1: not lingering

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, reason: str) -> None:
        self._deadline = None
        if reason == "body_idle" and self.flow.read_paused:
            self._arm(self.body_idle_timeout, reason)  # the app is behind, not the client
            return
        if not self.transport.is_closing():
            CONNECTIONS_CLOSED.labels(reason=reason).inc()
            logger.info("closing a slow connection", extra={"reason": reason, "client": str(self.client)})
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, "header_timeout")
        # Time uvicorn keeps reading paused (its app has not consumed the body yet) is the server's, not the
        # client's: the minimum body rate does not count it.
        flow, pause, resume = self.flow, self.flow.pause_reading, self.flow.resume_reading

        def pause_reading() -> None:
            if not flow.read_paused:
                self._paused_since = self.loop.time()
            pause()

        def resume_reading() -> None:
            if flow.read_paused and self._paused_since is not None:
                self._paused_total += self.loop.time() - self._paused_since
                self._paused_since = None
            resume()

        flow.pause_reading = pause_reading  # type: ignore[method-assign]
        flow.resume_reading = resume_reading  # type: ignore[method-assign]

    def _too_slow(self, received: int) -> bool:
        """Whether the body, ``received`` more bytes now, arrives below HTTP_BODY_MIN_RATE_BYTES on average
        past its first HTTP_BODY_IDLE_TIMEOUT_SECONDS."""
        self._body_bytes += received
        if not self.body_min_rate:
            return False
        now = self.loop.time()
        paused = self._paused_total + (now - self._paused_since if self._paused_since is not None else 0.0)
        late = now - self._body_started - paused - self.body_idle_timeout
        return late > 0 and self._body_bytes < late * self.body_min_rate

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            # The rest of a refused request: read and dropped, so the close is a FIN the client reads the answer
            # before, not a reset that can destroy it (see send_400_response).
            self._lingering += len(data)
            if self._lingering > LINGER_MAX_BYTES:
                self.transport.close()
            return
        if self._in_body:
            if self._too_slow(len(data)):
                self._disarm()
                self._expire("body_slow")
                return
            self._arm(self.body_idle_timeout, "body_idle")
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._url_bytes = self._header_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            self._refuse(414, "uri_too_long", f"the request URL is longer than {MAX_URL_BYTES} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            self._refuse(
                431,
                "request_header_fields_too_large",
                f"request headers are limited to {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes",
            )
        super().on_header(name, value)

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._refusal = (status, code, message)
        raise _Refused(message)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser refused, as the JSON error body every other error has."""
        status, code, message = self._refusal or (400, "bad_request", f"malformed HTTP request: {msg}")
        self._refusal = None
        # Compact, as JSONResponse renders every other error body (one format for clients that compare bytes).
        body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        # A lingering close, as nginx and Apache do: closing a socket whose peer is still sending (the rest of a
        # 70 KB URL or of 5,000 headers) makes the kernel send a reset, and a reset can discard the answer from
        # the client's receive buffer before it is read (seen as ConnectionResetError instead of the 414 on a
        # quiet machine). So: the answer, then a FIN (write_eof), then read and drop what the client still sends
        # until it closes, for at most LINGER_SECONDS and LINGER_MAX_BYTES.
        if self.transport.can_write_eof():
            self._disarm()
            self._lingering = 0
            self.transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def on_headers_complete(self) -> None:
        # Until on_message_complete the body is due (the rest of this very packet may already hold it all).
        self._in_body = True
        self._body_started, self._body_bytes, self._paused_total = self.loop.time(), 0, 0.0
        self._paused_since = self._body_started if self.flow.read_paused else None
        self._arm(self.body_idle_timeout, "body_idle")
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new request's cycle (not an upgrade)
            cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # The next request's headers get the same deadline (uvicorn's keep-alive timer stops at its first byte).
            self._arm(self.header_timeout, "header_timeout")
