"""POST /v1/answer when the server at LLM_BASE_URL does not speak HTTP: cause ``protocol``.

LLM_BASE_URL pointing at a port that speaks something else (a database, SSH, a TLS-only or binary service) or a
broken proxy: the server accepts the connection and answers bytes the HTTP parser refuses. That is ``protocol``
(503, ``rag_llm_errors_total{cause="protocol"}``, a message that sends the operator to the URL), not
``connection`` (the provider unreachable), which it was until 2026-11-26. The server here is a throwaway TCP
server in a thread that reads the request and writes the scripted bytes back; one of them echoes the request
itself (with its Authorization header), which must not reach the answer or the logs. A server that closes the
connection without a byte stays ``connection``.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.support import llm_settings, running_app

API_KEY = "sk-test-4f1c9a77e2d0-never-leak-me"
VACATION = "Employees get 25 days of paid vacation per year. Unused days expire at the end of March."
QUESTION = {"query": "How many days of paid vacation do employees get?", "score_threshold": -1.0}
ECHO = b"<echo>"

# (what the server writes back, the cause, what the message names)
REPLIES = {
    "binary garbage": (b"\x00\x01\x02garbage\xff\xfe\r\n\r\n", "protocol", "illegal status line"),
    "a status line that is not HTTP": (b"RFB 003.008\r\n\r\n", "protocol", "illegal status line"),
    "a bad Content-Length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        "protocol",
        "bad Content-Length",
    ),
    "the request echoed back": (ECHO, "protocol", "illegal status line"),
    "nothing, then a close": (b"", "connection", "connection"),
}


class GarbageServer:
    """Accepts connections on a loopback port; reads one request and writes ``reply`` (or the request itself)."""

    def __init__(self) -> None:
        self.reply = b""
        self.requests = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
                self.requests += 1
                conn.sendall(request if self.reply == ECHO else self.reply)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def garbage() -> Iterator[GarbageServer]:
    server = GarbageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(
    garbage: GarbageServer, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    tmp_path: Path = tmp_path_factory.mktemp("protocol")
    settings = llm_settings(tmp_path, garbage.base_url, API_KEY, llm_circuit_failures=1000)
    with running_app(settings, embedder=embedder) as app:
        body = {"text": VACATION, "content_type": "text/plain"}
        assert app.put("/v1/documents/handbook:vacation", json=body).status_code == 201
        yield app


def metric(client: TestClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} is not exported")


def by_cause(cause: str) -> str:
    return f'rag_llm_errors_total{{cause="{cause}"}}'


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("case", REPLIES)
def test_a_server_that_does_not_speak_http_is_a_503_with_cause_protocol(
    case: str,
    stream: bool,
    client: TestClient,
    garbage: GarbageServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reply, cause, named = REPLIES[case]
    garbage.reply = reply
    before = {name: metric(client, by_cause(name)) for name in ("protocol", "connection")}
    errors = metric(client, 'rag_llm_requests_total{outcome="error"}')
    requests = garbage.requests
    caplog.set_level(logging.DEBUG)
    out = io.StringIO()
    with redirect_stdout(out):
        response = client.post("/v1/answer", json={**QUESTION, "stream": stream})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert error["cause"] == cause
    assert named in error["message"]
    if cause == "protocol":
        assert error["message"].startswith(f"the server at {garbage.base_url} did not answer in HTTP")
        assert "LLM_BASE_URL" in error["message"]
    for text in (response.text, caplog.text, out.getvalue()):
        assert API_KEY[:12] not in text
        assert "Traceback" not in text
    assert garbage.requests == requests + 1  # reached the server, once (no retries configured)
    other = "connection" if cause == "protocol" else "protocol"
    assert metric(client, by_cause(cause)) == before[cause] + 1
    assert metric(client, by_cause(other)) == before[other]
    assert metric(client, 'rag_llm_requests_total{outcome="error"}') == errors + 1


@pytest.mark.parametrize(
    ("case", "attempts"),
    [("binary garbage", 1), ("a bad Content-Length", 1), ("nothing, then a close", 3)],
)
def test_a_reply_that_is_not_http_is_not_retried_a_closed_connection_is(
    case: str, attempts: int, garbage: GarbageServer, embedder: Any, tmp_path: Path
) -> None:
    """With LLM_MAX_RETRIES=2 the openai client would send a request that failed in transport three times: the
    same URL answers the same non-HTTP bytes each time, so a ``protocol`` failure is sent once; a connection
    closed without a byte (maybe a restart) keeps its retries."""
    reply, cause, _ = REPLIES[case]
    garbage.reply = reply
    settings = llm_settings(tmp_path, garbage.base_url, API_KEY, llm_max_retries=2, llm_circuit_failures=1000)
    with running_app(settings, embedder=embedder) as app:
        body = {"text": VACATION, "content_type": "text/plain"}
        assert app.put("/v1/documents/handbook:vacation", json=body).status_code == 201
        for stream in (False, True):
            requests = garbage.requests
            response = app.post("/v1/answer", json={**QUESTION, "stream": stream})
            assert response.status_code == 503, response.text
            assert response.json()["error"]["cause"] == cause
            assert garbage.requests == requests + attempts, (stream, garbage.requests - requests)
