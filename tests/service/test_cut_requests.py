"""Bulk requests cut short, in-process where the cut can be placed inside a bulk's second item:

- by the shutdown (uvicorn cancels its task past SHUTDOWN_GRACE_SECONDS): one WARNING line saying what was cut
  and how far it got, and a 503 the client retries (the real process given SIGTERM:
  tests/service/test_server_options.py);
- by its client leaving (its timeout on a busy host, EYES7 M6): the service stops after the current item instead
  of storing the rest for nobody while the client sends them again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app.core.config import Settings
from service.app.main import create_app
from tests.service.prod_support import KEY_A, bearer, production_settings
from tests.service.support import CountingEmbedder

BLOCK = "held-in-the-embedder-marker"


class HeldEmbedder(CountingEmbedder):
    """Blocks embedding any passage containing BLOCK until released (in the ingest's worker thread)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed_documents(self, texts: Any) -> list[list[float]]:
        if any(BLOCK in text for text in texts):
            self.entered.set()
            self.release.wait(60)
        return super().embed_documents(texts)


def test_a_bulk_cut_by_the_shutdown_says_how_far_it_got_and_keeps_what_it_stored(
    tmp_path: Path, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    held = HeldEmbedder(embedder)
    app = create_app(production_settings(tmp_path), embedder=held)
    documents = [
        {"document_id": "first", "text": "the first document of the batch"},
        {"document_id": "second", "text": f"the second document {BLOCK}"},
        {"document_id": "third", "text": "the third document of the batch"},
    ]

    async def scenario() -> tuple[httpx.Response, list[int]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://t", headers=bearer(KEY_A)
            ) as c:
                bulk = asyncio.create_task(c.post("/v1/documents:bulk", json={"documents": documents}))
                try:
                    assert await asyncio.to_thread(held.entered.wait, 60)
                    bulk.cancel("Task cancelled, timeout graceful shutdown exceeded")  # what uvicorn does
                    response = (
                        await bulk
                    )  # the app answered the cut: the task ends without the CancelledError
                finally:
                    held.release.set()
                codes = [(await c.get(f"/v1/documents/{d['document_id']}")).status_code for d in documents]
        return response, codes

    with caplog.at_level(logging.INFO, logger="service.access"):
        response, codes = asyncio.run(scenario())
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response.headers["connection"] == "close"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-request-id"]
    assert codes[0] == 200  # committed before the cut: stays
    assert codes[2] == 404  # never started
    access = [r for r in caplog.records if r.name == "service.access" and "documents:bulk" in r.getMessage()]
    assert len(access) == 1, [r.getMessage() for r in access]  # the cut line only: no access line beside it
    (record,) = access
    line = record.getMessage()
    assert line.startswith("shutdown cut POST /v1/documents:bulk after "), line
    assert "answered 503" in line
    assert "documents:bulk had finished 1 of 3 items; item 1 ('second') was in progress" in line
    assert record.levelno == logging.WARNING
    assert record.tenant == "tenant-a"  # type: ignore[attr-defined]


def test_a_bulk_whose_client_left_stops_after_its_current_item(
    tmp_path: Path, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    held = HeldEmbedder(embedder)
    settings: Settings = production_settings(tmp_path)
    app = create_app(settings, embedder=held)
    documents = [
        {"document_id": "first", "text": "the first document of the batch"},
        {"document_id": "second", "text": f"the second document {BLOCK}"},
        {"document_id": "third", "text": "the third document of the batch"},
    ]
    body = json.dumps({"documents": documents}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/documents:bulk",
        "raw_path": b"/v1/documents:bulk",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"t"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {KEY_A}".encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }

    async def scenario() -> tuple[list[dict[str, Any]], list[int]]:
        left = asyncio.Event()
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()  # as a server's receive: the disconnect once the connection is gone
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async with app.router.lifespan_context(app):
            request = asyncio.create_task(app(scope, receive, send))
            try:
                assert await asyncio.to_thread(held.entered.wait, 60)
                left.set()  # the client's timeout: it closed the connection while item 1 was embedded
            finally:
                held.release.set()
            await asyncio.wait_for(request, 120)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://t", headers=bearer(KEY_A)
            ) as c:
                codes = [(await c.get(f"/v1/documents/{d['document_id']}")).status_code for d in documents]
        return sent, codes

    with caplog.at_level(logging.INFO):
        _sent, codes = asyncio.run(scenario())
    assert codes == [200, 200, 404]  # the item in progress finished; the one after it was never started
    assert "documents:bulk: its client left after 2 of 3 items; the rest were not stored" in caplog.text


def test_a_bulk_cut_right_after_an_item_was_stored_does_not_name_it_as_in_progress(
    tmp_path: Path, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The cut lands after item 1's ingest returned (it is stored) and before item 2 begins: the line named item
    # 1 as "in progress", so an operator would resend or check a document that was in fact stored.
    app = create_app(production_settings(tmp_path), embedder=embedder)
    documents = [
        {"document_id": "first", "text": "the first document of the batch"},
        {"document_id": "second", "text": "the second document of the batch"},
        {"document_id": "third", "text": "the third document of the batch"},
    ]

    async def scenario() -> tuple[httpx.Response, list[int]]:
        async with app.router.lifespan_context(app):
            ingest = app.state.services.ingest
            real = ingest.ingest

            async def then_cut(tenant: str, document_id: str, **kwargs: Any) -> Any:
                result = await real(tenant, document_id, **kwargs)
                if document_id == "second":  # stored: uvicorn's cancel arrives before the next item starts
                    task = asyncio.current_task()
                    assert task is not None
                    task.cancel("Task cancelled, timeout graceful shutdown exceeded")
                return result

            ingest.ingest = then_cut
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://t", headers=bearer(KEY_A)
            ) as c:
                response = await c.post("/v1/documents:bulk", json={"documents": documents})
                ingest.ingest = real
                codes = [(await c.get(f"/v1/documents/{d['document_id']}")).status_code for d in documents]
        return response, codes

    with caplog.at_level(logging.INFO, logger="service.access"):
        response, codes = asyncio.run(scenario())
    assert response.status_code == 503, response.text
    assert codes == [200, 200, 404]
    (line,) = [
        r.getMessage() for r in caplog.records if r.name == "service.access" and "bulk" in r.getMessage()
    ]
    assert "documents:bulk had finished 2 of 3 items)" in line, line
    assert "in progress" not in line, line
