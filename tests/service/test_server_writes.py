"""The server sends a response's head with the start of its body in one write (service.app.core.server
.HeadWithBody), on a real uvicorn server and real sockets: the bytes a client reads are unchanged for every kind
of response (small, streamed, HEAD, 204, 100-continue, pipelined, connection: close), and a small response is
one write to the transport, not two."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service.app.core.server import GuardedHttpToolsProtocol, HeadWithBody

WRITES: list[bytes] = []


class RecordingTransport:
    """The socket transport, recording each write the protocol's request cycles make."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RecordingProtocol(GuardedHttpToolsProtocol):
    def on_headers_complete(self) -> None:
        real = self.transport
        self.transport = RecordingTransport(real)  # type: ignore[assignment]
        try:
            super().on_headers_complete()
        finally:
            self.transport = real


async def small(_request: Request) -> Response:
    return JSONResponse({"results": ["x" * 100]})


async def stream(_request: Request) -> Response:
    async def chunks() -> Any:
        for index in range(3):
            yield f"chunk {index}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


async def empty(_request: Request) -> Response:
    return Response(status_code=204)


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


APP = Starlette(
    routes=[
        Route("/small", small, methods=["GET", "HEAD"]),
        Route("/stream", stream),
        Route("/empty", empty),
        Route("/echo", echo, methods=["POST"]),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        APP,
        host="127.0.0.1",
        port=port,
        http=RecordingProtocol,
        log_config=None,
        lifespan="off",
        loop="uvloop",
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        threading.Event().wait(0.01)
    yield port
    instance.should_exit = True
    thread.join(30)


def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes the connection (every request here ends with close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_a_small_response_is_one_write_with_its_head(server: int) -> None:
    WRITES.clear()
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    for _ in range(3):  # keep-alive: every response of the connection
        connection.request("GET", "/small")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == b'{"results":["' + b"x" * 100 + b'"]}'
    connection.close()
    assert len(WRITES) == 3
    assert all(write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b'"]}') for write in WRITES)


def test_streamed_head_empty_continue_and_pipelined_responses_are_unchanged(server: int) -> None:
    streamed = exchange(server, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = streamed.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding: chunked" in head
    assert body == b"".join(b"8\r\nchunk %d\n\r\n" % i for i in range(3)) + b"0\r\n\r\n"

    head_only = exchange(server, b"HEAD /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200 OK")
    assert head_only.endswith(b"\r\n\r\n")

    no_content = exchange(server, b"GET /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert no_content.startswith(b"HTTP/1.1 204 No Content")
    assert no_content.endswith(b"\r\n\r\n")

    continued = exchange(
        server,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close"
        b"\r\n\r\nhello",
    )
    assert continued.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert continued.endswith(b"\r\n\r\nhello")

    pipelined = exchange(
        server,
        b"GET /small HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert pipelined.count(b"HTTP/1.1 ") == 3
    first, second, third = pipelined.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK")
    assert first.endswith(b'"]}')
    assert second.startswith(b"200 OK")
    assert second.endswith(b"\r\n\r\nabc")
    assert third.startswith(b"204 No Content")


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_only_a_response_head_is_held_and_never_past_the_loop_iteration() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport = FakeTransport()
        writer = HeadWithBody(transport, loop)  # type: ignore[arg-type]
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # interim: at once
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert len(transport.writes) == 1  # held
        writer.write(b"ok")
        assert transport.writes[1] == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await asyncio.sleep(0)  # the end of the iteration: a head whose body comes later goes out alone
        await asyncio.sleep(0)
        assert transport.writes[2] == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        writer.write(b"2\r\nhi\r\n")  # body bytes are never held
        assert transport.writes[3] == b"2\r\nhi\r\n"
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\n")
        writer.close()  # close sends what is held first
        assert transport.writes[4].startswith(b"HTTP/1.1 500")
        assert transport.closed
        writer.flush()
        assert len(transport.writes) == 5

    asyncio.run(scenario())
