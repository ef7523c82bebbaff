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
from tests.support.processes import _stop, start_api


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
    started = start_api(
        tmp_path,
        data_dir=str(tmp_path / "data"),
        auth_disabled="true",
        environment="test",
        shutdown_grace_seconds="1",
        http_body_idle_timeout_seconds="3600",
        http_body_min_rate_bytes="0",
    )
    host, port = started.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port))) as stalled:
            stalled.sendall(
                b"PUT /v1/documents/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100000\r\n\r\n{"text": "never finished'
            )
            # Answered after the stalled request's headers were read on the same loop: it is in flight.
            assert httpx.get(f"{started.url}/healthz", timeout=30).status_code == 200
            started.proc.send_signal(signal.SIGTERM)
            code = started.proc.wait(timeout=120)  # without the grace: never (the request waits for its body)
    finally:
        _stop(started.proc)
    log = started.log.read_text()
    assert code in (0, -signal.SIGTERM), log  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "timeout graceful shutdown exceeded" in log
    assert "Application shutdown complete" in log  # the lifespan closed the stores: not a kill
