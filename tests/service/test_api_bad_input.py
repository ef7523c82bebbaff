"""Every bad-input case answers 4xx with a reason, never 500, and never loses what is stored."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app.store.embedder import FastEmbedEmbedder
from tests.service.support import encrypt_pdf, make_pdf, make_settings, running_app, services_of

LIMIT = 4096
KEEP = "keep-me"
KEEP_TEXT = "Saturn's rings are made of ice and rock."


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, embedder: FastEmbedEmbedder) -> Iterator[TestClient]:
    """An app with a small MAX_DOCUMENT_BYTES and one stored document that must survive every bad request."""
    settings = make_settings(tmp_path_factory.mktemp("bad"), max_document_bytes=LIMIT)
    with running_app(settings, embedder=embedder) as client:
        assert (
            client.put(f"/v1/documents/{KEEP}", json={"text": KEEP_TEXT, "metadata": {"n": 1}}).status_code
            == 201
        )
        yield client


@pytest.fixture(autouse=True)
def _stored_document_survives(client: TestClient) -> Iterator[None]:
    before = client.get(f"/v1/documents/{KEEP}").json()
    yield
    assert client.get(f"/v1/documents/{KEEP}").json() == before
    results = client.post("/v1/search", json={"query": "Saturn rings ice", "top_k": 1}).json()["results"]
    assert results[0]["document_id"] == KEEP
    assert results[0]["text"] == KEEP_TEXT


def assert_error(response, status: int, code: str, reason: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert reason.lower() in error["message"].lower()


# --- size limits ---------------------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413_by_content_length(client: TestClient) -> None:
    body = json.dumps({"text": "x" * (LIMIT + 10)})
    response = client.put(f"/v1/documents/{KEEP}", content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large", "MAX_DOCUMENT_BYTES")


def test_a_chunked_body_over_the_limit_is_413_while_reading(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    response = client.put(
        f"/v1/documents/{KEEP}", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")


def test_an_upload_over_the_limit_is_413(client: TestClient) -> None:
    response = client.post(
        "/v1/documents", files={"file": ("big.txt", b"z " * LIMIT, "text/plain")}, data={"document_id": KEEP}
    )
    assert_error(response, 413, "payload_too_large")


def test_a_body_just_under_the_limit_is_accepted(client: TestClient) -> None:
    text = "Small moons shepherd the rings. " * 100
    body = json.dumps({"text": text})
    assert len(body) <= LIMIT
    assert client.put("/v1/documents/under-limit", content=body).status_code == 201


# --- types ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("filename", "declared"),
    [
        ("cat.png", "image/png"),
        ("doc.docx", "application/octet-stream"),
        # EYES10: a generic type with an unknown extension, or none, is not taken as text (documented).
        ("x.bin", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("notes.csv", ""),
    ],
)
def test_unsupported_upload_types_are_415(client: TestClient, filename: str, declared: str) -> None:
    response = client.post(
        "/v1/documents", files={"file": (filename, b"plain words", declared)}, data={"document_id": KEEP}
    )
    assert_error(response, 415, "unsupported_media_type", "unsupported")
    assert response.json()["error"]["supported"] == [
        "text/plain",
        "text/markdown",
        "text/html",
        "application/pdf",
    ]


def test_an_upload_part_without_a_content_type_and_an_unknown_extension_is_415(client: TestClient) -> None:
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="noext"\r\n\r\nplain words\r\n--xyz--\r\n'
    response = client.post(
        "/v1/documents", content=part, headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert_error(response, 415, "unsupported_media_type", "'noext'")


def test_a_declared_text_type_wins_over_an_unknown_extension(client: TestClient) -> None:
    """The documented rule: the part's own supported type is taken as said, whatever the file is called."""
    response = client.post("/v1/documents", files={"file": ("notes.log", b"plain words", "text/plain")})
    assert response.status_code == 201, response.text
    assert client.get("/v1/documents/notes.log").json()["content_type"] == "text/plain"
    assert client.delete("/v1/documents/notes.log").status_code == 204


