"""HTTP hygiene: security headers, CORS allow-list, OpenAPI UI off in production, and the request-body limit
enforced while the body streams in (413 as soon as it is crossed, without reading the rest, with or without
Content-Length, naming the settings it comes from); probes answer HEAD; an id with an encoded slash is a 422."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from service.app.api.middleware import BODY_LIMIT_SLACK_BYTES, BodySizeLimitMiddleware
from service.app.core.errors import ErrorResponse
from tests.service.prod_support import KEY_A, MakeClient
from tests.support.processes import api_process

pytest_plugins = ["tests.service.prod_fixtures"]

ORIGIN = "https://app.example.com"


def test_security_headers_on_success_and_errors(make_client: MakeClient, headers_a: dict[str, str]) -> None:
    with make_client(environment="staging") as client:
        for response in (
            client.get("/healthz"),
            client.get("/v1/documents"),  # 401
            client.get("/v1/documents/none", headers=headers_a),  # 404
        ):
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"
            assert response.headers["Referrer-Policy"] == "no-referrer"
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_no_hsts_in_development(make_client: MakeClient) -> None:
    with make_client(environment="development") as client:
        response = client.get("/healthz")
        assert "Strict-Transport-Security" not in response.headers
        assert response.headers["X-Frame-Options"] == "DENY"


def test_docs_are_served_with_their_own_csp_outside_production(make_client: MakeClient) -> None:
    with make_client(environment="development") as client:
        docs = client.get("/docs")
        assert docs.status_code == 200
        csp = docs.headers["Content-Security-Policy"]
        # Same-origin only: the Swagger UI assets are served by the service (test_api_consumers.py).
        assert "http" not in csp
        assert "script-src 'self' 'unsafe-inline'" in csp
        assert client.get("/openapi.json").status_code == 200


def test_openapi_ui_is_off_in_production(make_client: MakeClient) -> None:
    with make_client(environment="production") as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 404, path
    with make_client(environment="production", docs_enabled=True) as client:
        assert client.get("/openapi.json").status_code == 200


def test_cors_allows_only_listed_origins(make_client: MakeClient, headers_a: dict[str, str]) -> None:
    with make_client(cors_origins=f"{ORIGIN},https://admin.example.com") as client:
        preflight = client.options(
            "/v1/search",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
        assert preflight.headers["X-Request-ID"]  # preflights are answered inside the request-id middleware

        actual = client.post("/v1/search", json={"query": "q"}, headers={**headers_a, "Origin": ORIGIN})
        assert actual.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "X-Request-ID" in actual.headers["Access-Control-Expose-Headers"]

        evil = client.options(
            "/v1/search",
            headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"},
        )
        assert evil.status_code == 400
        assert "Access-Control-Allow-Origin" not in evil.headers
        simple = client.get("/healthz", headers={"Origin": "https://evil.example.net"})
        assert "Access-Control-Allow-Origin" not in simple.headers


def test_no_cors_headers_without_an_allow_list(make_client: MakeClient) -> None:
    with make_client(cors_origins="") as client:
        response = client.get("/healthz", headers={"Origin": ORIGIN})
        assert "Access-Control-Allow-Origin" not in response.headers


# --- body size limit -----------------------------------------------------------------------------------


def test_declared_oversize_body_is_refused_before_reading(make_client: MakeClient) -> None:
    with make_client(max_document_bytes=1000, bulk_max_bytes=1000) as client:
        limit = 1000 + BODY_LIMIT_SLACK_BYTES
        response = client.post(
            "/v1/search",
            content=b"x" * (limit + 1),
            headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert response.json()["error"]["limit"] == limit
        # It named a bare number (MAX_DOCUMENT_BYTES + 128 KiB) that no setting holds.
        assert "the larger of MAX_DOCUMENT_BYTES (1000) and BULK_MAX_BYTES (1000)" in response.text
        assert response.headers["X-Request-ID"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_middleware_413_and_the_route_413_have_one_format(make_client: MakeClient) -> None:
    """EYES10: the middleware's 413 was `json.dumps` with spaces (`{"error": {`), the route's compact; a client
    comparing or parsing them strictly saw two formats. Both are now the error model, rendered alike."""
    headers = {"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"}
    with make_client(max_document_bytes=1000, bulk_max_bytes=1000) as client:
        by_route = client.put(
            "/v1/documents/big", content=b'{"text": "' + b"x" * 2000 + b'"}', headers=headers
        )
        by_middleware = client.put(
            "/v1/documents/big", content=b"x" * (1000 + BODY_LIMIT_SLACK_BYTES + 1), headers=headers
        )
    assert by_route.status_code == by_middleware.status_code == 413
    assert "MAX_DOCUMENT_BYTES (1000 bytes)" in by_route.text  # the route's own check answered the first
    assert "128 KiB" in by_middleware.text or "envelope" in by_middleware.text  # the middleware the second
    for response in (by_route, by_middleware):
        body = ErrorResponse.model_validate_json(response.content)
        assert body.error.code == "payload_too_large"
        assert response.headers["content-type"] == "application/json"
        assert response.content == JSONResponse(response.json()).body, response.content


def test_probes_answer_head_and_an_id_with_an_encoded_slash_is_a_422(tmp_path: Path) -> None:
    """Through a real server (uvicorn decodes ``%2F`` in the path, answers HEAD without a body): HEAD /healthz was
    a 405 (load balancers and uptime checkers probe with HEAD), and ``PUT /v1/documents/a%2Fb`` a 404 "Not Found"
    a client could not tell from an unknown document, while ``a%20b`` got the 422 naming the id pattern."""
    with api_process(
        tmp_path, ready_path="/readyz", data_dir=str(tmp_path / "data"), auth_disabled="true"
    ) as url:
        for path in ("/healthz", "/readyz", "/readyz/serving"):
            head = httpx.head(f"{url}{path}")
            assert head.status_code == httpx.get(f"{url}{path}").status_code == 200, (path, head.text)
            assert head.content == b""
        for method in ("PUT", "GET", "DELETE"):
            response = httpx.request(method, f"{url}/v1/documents/a%2Fb", json={"text": "slash"})
            assert response.status_code == 422, (method, response.text)
            assert "document_id must match" in response.json()["error"]["message"]
        assert httpx.put(f"{url}/v1/documents/ab", json={"text": "no slash"}).status_code == 201
        assert (
            httpx.get(f"{url}/v1/documents/", follow_redirects=True).json()["documents"][0]["document_id"]
            == "ab"
        )
        assert httpx.get(f"{url}/v1/documents/unknown").status_code == 404


class StreamingBody:
    """An ASGI `receive` that hands out `chunks` body messages of `size` bytes and counts what was taken."""

    def __init__(self, chunks: int, size: int, prefix: bytes = b"") -> None:
        self.chunks = chunks
        self.size = size
        self.prefix = prefix  # sent at the start of the first chunk (e.g. a multipart part header)
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        if self.taken >= self.chunks:
            return {"type": "http.disconnect"}
        data = (self.prefix if self.taken == 0 else b"") + b"x" * self.size
        self.taken += 1
        return {"type": "http.request", "body": data[: self.size], "more_body": self.taken < self.chunks}


def drive(client: TestClient, method: str, path: str, body: StreamingBody, content_type: str) -> list[dict]:
    """Call the app's ASGI interface directly (on the app's loop) with a chunked body: no Content-Length."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {KEY_A}".encode()),
            (b"content-type", content_type.encode()),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    client.portal.call(client.app, scope, body, send)
    return sent


