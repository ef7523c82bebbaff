"""GET /v1/documents/{id}/chunks through the real app: the stored text, paged, per tenant, one version at a time.

EYES5 F11: nothing showed a user what text a document was stored as (what extraction kept, where chunking cut),
so checking an ingest took search tricks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app.store.vectors import ChunkPoint
from tests.service.prod_support import MakeClient
from tests.service.support import long_text, make_settings, running_app, services_of

pytest_plugins = ["tests.service.prod_fixtures"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("chunks"), chunk_size=64, chunk_overlap=8)
    with running_app(settings, embedder=embedder) as client:
        yield client


def all_pages(client: TestClient, document_id: str, limit: int, **kwargs: Any) -> list[dict[str, Any]]:
    pages, offset = [], 0
    while offset is not None:
        response = client.get(
            f"/v1/documents/{document_id}/chunks", params={"offset": offset, "limit": limit}, **kwargs
        )
        assert response.status_code == 200, response.text
        pages.append(response.json())
        offset = response.json()["next_offset"]
    return pages


def test_pages_cover_every_stored_chunk_in_order(client: TestClient) -> None:
    text = long_text("alpha", 3)
    created = client.put("/v1/documents/long:doc", json={"text": text})
    assert created.status_code == 201, created.text
    count = created.json()["chunks"]
    assert count > 5  # several pages of 2

    pages = all_pages(client, "long:doc", limit=2)
    chunks = [chunk for page in pages for chunk in page["chunks"]]
    assert [c["chunk_index"] for c in chunks] == list(range(count))
    assert all(len(page["chunks"]) <= 2 for page in pages)
    assert {page["chunk_count"] for page in pages} == {count}
    assert {page["version"] for page in pages} == {created.json()["version"]}
    # Every chunk is text of the document, and together they hold all of it (the first words, the last words).
    folded = " ".join(text.split())
    assert all(" ".join(c["text"].split()) in folded for c in chunks)
    assert folded.startswith(" ".join(chunks[0]["text"].split()))
    assert folded.endswith(" ".join(chunks[-1]["text"].split()))

    past = client.get("/v1/documents/long:doc/chunks", params={"offset": count + 3})
    assert past.status_code == 200
    assert past.json()["chunks"] == []
    assert past.json()["next_offset"] is None


def test_html_shows_the_text_extraction_kept(client: TestClient) -> None:
    html = (
        "<html><head><title>Leave</title><script>var tracking = 1;</script></head>"
        "<body><nav>Home | About</nav><main><h1>Parental leave</h1><p>Parents get 16 weeks.</p></main></body>"
        "</html>"
    )
    body = {"text": html, "content_type": "text/html"}
    assert client.put("/v1/documents/web:leave", json=body).status_code == 201
    stored = client.get("/v1/documents/web:leave/chunks").json()
    joined = "\n".join(chunk["text"] for chunk in stored["chunks"])
    assert "Parents get 16 weeks." in joined
    assert "tracking" not in joined
    assert "<p>" not in joined


def test_an_update_shows_only_the_new_version(client: TestClient) -> None:
    client.put("/v1/documents/upd", json={"text": "The old policy allowed remote work twice a week."})
    updated = client.put("/v1/documents/upd", json={"text": "The new policy allows remote work every day."})
    assert updated.status_code == 200
    page = client.get("/v1/documents/upd/chunks").json()
    assert page["version"] == updated.json()["version"]
    assert [c["text"] for c in page["chunks"]] == ["The new policy allows remote work every day."]


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/v1/documents/never-stored/chunks", 404, "not found"),
        ("/v1/documents/upd/chunks?limit=0", 422, "limit"),
        ("/v1/documents/upd/chunks?limit=101", 422, "limit"),
        ("/v1/documents/upd/chunks?offset=-1", 422, "offset"),
        ("/v1/documents/upd/chunks?offset=x", 422, "offset"),
        ("/v1/documents/a%20b/chunks", 422, "document_id"),
    ],
)
def test_bad_requests_are_4xx_with_a_reason(client: TestClient, path: str, status: int, reason: str) -> None:
    client.put("/v1/documents/upd", json={"text": "The new policy allows remote work every day."})
    response = client.get(path)
    assert response.status_code == status, response.text
    assert reason in response.text


def test_chunks_are_read_only(client: TestClient) -> None:
    client.put("/v1/documents/upd", json={"text": "The new policy allows remote work every day."})
    for method in ("PUT", "DELETE", "POST"):
        response = client.request(method, "/v1/documents/upd/chunks", json={"text": "x"})
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "GET"
    assert client.get("/v1/documents/upd/chunks").json()["chunks"][0]["text"].startswith("The new policy")


def test_deleted_document_is_404(client: TestClient) -> None:
    client.put("/v1/documents/gone", json={"text": "Short-lived text about lighthouses."})
    assert client.delete("/v1/documents/gone").status_code == 204
    assert client.get("/v1/documents/gone/chunks").status_code == 404


def test_a_tenant_reads_only_its_own_chunks(
    make_client: MakeClient, headers_a: dict[str, str], headers_b: dict[str, str]
) -> None:
    with make_client() as client:
        a = {"text": "Alpine lakes freeze in winter; Lake Sils is thick enough for skating by January."}
        assert client.put("/v1/documents/a-only", json=a, headers=headers_a).status_code == 201
        missing = client.get("/v1/documents/a-only/chunks", headers=headers_b)
        assert missing.status_code == 404  # not 403: B cannot learn that A has such a document
        assert "Alpine" not in missing.text
        assert client.get("/v1/documents/a-only/chunks").status_code == 401

        b = {"text": "Quarterly revenue grew by twelve percent in the enterprise segment."}
        assert client.put("/v1/documents/a-only", json=b, headers=headers_b).status_code == 201
        texts_a = [
            c["text"] for c in client.get("/v1/documents/a-only/chunks", headers=headers_a).json()["chunks"]
        ]
        texts_b = [
            c["text"] for c in client.get("/v1/documents/a-only/chunks", headers=headers_b).json()["chunks"]
        ]
        assert texts_a == [a["text"]]
        assert texts_b == [b["text"]]


@pytest.mark.parametrize("store", ["edge", "local"])
def test_each_embedded_store_reads_chunks_by_id(tmp_path: Path, embedder: Any, store: str) -> None:
    """The adapter method itself, on both embedded stores: the asked order, None for what it does not hold,
    nothing of another tenant or version."""
    with running_app(make_settings(tmp_path, vector_store=store), embedder=embedder) as client:
        vectors = services_of(client).vectors
        vector = [1.0] + [0.0] * (embedder.dimension - 1)
        vectors.upsert(
            [
                ChunkPoint("t", "doc", 2, i, f"text {i}", vector, {}, "h", embedder.model_name)
                for i in range(3)
            ]
        )
        assert vectors.chunk_texts("t", "doc", 2, [2, 0, 7]) == ["text 2", "text 0", None]
        assert vectors.chunk_texts("other", "doc", 2, [0]) == [None]
        assert vectors.chunk_texts("t", "doc", 1, [0]) == [None]
