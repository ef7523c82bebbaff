"""Regression tests for hostile input found by fuzzing and hand-probing: each answer is a 4xx naming the reason
(never a 500), and nothing already stored is lost."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.support import create_database, make_settings, running_app

STORED = {"text": "Otters hold hands while they sleep.", "metadata": {"animal": "otter"}}


@pytest.fixture
def client(tmp_path: Path, embedder: Any) -> Iterator[TestClient]:
    """A started app with one stored document, ``kept``."""
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        assert client.put("/v1/documents/kept", json=STORED).status_code == 201
        yield client


def assert_rejected(response: Any, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert reason in error["message"], error


def assert_kept_intact(client: TestClient) -> None:
    document = client.get("/v1/documents/kept")
    assert document.status_code == 200
    assert document.json()["metadata"] == STORED["metadata"]
    hits = client.post("/v1/search", json={"query": "sleeping otters", "top_k": 1}).json()["results"]
    assert [hit["document_id"] for hit in hits] == ["kept"]


# json.dumps escapes a lone surrogate as "\ud800", which json.loads turns back into an unencodable str.
LONE_SURROGATE_TEXT = json.dumps({"text": "broken \ud800 text"})
LONE_SURROGATE_METADATA = json.dumps({"text": "fine", "metadata": {"tag": "bad \udfff"}})
LONE_SURROGATE_LIST = json.dumps({"text": "fine", "metadata": {"tags": ["ok", "\ud83d"]}})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (LONE_SURROGATE_TEXT, "text contains an unpaired surrogate"),
        (LONE_SURROGATE_METADATA, "metadata.tag contains an unpaired surrogate"),
        (LONE_SURROGATE_LIST, "metadata.tags has an item with an unpaired surrogate"),
    ],
)
def test_lone_surrogates_are_a_422_not_a_500(client: TestClient, body: str, reason: str) -> None:
    """Was a 500 (UnicodeEncodeError while hashing the content); the replaced document stays as it was."""
    for path in ("/v1/documents/kept", "/v1/documents/kept?async=true"):
        assert_rejected(client.put(path, content=body), 422, reason)
    assert_kept_intact(client)


def test_lone_surrogate_in_upload_metadata_is_a_422(client: TestClient) -> None:
    """The multipart metadata field goes through the same metadata rules."""
    response = client.post(
        "/v1/documents",
        data={"document_id": "kept", "metadata": json.dumps({"tag": "\ud800"})},
        files={"file": ("kept.txt", b"replacement text", "text/plain")},
    )
    assert_rejected(response, 422, "metadata.tag contains an unpaired surrogate")
    assert_kept_intact(client)


HUGE_INTEGER = b'{"text": "fine", "metadata": {"n": 1' + b"0" * 5000 + b"}}"
DEEPLY_NESTED = b'{"text": "fine", "metadata": {"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (HUGE_INTEGER, "body is not valid JSON: Exceeds the limit"),
        (DEEPLY_NESTED, "body is not valid JSON: nested too deeply"),
    ],
)
def test_json_that_python_cannot_parse_is_a_422(client: TestClient, body: bytes, reason: str) -> None:
    """Was a 500: json.loads raises ValueError (int digits limit) / RecursionError, not JSONDecodeError."""
    assert_rejected(client.put("/v1/documents/kept", content=body), 422, reason)
    assert_kept_intact(client)


def test_unparseable_upload_metadata_is_a_422(client: TestClient) -> None:
    """Same for the metadata form field of an upload."""
    response = client.post(
        "/v1/documents",
        data={"document_id": "kept", "metadata": '{"n": ' + "[" * 100_000 + "]" * 100_000 + "}"},
        files={"file": ("kept.txt", b"replacement text", "text/plain")},
    )
    assert_rejected(response, 422, "metadata is not valid JSON: nested too deeply")
    assert_kept_intact(client)


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_k", True), ("top_k", 2.5), ("top_k", "3"), ("score_threshold", False), ("score_threshold", "0.1")],
)
def test_search_numbers_must_be_numbers(client: TestClient, field: str, value: Any) -> None:
    """Was accepted: lax parsing read top_k=true as 1 and score_threshold=false as 0.0."""
    response = client.post("/v1/search", json={"query": "otters", field: value})
    assert_rejected(response, 422, field)


def test_search_accepts_an_integer_score_threshold(client: TestClient) -> None:
    """Strict numbers still take a JSON integer where a float is expected."""
    response = client.post("/v1/search", json={"query": "otters", "score_threshold": 0})
    assert response.status_code == 200
    assert [hit["document_id"] for hit in response.json()["results"]] == ["kept"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [("/v1/documents/kept", "GET, PUT, DELETE"), ("/v1/documents", "GET, POST"), ("/v1/search", "POST")],
)
def test_405_lists_every_method_of_the_path(client: TestClient, path: str, allowed: str) -> None:
    """Was `Allow: PUT` for /v1/documents/{id}: Starlette names only the first route matching the path."""
    response = client.request("PATCH", path)
    assert_rejected(response, 405, "Method Not Allowed")
    assert response.headers["allow"] == allowed


def test_openapi_documents_the_error_body(client: TestClient) -> None:
    """Error statuses are documented with the body the service really sends (not FastAPI's HTTPValidationError)."""
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/v1/documents/{document_id}"]["put"]["responses"]
    for status in ("401", "409", "413", "415", "422", "429", "503"):
        ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorResponse"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["schemas"]["ErrorDetail"]["required"] == ["code", "message"]


def test_multipart_body_over_the_global_limit_is_a_413(tmp_path: Path, embedder: Any) -> None:
    """Was a 422 "malformed multipart body": the middleware's 413 raised inside form parsing was relabelled."""
    settings = make_settings(tmp_path, max_document_bytes=1000)
    with running_app(settings, embedder=embedder) as client:
        chunks = (b"x" * 65536 for _ in range(4))  # streamed (no Content-Length), past limit + slack
        response = client.post(
            "/v1/documents", content=chunks, headers={"content-type": "multipart/form-data; boundary=xx"}
        )
        assert_rejected(response, 413, "larger than MAX_DOCUMENT_BYTES (1000 bytes)")
        assert response.json()["error"]["limit"] == 1000


def forged_cursor(after: Any) -> str:
    """A cursor in the service's own format pointing after ``after`` (what a client could tamper together)."""
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor", [forged_cursor("a\x00b"), forged_cursor("\ud800"), forged_cursor(5), "!!!", "_w", "AA"]
)
def test_tampered_cursors_are_a_422_on_postgres(
    tmp_path: Path, embedder: Any, postgres_url: str, cursor: str
) -> None:
    """Was a 503 "registry unavailable: DataError" on Postgres for a cursor carrying a NUL byte."""
    database_url = create_database(postgres_url, "r1_tampered_cursor")
    settings = make_settings(tmp_path, database_url=database_url)
    with running_app(settings, embedder=embedder) as client:
        assert client.put("/v1/documents/kept", json=STORED).status_code == 201
        response = client.get("/v1/documents", params={"cursor": cursor})
        assert_rejected(response, 422, "cursor is not valid")
        assert [d["document_id"] for d in client.get("/v1/documents").json()["documents"]] == ["kept"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"z\xff\xfe\x1a", "body is not valid JSON: 'utf-8' codec can't decode"),
        (b'{"query": "q", "top_k": 1' + b"0" * 5000 + b"}", "body is not valid JSON: Exceeds the limit"),
        (b'{"query": "q", "filter": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
)
def test_unparseable_search_body_is_a_422(client: TestClient, body: bytes, reason: str) -> None:
    """Was FastAPI's 400 "There was an error parsing the body" (code http_error); bad JSON is a 422 everywhere."""
    response = client.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert_rejected(response, 422, reason)
    assert response.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"any": ["a", 1]}, 'filter.tag "any" must list only strings or only integers'),
        ({"any": [True]}, 'filter.tag "any" must list only strings or only integers'),
        ({"any": ["a"] * 101}, 'filter.tag needs "any": a list of 1 to 100 values'),
        ({}, "filter.tag must be a string, number or boolean"),
        ({"gte": 1, "any": [1]}, "got an object with keys ['any', 'gte']"),
        ({"gte": "high"}, "filter.tag range bounds must be numbers"),
        (None, "not null"),
        (["a", "b"], 'not list (several values go in {"any": [...]})'),
    ],
)
def test_a_bad_filter_value_gets_a_reason_that_fits(client: TestClient, value: Any, reason: str) -> None:
    """Was "filter.tag.str: Input should be a valid string" for all of these (the union's first member)."""
    response = client.post("/v1/search", json={"query": "otters", "filter": {"tag": value}})
    assert_rejected(response, 422, reason)


def test_good_filters_still_filter(client: TestClient) -> None:
    """The shape check lets every documented filter through."""
    for value in ("otter", {"any": ["otter", "bee"]}):
        response = client.post("/v1/search", json={"query": "otters", "filter": {"animal": value}})
        assert [hit["document_id"] for hit in response.json()["results"]] == ["kept"]
    response = client.post("/v1/search", json={"query": "otters", "filter": {"animal": {"any": ["bee"]}}})
    assert response.json()["results"] == []


@pytest.mark.parametrize(
    ("name", "data"),
    [("page.pdf", b"<!doctype html><html><body>Otters</body></html>"), ("notes.txt", b"plain words")],
)
def test_a_pdf_that_is_not_a_pdf_says_so(client: TestClient, name: str, data: bytes) -> None:
    """Was 422 "the PDF cannot be read: Stream has ended unexpectedly" (pypdf's words)."""
    response = client.post(
        "/v1/documents", data={"document_id": "kept"}, files={"file": (name, data, "application/pdf")}
    )
    assert_rejected(response, 422, "the file is not a PDF (no %PDF- header)")
    assert_kept_intact(client)
