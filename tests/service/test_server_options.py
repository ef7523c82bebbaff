"""How `python -m service` asks uvicorn to serve: httptools (the guarded protocol) and uvloop, by name.

uvicorn's defaults (``http="auto"``, ``loop="auto"``) fall back to h11 and asyncio's own loop without a word when
httptools or uvloop is missing (an image built without uvicorn's ``standard`` extra): ~0.1 ms and ~0.03 ms more
of the event loop's CPU on every request (docs/benchmarks.md, "Where one small-collection search goes"). Named,
a missing package stops the start-up instead.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
import uvicorn
import uvloop

from service.__main__ import server_options
from service.app.core.config import Settings
from service.app.core.server import GuardedHttpToolsProtocol
from tests.support.llm_servers import openai_test_server
from tests.support.processes import _stop, api_process, start_api


async def _app(scope: object, receive: object, send: object) -> None:  # never called
    raise AssertionError


def test_the_service_serves_with_httptools_and_uvloop_and_refuses_to_start_without_uvloop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(_env_file=None)
    options = server_options(settings, None, GuardedHttpToolsProtocol)
    config = uvicorn.Config(_app, **options)
    config.load()
    assert config.http_protocol_class is GuardedHttpToolsProtocol
    loop = config.get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    # Without uvloop installed: uvicorn's "auto" would quietly serve on asyncio's loop; the service's options fail.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    monkeypatch.delitem(sys.modules, "uvicorn.loops.uvloop", raising=False)
    fallback = uvicorn.Config(_app, loop="auto").get_loop_factory()()
    try:
        assert not isinstance(fallback, uvloop.Loop)
        assert isinstance(fallback, asyncio.AbstractEventLoop)
    finally:
        fallback.close()
    with pytest.raises(ImportError):
        uvicorn.Config(_app, **options).get_loop_factory()
    assert options["access_log"] is False
    assert options["timeout_keep_alive"] == settings.http_keep_alive_seconds
    assert options["limit_concurrency"] == settings.http_limit_concurrency


def test_sigterm_cuts_a_request_still_in_flight_after_shutdown_grace_seconds(tmp_path: Path) -> None:
    # EYES7 M5: uvicorn waited for in-flight requests without end (a bulk held a SIGTERM for 117 s, past the
    # pod's 45 s grace period). A request whose body never completes stays in flight for as long as the server
    # waits (the body timeouts are off here); the process must still shut down cleanly after the grace.
    # Stop 17 left the cut request logged as uvicorn's 60-line CancelledError traceback, an access line with a
    # 500 (and a 500 in the metrics, which an error-rate alert counts), and the client answered a plain 500: it
    # is one WARNING line naming the request, the client gets a 503 it retries, and acknowledged writes stay.
    settings = {
        "data_dir": str(tmp_path / "data"),
        "auth_disabled": "true",
        "environment": "test",
        "shutdown_grace_seconds": "1",
        "http_body_idle_timeout_seconds": "3600",
        "http_body_min_rate_bytes": "0",
    }
    started = start_api(tmp_path, **settings)
    host, port = started.url.removeprefix("http://").split(":")
    try:
        kept = httpx.put(f"{started.url}/v1/documents/kept", json={"text": "acknowledged before the signal"})
        assert kept.status_code == 201, kept.text
        with socket.create_connection((host, int(port))) as stalled:
            stalled.sendall(
                b"PUT /v1/documents/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100000\r\n\r\n{"text": "never finished'
            )
            # Answered after the stalled request's headers were read on the same loop: it is in flight.
            assert httpx.get(f"{started.url}/healthz", timeout=30).status_code == 200
            started.proc.send_signal(signal.SIGTERM)
            code = started.proc.wait(timeout=120)  # without the grace: never (the request waits for its body)
            stalled.settimeout(30)
            answer = b""
            while chunk := stalled.recv(65536):  # the process has exited: its end of the socket is closed
                answer += chunk
    finally:
        _stop(started.proc)
    log = started.log.read_text()
    assert code in (0, -signal.SIGTERM), log  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "timeout graceful shutdown exceeded" in log
    assert "Application shutdown complete" in log  # the lifespan closed the stores: not a kill
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b'"code":"service_unavailable"' in answer.replace(b" ", b""), answer
    for noise in ("Traceback", "CancelledError", "Exception in ASGI"):
        assert noise not in log, log
    cut = [line for line in log.splitlines() if "/v1/documents/stalled" in line]
    assert len(cut) == 1, log  # one line per cut request (no access line beside it)
    for said in (
        "WARNING",
        "shutdown cut PUT /v1/documents/stalled",
        "answered 503",
        "SHUTDOWN_GRACE_SECONDS=1",
    ):
        assert said in cut[0], cut
    # The write acknowledged before the signal is there after a restart; the cut one is not.
    with api_process(tmp_path, **settings) as url:
        assert httpx.get(f"{url}/v1/documents/kept").status_code == 200
        assert httpx.get(f"{url}/v1/documents/stalled").status_code == 404


def test_sigterm_cuts_a_streamed_answer_in_one_line_and_the_client_sees_it_incomplete(tmp_path: Path) -> None:
    # A response already started (a streamed answer, the provider still sending) cannot become a 503: the
    # connection is closed without the stream's end, so the client cannot take the cut answer for a whole one.
    # uvicorn's own "returned without completing response" ERROR line for it is dropped: the cut has its line.
    with openai_test_server() as llm:
        llm.default(reply="Employees get 25 days [1].", piece_chars=3, hang=True)
        started = start_api(
            tmp_path,
            data_dir=str(tmp_path / "data"),
            auth_disabled="true",
            environment="test",
            shutdown_grace_seconds="1",
            llm_base_url=llm.base_url,
            llm_model="test-model",
            llm_api_key="sk-test-shutdown",
            llm_max_retries="0",
            llm_timeout_seconds="600",
        )
        try:
            text = "Employees get 25 days of paid vacation per year."
            put = httpx.put(f"{started.url}/v1/documents/vacation", json={"text": text}, timeout=60)
            assert put.status_code == 201, put.text
            question = {"query": "How many days of paid vacation?", "score_threshold": -1.0, "stream": True}
            with (
                httpx.Client(base_url=started.url, timeout=60) as http,
                http.stream("POST", "/v1/answer", json=question) as response,
            ):
                assert response.status_code == 200
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("event: ")) == "event: token"
                llm.wait_events("hanging")
                started.proc.send_signal(signal.SIGTERM)
                with pytest.raises(httpx.RemoteProtocolError):  # incomplete chunked body
                    for _ in lines:
                        pass
            code = started.proc.wait(timeout=120)
        finally:
            _stop(started.proc)
    log = started.log.read_text()
    assert code in (0, -signal.SIGTERM), log
    for noise in ("Traceback", "CancelledError", "without completing response"):
        assert noise not in log, log
    cut = [line for line in log.splitlines() if "/v1/answer" in line]
    assert len(cut) == 1, log
    for said in ("WARNING", "shutdown cut POST /v1/answer", "response was cut short", "answer streams end"):
        assert said in cut[0], cut
