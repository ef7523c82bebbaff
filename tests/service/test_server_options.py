"""How `python -m service` asks uvicorn to serve: httptools (the guarded protocol) and uvloop, by name.

uvicorn's defaults (``http="auto"``, ``loop="auto"``) fall back to h11 and asyncio's own loop without a word when
httptools or uvloop is missing (an image built without uvicorn's ``standard`` extra): ~0.1 ms and ~0.03 ms more
of the event loop's CPU on every request (docs/benchmarks.md, "Where one small-collection search goes"). Named,
a missing package stops the start-up instead.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvicorn
import uvloop

from service.__main__ import server_options
from service.app.core.config import Settings
from service.app.core.server import GuardedHttpToolsProtocol


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