def test_an_unsupported_json_content_type_is_415(client: TestClient) -> None:
    response = client.put(f"/v1/documents/{KEEP}", json={"text": "x", "content_type": "application/pdf"})
    assert_error(response, 415, "unsupported_media_type")


def test_posting_json_instead_of_multipart_is_415(client: TestClient) -> None:
    assert_error(
        client.post("/v1/documents", json={"text": "hello"}), 415, "unsupported_media_type", "multipart"
    )


# --- malformed bodies ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "body"),
        (b'{"metadata": {}}', "text"),
        (b'{"text": 42}', "text"),
        (b'{"text": "ok", "unknown": 1}', "unknown"),
    ],
)
def test_malformed_json_bodies_are_422(client: TestClient, body: bytes, reason: str) -> None:
    response = client.put(f"/v1/documents/{KEEP}", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_input", reason)


@pytest.mark.parametrize("text", ["", "   \n\t  ", "<script>alert(1)</script>"])
def test_empty_text_is_422(client: TestClient, text: str) -> None:
    content_type = "text/html" if text.startswith("<") else "text/plain"
    response = client.put(f"/v1/documents/{KEEP}", json={"text": text, "content_type": content_type})
    assert_error(response, 422, "invalid_input", "empty")


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"nested": {"a": 1}}, "no nested objects"),
        ({"mixed": ["a", 1]}, "list of"),
        ({"bad key": "x"}, "must match"),
        ({"a.b": "x"}, "must match"),
        ({"nan": float("inf")}, "finite"),
        ([1, 2], "metadata"),
        ("text", "metadata"),
    ],
)
def test_bad_metadata_is_422(client: TestClient, metadata: object, reason: str) -> None:
    body = json.dumps({"text": "Valid text.", "metadata": metadata}, allow_nan=True)
    response = client.put(f"/v1/documents/{KEEP}", content=body)
    assert response.status_code == 422, response.text
    assert reason in response.text


@pytest.mark.parametrize("document_id", ["has space", "x" * 257, "semi;colon", "ümlaut"])
def test_bad_document_ids_are_422(client: TestClient, document_id: str) -> None:
    response = client.put(f"/v1/documents/{document_id}", json={"text": "Valid text."})
    assert_error(response, 422, "invalid_input", "document_id")


@pytest.mark.parametrize("document_id", [".", ".."])
def test_dot_segment_ids_are_refused_on_every_write_route(client: TestClient, document_id: str) -> None:
    """``.`` and ``..`` match the id pattern, but every client and proxy resolves them away in a URL: stored, the
    document could never be read or deleted again. PUT (sent without normalising), bulk, upload and the async
    PUT all refuse them, and nothing is stored under them."""
    reason = "dot segment"
    raw = client.put(f"/v1/documents/{document_id}", json={"text": "Valid text."})
    # httpx resolves the dot segment itself (the request goes to /v1/ or /v1/documents/), which is the point.
    assert raw.status_code in (404, 405, 422), raw.text
    bulk = client.post(
        "/v1/documents:bulk", json={"documents": [{"document_id": document_id, "text": "Valid text."}]}
    )
    assert bulk.status_code in (200, 207, 422), bulk.text
    if bulk.status_code == 422:
        assert reason in bulk.text
    else:
        (item,) = bulk.json()["items"]
        assert item["status_code"] == 422, item
        assert reason in item["error"]["message"]
    upload = client.post(
        "/v1/documents",
        files={"file": ("a.txt", b"Valid text.", "text/plain")},
        data={"document_id": document_id},
    )
    assert_error(upload, 422, "invalid_input", reason)
    listed = client.get("/v1/documents", params={"limit": 100}).json()
    assert document_id not in [d["document_id"] for d in listed["documents"]]


def test_the_dot_segment_rule_is_in_the_write_path_itself() -> None:
    """A raw client (``curl --path-as-is``) reaches the PUT route with the id intact: the route refuses it."""
    from service.app.core.errors import InvalidInput
    from service.app.ingest.models import validate_document_id, validate_new_document_id

    for document_id in (".", ".."):
        with pytest.raises(InvalidInput, match="dot segment"):
            validate_new_document_id(document_id)
        assert validate_document_id(document_id) == document_id  # reads and deletes still reach old ones
    assert validate_new_document_id("...") == "..."  # not a dot segment


