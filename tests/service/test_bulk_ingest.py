"""POST /v1/documents:bulk: many documents per request with per-item outcomes; a failed item neither stops nor
undoes the others; bounded item count and size with clear 4xx; each item costs one ingest request."""

from __future__ import annotations

import json
import uuid

from fastapi.testclient import TestClient

from tests.service.prod_support import KEY_A, MakeClient, bearer
from tests.service.support import FAILING_MARKER

pytest_plugins = ["tests.service.prod_fixtures"]

BULK = "/v1/documents:bulk"


def doc(document_id: str, text: str = "", **extra: object) -> dict[str, object]:
    return {"document_id": document_id, "text": text or f"the text of {document_id}", **extra}


def test_all_items_succeed_with_their_own_status(client: TestClient, headers_a: dict[str, str]) -> None:
    assert client.put("/v1/documents/b", json={"text": "the text of b"}, headers=headers_a).status_code == 201
    response = client.post(
        BULK,
        json={
            "documents": [
                doc("a", metadata={"team": "hr"}),
                doc("b"),
                doc("c", "<p>hi</p>", content_type="text/html"),
            ]
        },
        headers=headers_a,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (3, 0)
    assert [(i["index"], i["document_id"], i["status_code"]) for i in body["items"]] == [
        (0, "a", 201),
        (1, "b", 200),  # the same text again: unchanged
        (2, "c", 201),
    ]
    assert body["items"][1]["result"]["status"] == "unchanged"
    assert client.get("/v1/documents/a", headers=headers_a).json()["metadata"] == {"team": "hr"}


def test_failed_items_are_reported_and_the_others_are_kept(
    client: TestClient, headers_a: dict[str, str]
) -> None:
    batch = [
        doc("ok-1"),
        doc("empty", "   "),
        doc("bad-meta", metadata={"nested": {"x": 1}}),
        doc("pdf", content_type="application/pdf"),
        doc("outage", f"the embedder fails on this one {FAILING_MARKER}"),
        doc("ok-2"),
    ]
    response = client.post(BULK, json={"documents": batch}, headers=headers_a)
    assert response.status_code == 207, response.text
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (2, 4)
    codes = {i["document_id"]: (i["status_code"], (i["error"] or {}).get("code")) for i in body["items"]}
    assert codes == {
        "ok-1": (201, None),
        "empty": (422, "invalid_input"),
        "bad-meta": (422, "invalid_input"),
        "pdf": (415, "unsupported_media_type"),
        "outage": (503, "service_unavailable"),
        "ok-2": (201, None),
    }
    assert "metadata.nested" in body["items"][2]["error"]["message"]
    # What succeeded is stored and searchable; what failed is not there at all.
    for document_id in ("ok-1", "ok-2"):
        assert client.get(f"/v1/documents/{document_id}", headers=headers_a).status_code == 200
    for document_id in ("empty", "bad-meta", "pdf", "outage"):
        assert client.get(f"/v1/documents/{document_id}", headers=headers_a).status_code == 404
    hits = client.post("/v1/search", json={"query": "the text of ok-2"}, headers=headers_a).json()["results"]
    assert {h["document_id"] for h in hits} == {"ok-1", "ok-2"}
    # Resending only the failed one works once the outage is over.
    retry = client.post(BULK, json={"documents": [doc("outage")]}, headers=headers_a)
    assert retry.status_code == 200
    assert retry.json()["items"][0]["status_code"] == 201


def test_malformed_requests_are_refused_whole_and_store_nothing(
    make_client: MakeClient, headers_a: dict[str, str]
) -> None:
    with make_client(bulk_max_documents=3, bulk_max_bytes=2_000) as client:
        cases = [
            ([doc("x")], 422, "the body must be a JSON object"),
            ({"documents": []}, 422, "non-empty list"),
            ({"documents": [doc("x")], "extra": 1}, 422, "nothing else"),
            ({"documents": [doc("x"), {"text": "no id"}]}, 422, "documents.1.document_id"),
            ({"documents": [doc("x"), doc("bad/id")]}, 422, "documents.1.document_id"),
            ({"documents": [doc("x"), doc("y"), doc("x")]}, 422, "repeats documents[0]"),
            ({"documents": [doc(f"d{i}") for i in range(4)]}, 413, "BULK_MAX_DOCUMENTS is 3"),
            (
                {"documents": [doc(f"d{i}") for i in range(4)]},
                413,
                '"limit": 3, "setting": "BULK_MAX_DOCUMENTS"',
            ),
            # It named MAX_DOCUMENT_BYTES with BULK_MAX_BYTES's number.
            ({"documents": [doc("big", "word " * 500)]}, 413, "larger than BULK_MAX_BYTES (2000 bytes)"),
            ({"documents": [doc("big", "word " * 500)]}, 413, '"limit": 2000, "setting": "BULK_MAX_BYTES"'),
        ]
        for payload, status, reason in cases:
            response = client.post(BULK, json=payload, headers=headers_a)
            assert response.status_code == status, (payload, response.text)
            assert reason in json.dumps(response.json()), (reason, response.text)
        not_json = client.post(BULK, content=b"{", headers={**headers_a, "Content-Type": "application/json"})
        assert not_json.status_code == 422
        assert "not valid JSON" in not_json.text
        assert client.get("/v1/documents", headers=headers_a).json()["documents"] == []


def test_each_item_costs_one_ingest_request(make_client: MakeClient) -> None:
    key = f"k-{uuid.uuid4().hex}"
    with make_client(api_keys=f"{key}:t", rate_limit_enabled=True, rate_limit_ingest="5/minute") as client:
        h = bearer(key)
        first = client.post(BULK, json={"documents": [doc("a"), doc("b"), doc("c")]}, headers=h)
        assert first.status_code == 200
        assert first.headers["RateLimit-Remaining"] == "2"
        second = client.post(BULK, json={"documents": [doc("d"), doc("e"), doc("f")]}, headers=h)
        assert second.status_code == 429
        assert int(second.headers["Retry-After"]) >= 1
        assert second.headers["RateLimit-Remaining"] == "1"  # one request left; the batch needed three
        assert client.get("/v1/documents/d", headers=h).status_code == 404  # a refused batch stores nothing
        never = client.post(BULK, json={"documents": [doc(f"n{i}") for i in range(6)]}, headers=h)
        assert never.status_code == 422
        assert "can never fit the ingest rate limit (5 per 1 minute); send at most 5" in never.text


def test_bulk_is_tenant_scoped(
    client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str]
) -> None:
    assert client.post(BULK, json={"documents": [doc("shared")]}, headers=headers_a).status_code == 200
    assert client.get("/v1/documents/shared", headers=headers_b).status_code == 404
    assert client.post(BULK, json={"documents": [doc("shared")]}).status_code == 401
    assert KEY_A not in client.post(BULK, json={"documents": [doc("x")]}, headers=bearer("nope")).text


def test_what_the_schema_declares_invalid_refuses_the_whole_batch(
    client: TestClient, headers_a: dict[str, str]
) -> None:
    """The OpenAPI schema declares `text` minLength 1 and the metadata key pattern: an item breaking either
    is a malformed request (422, nothing stored), as a schema-driven client expects, not a 207."""
    empty_text = {"document_id": "empty-text", "text": ""}
    for bad in (empty_text, doc("bad-key", metadata={"": "x"})):
        response = client.post(BULK, json={"documents": [doc("fine"), bad]}, headers=headers_a)
        assert response.status_code == 422, response.text
        assert "documents[1]" in response.json()["error"]["message"]
        assert client.get("/v1/documents/fine", headers=headers_a).status_code == 404
