"""The folder client waits for an HTML page the service was still storing when a batch went unanswered (note20:
it waited only for text and Markdown files, whose content hash it could compute; an HTML page was sent again at
once, beside the service still storing it, and paid its rate limit twice).

The content hash the service stores for the page is taken from the real service code (an app storing the very
document the client prepared), so the client's own computation is checked against what the service answers; the
batch's timing (the service stores the page while the client asks) is played by a mock transport.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from service import client as ingest_client
from tests.service.support import make_settings, running_app

PAGE = """<!doctype html><html><head><title>Harbour hours</title><meta charset="utf-8"></head>
<body><nav>Home | About</nav><h1>Harbour hours</h1><p>The harbour opens at dawn &amp; closes at dusk.</p></body>
</html>"""


def test_a_batch_without_an_answer_waits_for_the_html_page_being_stored(
    tmp_path: Path, embedder: Any
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("Note a about the harbour.")
    (folder / "b.html").write_text(PAGE)
    (folder / "c.md").write_text("Note c about the harbour.")
    prepared = {
        name: ingest_client.prepare(folder / name, folder, 100_000) for name in ("a.md", "b.html", "c.md")
    }
    hashes = {name: ingest_client.content_hash_of(item) for name, item in prepared.items()}
    # What the service stores for the page, by the service's own code: the client computes the same.
    with running_app(make_settings(tmp_path / "service"), embedder=embedder) as app:
        page = prepared["b.html"].document
        assert page is not None
        stored_page = app.put(
            "/v1/documents/b.html",
            json={k: v for k, v in page.items() if k != "document_id"},
        )
        assert stored_page.status_code == 201, stored_page.text
        served = app.get("/v1/documents/b.html").json()["content_hash"]
    assert hashes["b.html"] == served

    bulks: list[list[str]] = []
    stored = {"a.md"}
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/documents:bulk":
            ids = [d["document_id"] for d in json.loads(request.content)["documents"]]
            bulks.append(ids)
            if len(bulks) == 1:
                raise httpx.ReadTimeout("timed out", request=request)  # a.md stored, b.html being stored
            items = [
                {"index": i, "document_id": d, "status_code": 201, "result": {"status": "created"}}
                for i, d in enumerate(ids)
            ]
            stored.update(ids)
            return httpx.Response(200, json={"succeeded": len(ids), "failed": 0, "items": items})
        document_id = request.url.path.rsplit("/", 1)[1]
        asked.append(document_id)
        if document_id == "b.html" and asked.count("b.html") == 3:
            stored.add("b.html")  # the service finishes the page while the client asks
        if document_id in stored:
            return httpx.Response(200, json={"document_id": document_id, "content_hash": hashes[document_id]})
        error = {"code": "not_found", "message": "no such document", "document_id": document_id}
        return httpx.Response(404, json={"error": error})

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    report = ingest_client.Report()
    client = ingest_client.IngestClient(
        "http://service", None, report, sleep=sleep, clock=lambda: now[0], timeout=7
    )
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    ingest_client.ingest_folder(
        client, folder, report, batch_size=3, max_batch_bytes=100_000, advance=lambda _: None
    )

    assert bulks[0] == ["a.md", "b.html", "c.md"]
    assert asked.count("b.html") >= 3  # waited for the page, as for a text file
    assert bulks[1:] == [["c.md"]], bulks  # the page was not sent again beside its storing
    assert report.outcomes == {"stored": 2, "created": 1}, report.outcomes
    assert not report.failures