# --- uploads -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("filename", "content", "reason"),
    [
        ("broken.pdf", b"%PDF-1.4 truncated", "PDF cannot be read"),
        ("locked.pdf", encrypt_pdf(make_pdf(["secret"])), "encrypted"),
        ("blank.pdf", make_pdf([""]), "no text"),
        ("empty.txt", b"", "no text"),
        ("latin.txt", "caf\xe9".encode("latin-1"), "UTF-8"),
        ("binary.txt", b"\x00\x01\x02", "NUL"),
    ],
)
def test_unreadable_uploads_are_422(client: TestClient, filename: str, content: bytes, reason: str) -> None:
    response = client.post(
        "/v1/documents",
        files={"file": (filename, content, "application/octet-stream")},
        data={"document_id": KEEP},
    )
    assert_error(response, 422, "invalid_input", reason)


@pytest.mark.parametrize(
    ("files", "data", "reason"),
    [
        (None, {"document_id": KEEP}, "file"),
        ({"file": ("a.txt", b"text", "text/plain")}, {"document_id": "bad id"}, "document_id"),
        ({"file": ("a.txt", b"text", "text/plain")}, {"document_id": KEEP, "metadata": "{oops"}, "metadata"),
        (
            {"file": ("a.txt", b"text", "text/plain")},
            {"document_id": KEEP, "metadata": '{"x": {"y": 1}}'},
            "nested",
        ),
        ({"file": ("...", b"text", "text/plain")}, {}, "document_id"),
    ],
)
def test_bad_upload_forms_are_422(client: TestClient, files: dict | None, data: dict, reason: str) -> None:
    if files is None:
        response = client.post("/v1/documents", data=data, files={"other": ("a.txt", b"x", "text/plain")})
    else:
        response = client.post("/v1/documents", files=files, data=data)
    assert_error(response, 422, "invalid_input", reason)


def test_a_malformed_multipart_body_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/documents",
        content=b"--nope\r\ngarbage",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(response, 422, "invalid_input", "malformed multipart")
    missing_boundary = client.post(
        "/v1/documents", content=b"abc", headers={"content-type": "multipart/form-data"}
    )
    assert_error(missing_boundary, 422, "invalid_input", "boundary")


# --- unknown ids, listing, search ----------------------------------------------------------------------
def test_unknown_ids_are_404(client: TestClient) -> None:
    assert_error(client.get("/v1/documents/nope"), 404, "not_found", "nope")
    assert_error(client.delete("/v1/documents/nope"), 404, "not_found", "nope")


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 101}, {"limit": "x"}, {"cursor": "!!!"}, {"cursor": "eyJ4IjogMX0"}]
)
def test_bad_list_parameters_are_422(client: TestClient, params: dict) -> None:
    assert_error(client.get("/v1/documents", params=params), 422, "invalid_input")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query": ""},
        {"query": "   "},
        {"query": "x" * 9000},
        {"query": "ok", "top_k": 0},
        {"query": "ok", "top_k": 101},
        {"query": "ok", "top_k": "many"},
        {"query": "ok", "score_threshold": 2},
        {"query": "ok", "filter": {"bad key": "x"}},
        {"query": "ok", "filter": {"n": {"any": []}}},
        {"query": "ok", "filter": {"n": {"between": [1, 2]}}},
        {"query": "ok", "filter": {"n": {}}},
        {"query": "ok", "filter": {"n": [1, 2]}},
        {"query": "ok", "filter": {"n": None}},
        {"query": "ok", "filter": {"n": {"gte": "high"}}},
        {"query": "ok", "extra": True},
        {"query": "\u202e\u200b\u200d"},
        {"query": " \u0301\u0308 "},
    ],
)
def test_bad_search_requests_are_422(client: TestClient, body: dict) -> None:
    assert_error(client.post("/v1/search", json=body), 422, "invalid_input")


