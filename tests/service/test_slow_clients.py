"""Slow and idle clients against the real server process (`python -m service`, uvicorn) on real sockets: a
connection that trickles its headers or stalls its body is closed by the server, and the server keeps serving.

Each wait polls the socket until the server closes it, bounded by a deadline that only fails a server that
never does (no timing assertion); the deadlines are set to 1 s here so the test is quick.
"""

from __future__ import annotations

import json
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
        "HTTP_BODY_MIN_RATE_BYTES": "100",
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


def test_a_body_trickled_below_the_minimum_rate_is_closed(service: ServiceProcess) -> None:
    """A byte every ~0.2 s never leaves the body silent for HTTP_BODY_IDLE_TIMEOUT_SECONDS (1 s here), so only
    the minimum rate (100 bytes/s here) can end it: it held its connection for ever (EYES_SVC3 S4)."""
    with connect(service) as sock:
        sock.sendall(
            b"PUT /v1/documents/trickle HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        assert closed_by_server(sock, trickle=b'{"text": "' + b"a" * 99_980 + b'"}')
    assert service.metric('rag_http_connections_closed_total{reason="body_slow"}') >= 1


def test_the_server_keeps_serving_and_counts_what_it_closed(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        # Keep-alive: a second request on the same connection, after the first response, still works.
        assert client.get("/healthz").status_code == 200
        put = client.put("/v1/documents/ok", json={"text": "a complete request is served"})
        assert put.status_code == 201, put.text
    assert service.metric('rag_http_connections_closed_total{reason="header_timeout"}') >= 1


def exchange(service: ServiceProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes: (status, headers, body) of the one response."""
    with connect(service) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        # httptools' URL parser fails at 64 KiB: uvicorn answered a plain-text 400 the app never saw.
        (b"GET /v1/documents?cursor=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET /v1/documents?cursor=" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        # Nothing bounded headers: one endless header, or thousands, went into memory until the header timeout.
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: " + b"a" * 200_000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Flood: a\r\n" * 5_000 + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (b"\x00\x01 NOT HTTP\r\n\r\n", 400, "bad_request"),
    ],
    ids=["url-70k", "url-17k", "one-huge-header", "many-headers", "garbage"],
)
def test_what_the_http_parser_refuses_is_a_json_error_and_the_server_keeps_serving(
    service: ServiceProcess, request_bytes: bytes, status: int, code: str
) -> None:
    got, headers, body = exchange(service, request_bytes)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"]
    # Rendered as the app renders its error bodies (compact JSON), not `{"error": {` (EYES10).
    assert body == json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()
    with service.client() as client:
        assert client.get("/healthz").status_code == 200


def test_urls_and_headers_within_the_limits_are_served(service: ServiceProcess) -> None:
    cursor = "a" * 16_000
    headers = {f"x-extra-{i}": "v" * 500 for i in range(90)}
    with service.client() as client:
        response = client.get("/v1/documents", params={"cursor": cursor}, headers=headers)
    # The cursor itself is nonsense: the app (not the parser) answers, with its own JSON 4xx.
    assert response.status_code in (200, 400, 422), response.text
    assert response.headers["content-type"] == "application/json"
