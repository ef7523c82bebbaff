"""Slow and idle clients against the real server process (`python -m service`, uvicorn) on real sockets: a
connection that trickles its headers or stalls its body is closed by the server, and the server keeps serving.

Each wait polls the socket until the server closes it, bounded by a deadline that only fails a server that
never does (no timing assertion); the deadlines are set to 1 s here so the test is quick.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.service.service_process import ServiceProcess, service_process

DEADLINE_SECONDS = 60.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("slow")
    env = {
        "DATA_DIR": str(tmp),
        "HTTP_HEADER_TIMEOUT_SECONDS": "1",
        "HTTP_BODY_IDLE_TIMEOUT_SECONDS": "1",
        "GC_ENABLED": "false",
    }
    with service_process(env, tmp / "service.log") as process:
        yield process


def closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Keep the connection open (sending ``trickle`` a byte at a time, as slowloris does) until the server closes
    it; True when it did before the deadline."""
    sock.settimeout(0.2)
    end = time.monotonic() + DEADLINE_SECONDS
    sent = 0
    while time.monotonic() < end:
        try:
            if sent < len(trickle):
                sock.sendall(trickle[sent : sent + 1])
                sent += 1
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True
        if data == b"":
            return True
    return False


def connect(service: ServiceProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=10)


def test_a_connection_that_never_sends_headers_is_closed(service: ServiceProcess) -> None:
    with connect(service) as sock:
        assert closed_by_server(sock)


def test_headers_trickled_a_byte_at_a_time_are_cut_off(service: ServiceProcess) -> None:
    endless = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100_000
    with connect(service) as sock:
        assert closed_by_server(sock, trickle=endless)


def test_a_stalled_body_is_closed(service: ServiceProcess) -> None:
    with connect(service) as sock:
        sock.sendall(
            b"PUT /v1/documents/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"text": "only the start'
        )
        assert closed_by_server(sock)


def test_the_server_keeps_serving_and_counts_what_it_closed(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        # Keep-alive: a second request on the same connection, after the first response, still works.
        assert client.get("/healthz").status_code == 200
        put = client.put("/v1/documents/ok", json={"text": "a complete request is served"})
        assert put.status_code == 201, put.text
    assert service.metric('rag_http_connections_closed_total{reason="header_timeout"}') >= 1