@pytest.mark.parametrize("route", ["/v1/search", "/v1/answer"])
@pytest.mark.parametrize(
    ("field", "raw", "reason"),
    [
        ("score_threshold", "NaN", "score_threshold: Input should be a finite number"),
        ("score_threshold", "Infinity", "score_threshold: Input should be a finite number"),
        ("score_threshold", "-Infinity", "score_threshold: Input should be a finite number"),
        ("filter", '{"n": NaN}', "filter.n must be a finite number"),
        ("filter", '{"n": {"gte": NaN}}', "filter.n range bounds must be finite numbers"),
        ("filter", '{"n": {"lt": 1, "gt": -Infinity}}', "filter.n range bounds must be finite numbers"),
    ],
)
def test_a_non_finite_float_is_422_naming_the_field_and_saying_finite(
    client: TestClient, route: str, field: str, raw: str, reason: str
) -> None:
    """JSON parsers here accept NaN/Infinity; ``{"score_threshold": NaN}`` got "Input should be less than or equal
    to 1", true of NaN but no help: the client's mistake is a non-number."""
    body = f'{{"query": "ok", "{field}": {raw}}}'
    response = client.post(route, content=body.encode(), headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_input", reason)


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        (99999999999999999999999, "filter.year is out of the 64-bit integer range"),
        (2**63, "filter.year is out of the 64-bit integer range"),
        (-(2**63) - 1, "filter.year is out of the 64-bit integer range"),
        ({"any": [2020, 2**64]}, "filter.year.any has a value out of the 64-bit integer range"),
        ({"gte": 2020, "lt": 10**30}, "filter.year.lt is out of the 64-bit integer range"),
    ],
)
def test_a_filter_integer_outside_int64_is_422_like_in_metadata(
    client: TestClient, condition: object, reason: str
) -> None:
    """The same value is refused in metadata; in a filter it matched nothing (200 []), silently."""
    for route in ("/v1/search", "/v1/answer"):
        response = client.post(route, json={"query": "ok", "filter": {"year": condition}})
        assert_error(response, 422, "invalid_input", reason)
    stored = client.put("/v1/documents/int64", json={"text": "a", "metadata": {"year": 2**63}})
    assert_error(stored, 422, "invalid_input", "metadata.year is out of the 64-bit integer range")