def status_of(sent: list[dict]) -> int:
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_chunked_oversize_body_stops_being_read_at_the_limit(make_client: MakeClient) -> None:
    with make_client(max_document_bytes=1000, bulk_max_bytes=1000) as client:
        limit = 1000 + BODY_LIMIT_SLACK_BYTES
        body = StreamingBody(chunks=200, size=16 * 1024)  # 3.2 MB offered
        sent = drive(client, "POST", "/v1/search", body, "application/json")
        assert status_of(sent) == 413
        # Read up to the chunk that crossed the limit, and not one more.
        assert body.taken == limit // body.size + 1
        assert b"payload_too_large" in b"".join(
            m.get("body", b"") for m in sent if m["type"] == "http.response.body"
        )


def test_chunked_oversize_document_and_upload_are_refused_early(make_client: MakeClient) -> None:
    with make_client(max_document_bytes=50_000, bulk_max_bytes=50_000) as client:
        part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
        for method, path, content_type, prefix in (
            ("PUT", "/v1/documents/big", "application/json", b'{"text": "'),
            ("POST", "/v1/documents", "multipart/form-data; boundary=xyz", part),
        ):
            body = StreamingBody(chunks=500, size=8 * 1024, prefix=prefix)  # 4 MB offered
            sent = drive(client, method, path, body, content_type)
            assert status_of(sent) == 413, path
            assert body.taken * body.size <= 50_000 + BODY_LIMIT_SLACK_BYTES + body.size, path


def test_body_under_the_limit_passes_through(make_client: MakeClient, headers_a: dict[str, str]) -> None:
    with make_client(max_document_bytes=2000) as client:
        response = client.put("/v1/documents/small", json={"text": "small enough " * 50}, headers=headers_a)
        assert response.status_code == 201


async def test_middleware_alone_refuses_without_calling_the_app_for_a_declared_oversize() -> None:
    called = False

    async def app(scope: dict, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    body = StreamingBody(chunks=1, size=10)
    scope = {"type": "http", "headers": [(b"content-length", b"101")], "method": "POST", "path": "/"}
    await BodySizeLimitMiddleware(app, max_bytes=100)(scope, body, send)
    assert not called
    assert body.taken == 0
    assert status_of(sent) == 413
