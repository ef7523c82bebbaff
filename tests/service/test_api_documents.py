"""Document API through the real app: real embedder, embedded Qdrant in tmp, SQLite registry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app.store.embedder import FastEmbedEmbedder
from tests.service.support import (
    CountingEmbedder,
    long_text,
    make_pdf,
    make_settings,
    running_app,
    services_of,
)


@pytest.fixture(scope="module")
def counting(embedder: FastEmbedEmbedder) -> CountingEmbedder:
    """The real embedder, counting what it embeds."""
    return CountingEmbedder(embedder)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, counting: CountingEmbedder) -> Iterator[TestClient]:
    """One started app for the module (documents use distinct ids per test)."""
    settings = make_settings(tmp_path_factory.mktemp("api"), chunk_size=64, chunk_overlap=8)
    with running_app(settings, embedder=counting) as client:
        yield client


def search(client: TestClient, query: str, **body: object) -> list[dict]:
    response = client.post("/v1/search", json={"query": query, **body})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def points_of(client: TestClient, document_id: str) -> int:
    services = services_of(client)
    return services.vectors.count(services.settings.default_tenant, document_id)


def test_put_creates_then_same_content_is_unchanged_without_embedding(
    client: TestClient, counting: CountingEmbedder
) -> None:
    body = {"text": "Honeybees dance to tell the hive where flowers are.", "metadata": {"topic": "bees"}}
    created = client.put("/v1/documents/bees-1", json=body)
    assert created.status_code == 201
    assert created.json()["status"] == "created"
    assert created.json()["chunks"] == 1

    embedded_before = len(counting.embedded)
    again = client.put("/v1/documents/bees-1", json={"metadata": {"topic": "bees"}, "text": body["text"]})
    assert again.status_code == 200
    assert again.json() == {**created.json(), "status": "unchanged"}
    assert len(counting.embedded) == embedded_before

    changed_metadata = client.put("/v1/documents/bees-1", json={**body, "metadata": {"topic": "insects"}})
    assert changed_metadata.status_code == 200
    assert changed_metadata.json()["status"] == "updated"
    assert changed_metadata.json()["version"] > created.json()["version"]
    assert len(counting.embedded) == embedded_before + 1
    assert search(client, "bee waggle dance", top_k=1)[0]["metadata"] == {"topic": "insects"}


def test_get_returns_the_registry_entry(client: TestClient) -> None:
    client.put(
        "/v1/documents/doc:get.1",
        json={"text": "Glaciers carve valleys.", "metadata": {"year": 2021, "tags": ["ice"]}},
    )
    response = client.get("/v1/documents/doc:get.1")
    assert response.status_code == 200
    document = response.json()
    assert document["document_id"] == "doc:get.1"
    assert document["metadata"] == {"year": 2021, "tags": ["ice"]}
    assert document["content_type"] == "text/plain"
    assert document["chunk_count"] == 1
    assert len(document["content_hash"]) == 64


def test_update_replaces_all_chunks_without_mix_or_duplicates(client: TestClient) -> None:
    first = client.put("/v1/documents/river", json={"text": long_text("ALPHA", 6)}).json()
    assert first["chunks"] > 4
    assert points_of(client, "river") == first["chunks"]

    second = client.put("/v1/documents/river", json={"text": long_text("BRAVO", 2)}).json()
    assert second["status"] == "updated"
    assert second["chunks"] < first["chunks"]
    assert points_of(client, "river") == second["chunks"]

    results = search(client, "river ecology fish paragraph sentence", top_k=100)
    river = [r for r in results if r["document_id"] == "river"]
    assert sorted(r["chunk_index"] for r in river) == list(range(second["chunks"]))
    assert all("BRAVO" in r["text"] and "ALPHA" not in r["text"] for r in river)


def test_html_is_stored_as_its_visible_text(client: TestClient) -> None:
    html = "<h1>Sourdough</h1><p>Wild yeast leavens the bread.</p><script>var secret = 1;</script>"
    response = client.put("/v1/documents/bread", json={"text": html, "content_type": "text/html"})
    assert response.status_code == 201
    hit = search(client, "wild yeast bread", top_k=1)[0]
    assert hit["document_id"] == "bread"
    assert hit["text"] == "Sourdough\n\nWild yeast leavens the bread."
    assert client.get("/v1/documents/bread").json()["content_type"] == "text/html"


@pytest.mark.parametrize(
    ("filename", "content", "declared", "expected_type", "expected_text"),
    [
        ("notes.txt", b"Tides follow the moon.", "text/plain", "text/plain", "Tides follow the moon."),
        ("readme.md", b"# Tides\n\nThe moon pulls the sea.", "application/octet-stream", "text/markdown",
         "# Tides\n\nThe moon pulls the sea."),
        ("page.html", b"<h2>Tides</h2><p>Spring tides are strong.</p><style>p{}</style>", "text/html",
         "text/html", "Tides\n\nSpring tides are strong."),
        ("paper.pdf", make_pdf(["Neap tides are weak.", "They happen at quarter moon."]), "application/pdf",
         "application/pdf", "Neap tides are weak.\n\nThey happen at quarter moon."),
    ],
)  # fmt: skip
def test_upload_extracts_each_supported_type(
    client: TestClient,
    filename: str,
    content: bytes,
    declared: str,
    expected_type: str,
    expected_text: str,
) -> None:
    document_id = f"upload-{filename}"
    response = client.post(
        "/v1/documents",
        files={"file": (filename, content, declared)},
        data={"document_id": document_id, "metadata": json.dumps({"source": "upload"})},
    )
    assert response.status_code == 201, response.text
    assert response.json()["document_id"] == document_id
    stored = client.get(f"/v1/documents/{document_id}").json()
    assert stored["content_type"] == expected_type
    assert stored["metadata"] == {"source": "upload"}
    hits = [r for r in search(client, expected_text, top_k=20) if r["document_id"] == document_id]
    assert hits[0]["text"] == expected_text


def test_upload_without_id_derives_it_from_the_file_name(client: TestClient) -> None:
    plain = client.post("/v1/documents", files={"file": ("notes_2024.txt", b"Plain name.", "text/plain")})
    assert plain.json()["document_id"] == "notes_2024.txt"  # a valid id stays as it is
    response = client.post(
        "/v1/documents", files={"file": ("My Trip (2024).txt", b"We hiked the Alps.", "text/plain")}
    )
    assert response.status_code == 201
    derived = response.json()["document_id"]
    assert re.fullmatch(r"My-Trip-2024-[0-9a-f]{8}\.txt", derived), derived
    again = client.post(
        "/v1/documents", files={"file": ("My Trip (2024).txt", b"We hiked the Alps.", "text/plain")}
    )
    assert again.status_code == 200
    assert (again.json()["document_id"], again.json()["status"]) == (derived, "unchanged")


@pytest.mark.parametrize(
    ("first", "second"),
    [("日本.md", "中国.md"), ("a b.md", "a?b.md"), ("a b.md", "a-b.md"), ("Отчёт.pdf.md", "Отчет.pdf.md")],
)
def test_upload_names_that_differ_never_share_a_derived_id(
    client: TestClient, first: str, second: str
) -> None:
    """Replacing disallowed characters alone mapped both names to one id (`md`, `a-b.md`): the second upload
    answered 200 "updated" and the first document was gone."""
    ids = []
    for name in (first, second):
        response = client.post(
            "/v1/documents", files={"file": (name, f"Text of {name}".encode(), "text/markdown")}
        )
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "created"
        ids.append(response.json()["document_id"])
    assert ids[0] != ids[1]
    for document_id in ids:
        assert document_id.endswith(".md")
        assert client.get(f"/v1/documents/{document_id}").status_code == 200
        assert client.delete(f"/v1/documents/{document_id}").status_code in (200, 204)


@pytest.mark.parametrize("name", [".", "..", " ", "dir/.."])
def test_upload_without_id_or_usable_file_name_is_refused(client: TestClient, name: str) -> None:
    response = client.post("/v1/documents", files={"file": (name, b"Some text.", "text/plain")})
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert message == "no document_id given and none can be derived from the file name"


def test_list_pages_through_documents_with_a_cursor(client: TestClient) -> None:
    for i in range(5):
        client.put(f"/v1/documents/zz-list-{i}", json={"text": f"Listing document number {i}."})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/documents", params=params).json()
        assert len(page["documents"]) <= 2
        seen += [d["document_id"] for d in page["documents"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert [d for d in seen if d.startswith("zz-list-")] == [f"zz-list-{i}" for i in range(5)]


def test_delete_removes_registry_row_and_vectors(client: TestClient) -> None:
    client.put("/v1/documents/volcano", json={"text": long_text("VOLCANO", 3)})
    assert points_of(client, "volcano") > 0
    assert client.delete("/v1/documents/volcano").status_code == 204
    assert client.get("/v1/documents/volcano").status_code == 404
    assert points_of(client, "volcano") == 0
    assert all(r["document_id"] != "volcano" for r in search(client, "VOLCANO river ecology", top_k=50))
    missing = client.delete("/v1/documents/volcano")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    recreated = client.put("/v1/documents/volcano", json={"text": "Lava cools into basalt."})
    assert recreated.status_code == 201
    assert recreated.json()["status"] == "created"


async def test_same_document_id_in_two_tenants_is_two_documents(client: TestClient) -> None:
    services = services_of(client)
    await services.ingest.ingest("tenant-a", "shared", text="Octopuses have three hearts.")
    await services.ingest.ingest("tenant-b", "shared", text="Tardigrades survive in space.")
    from service.app.search.models import SearchRequest

    a = await services.search.search("tenant-a", SearchRequest(query="animal hearts", top_k=10))
    b = await services.search.search("tenant-b", SearchRequest(query="animal hearts", top_k=10))
    assert [r.text for r in a.results] == ["Octopuses have three hearts."]
    assert [r.text for r in b.results] == ["Tardigrades survive in space."]
    await services.ingest.delete("tenant-a", "shared")
    assert (await services.ingest.get("tenant-b", "shared")).document_id == "shared"


def test_an_upload_declaring_its_charset_is_decoded_with_it(client: TestClient) -> None:
    content = "Crème brûlée needs a blowtorch.".encode("latin-1")
    response = client.post(
        "/v1/documents", files={"file": ("dessert.txt", content, "text/plain; charset=latin-1")}
    )
    assert response.status_code == 201, response.text
    hits = search(client, "creme brulee dessert", top_k=1)
    assert hits[0]["text"] == "Crème brûlée needs a blowtorch."


def test_the_extracted_text_of_the_active_version_is_kept(client: TestClient) -> None:
    services = services_of(client)
    tenant = services.settings.default_tenant
    html = "<html><body><h1>Kept</h1><p>The text <b>that was chunked</b> is kept.</p></body></html>"
    response = client.put("/v1/documents/kept-text", json={"text": html, "content_type": "text/html"})
    assert response.status_code == 201, response.text
    source = services.registry.source(tenant, "kept-text")
    assert source is not None
    assert source.record.version == response.json()["version"]
    assert "that was chunked" in source.text
    assert "<b>" not in source.text
    client.put("/v1/documents/kept-text", json={"text": "replaced text"})
    assert services.registry.source(tenant, "kept-text").text == "replaced text"
    assert client.delete("/v1/documents/kept-text").status_code == 204
    assert services.registry.source(tenant, "kept-text") is None


@pytest.mark.parametrize(
    ("document_id", "text", "query"),
    [
        ("blob-letters", "x" * 100_000, "x"),
        ("blob-emoji", "😀" * 9_000, "😀"),
        ("blob-mixed", "".join(f"{'ab' * 80}{i:06d}" for i in range(600)), "ab"),
    ],
)
def test_text_without_whitespace_is_cut_into_chunks_of_bounded_length(
    client: TestClient, counting: CountingEmbedder, document_id: str, text: str, query: str
) -> None:
    """WordPiece reads a run of more than 100 letters as one [UNK] token: the token budget alone kept such a blob
    as one chunk of any length, returned whole by every search that matched it."""
    services = services_of(client)
    max_chars = services.ingest.chunker.max_chars
    body = {"text": text, "metadata": {"blob": document_id}}
    created = client.put(f"/v1/documents/{document_id}", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["chunks"] >= len(text) // max_chars
    results = search(client, query, mode="dense", top_k=100, filter={"blob": document_id})
    assert results
    assert all(0 < len(r["text"]) <= max_chars and r["text"] in text for r in results)
    # The cap is derived from the chunk size, not a new parameter: the same text is still "unchanged".
    embedded_before = len(counting.embedded)
    again = client.put(f"/v1/documents/{document_id}", json=body)
    assert again.status_code == 200
    assert again.json()["status"] == "unchanged"
    assert len(counting.embedded) == embedded_before