@pytest.mark.parametrize(
    "value", [2**63 - 1, -(2**63), {"any": [2**63 - 1]}, {"gte": -(2**63)}, {"lt": 1e30}]
)
def test_a_filter_at_the_int64_limits_or_a_large_float_is_accepted(client: TestClient, value: object) -> None:
    # /v1/answer passes its parsed filter on to search: an "any" or a range was refused there as "not AnyOf".
    for route in ("/v1/search", "/v1/answer"):
        response = client.post(route, json={"query": "ok", "filter": {"year": value}})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("route", [f"/v1/documents/{KEEP}", "/v1/documents:bulk"])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", json.dumps({"text": "curl -d without a header"})),  # curl -d
        ("text/plain", json.dumps({"text": "JSON declared as text"})),
        ("text/plain", "Just the document's text, not JSON."),
        ("multipart/form-data; boundary=x", "--x--"),
        ("", json.dumps({"text": "an empty Content-Type header"})),
    ],
)
def test_a_put_body_not_declared_as_json_is_415(
    client: TestClient, route: str, content_type: str, body: str
) -> None:
    """The body was parsed as JSON whatever it was declared as: curl -d's form encoding was accepted, a text
    body got "body is not valid JSON" (422) instead of the documented 415."""
    method = client.put if route.startswith("/v1/documents/") else client.post
    response = method(route, content=body.encode(), headers={"content-type": content_type})
    assert_error(response, 415, "unsupported_media_type", "Content-Type: application/json")


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8"])
def test_a_bulk_body_without_a_json_content_type_is_415_and_stores_nothing(
    client: TestClient, content_type: str | None
) -> None:
    """A POST without a Content-Type (or text/plain) is a CORS "simple" request: a web page can send one cross-site
    with no preflight (``fetch(url, {method: "POST", body: new Blob([json])})``). documents:bulk read it as JSON,
    so with authentication off any page a user opened could write documents."""
    headers = {} if content_type is None else {"content-type": content_type}
    planted = f"csrf-{uuid.uuid4().hex}"
    body = json.dumps({"documents": [{"document_id": planted, "text": "planted by a web page"}]})
    response = client.post("/v1/documents:bulk", content=body.encode(), headers=headers)
    assert_error(response, 415, "unsupported_media_type", "curl: add -H 'Content-Type: application/json'")
    if content_type is None:
        assert "declared with no Content-Type" in response.json()["error"]["message"]
    assert client.get(f"/v1/documents/{planted}").status_code == 404
    accepted = client.post(
        "/v1/documents:bulk", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize(
    ("content_type", "codec"),
    [
        (None, "utf-8"),  # no header: a PUT is never a CORS simple request (a browser preflights it)
        ("application/json", "utf-8"),
        ("Application/JSON; charset=utf-8", "utf-8"),
        ("application/vnd.api+json", "utf-8"),
        ("application/json", "utf-16"),  # JSON text in UTF-16/32 (RFC 8259 section 8.1 allowed it before)
        ("application/json", "utf-32-be"),
    ],
)
def test_a_put_body_declared_as_json_or_undeclared_is_accepted(
    client: TestClient, content_type: str | None, codec: str
) -> None:
    text = f"Declared {content_type} in {codec}: tea needs 80 degrees, 東京."
    headers = {} if content_type is None else {"content-type": content_type}
    body = json.dumps({"text": text}, ensure_ascii=False).encode(codec)
    response = client.put("/v1/documents/declared-json", content=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    assert response.json()["status"] in ("created", "updated")
    services = services_of(client)
    assert services.registry.source(services.settings.default_tenant, "declared-json").text == text


def test_unknown_routes_and_methods_are_json_errors(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.patch(f"/v1/documents/{KEEP}", json={}), 405, "method_not_allowed")


@pytest.mark.parametrize("route", ["/v1/search", "/v1/answer"])
@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_json_post_body_not_declared_as_json_is_415(
    client: TestClient, route: str, content_type: str | None
) -> None:
    """Search and answer said 422 "Input should be a valid dictionary" (FastAPI does not read a body declared
    as anything else, or not at all, as JSON); PUT and documents:bulk said 415 naming the header to send."""
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(route, content=json.dumps({"query": "Saturn rings"}).encode(), headers=headers)
    assert_error(response, 415, "unsupported_media_type", "Content-Type: application/json")


@pytest.mark.parametrize("route", ["/v1/search", "/v1/answer"])
@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/Problem+JSON"]
)
def test_a_json_post_body_declared_as_json_is_accepted(
    client: TestClient, route: str, content_type: str
) -> None:
    response = client.post(
        route,
        content=json.dumps({"query": "Saturn rings ice"}).encode(),
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert KEEP in response.text


def test_a_json_post_without_a_body_or_with_bad_json_stays_422(client: TestClient) -> None:
    assert_error(client.post("/v1/search"), 422, "invalid_input", "body")
    response = client.post("/v1/search", content=b"{", headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_input")


@pytest.mark.parametrize("route", ["/v1/search", "/v1/answer"])
def test_a_filter_with_more_conditions_than_a_document_has_keys_is_422(
    client: TestClient, route: str
) -> None:
    """50,000 clauses (a 1 MB body) cost 6 s of CPU per search; no document has more than 64 metadata keys,
    and every condition must hold, so such a filter could match nothing."""
    clauses = {f"k{i}": i for i in range(5_000)}
    assert_error(client.post(route, json={"query": "Saturn", "filter": clauses}), 422, "invalid_input", "64")
    response = client.post(route, json={"query": "Saturn rings", "filter": {f"k{i}": i for i in range(64)}})
    assert response.status_code == 200, response.text
