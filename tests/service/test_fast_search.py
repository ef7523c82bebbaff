"""POST /v1/search is answered by service.app.api.fast_search.FastSearch, outside FastAPI's routing and
dependency solving. Every guarantee the FastAPI route gave must hold on it: the same answers as the route for
good and bad requests (compared side by side with an app that has no FastSearch), authentication and the rate
limit before the body is read (also on /v1/answer and /v1/admin/reindex, where FastAPI parsed the JSON first:
a caller without a key got a 422 and spent nothing), the body-size limit, request ids, metrics and error mapping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app.api.fast_search import FastSearch, declares_json
from service.app.core.errors import ServiceUnavailable
from service.app.main import create_app
from service.app.search.models import SearchRequest, SearchResponse
from tests.service.prod_support import KEY_A, KEY_B, bearer, production_settings
from tests.service.support import FailingEmbedder

DOC = "saturn-rings"
TEXT = "Saturn's rings are made of ice and rock. Comets have tails of dust and gas."
ADMIN_KEY = "admin-key-0123456789abcdef0123456789"


def without_fast_search(app: FastAPI) -> FastAPI:
    """The same app answering POST /v1/search through the FastAPI route (before its middleware stack is built)."""
    app.user_middleware = [entry for entry in app.user_middleware if entry.cls is not FastSearch]
    return app


def has_fast_search(app: FastAPI) -> bool:
    """Whether the started app's middleware stack holds FastSearch (walking each layer's ``app``)."""
    layer: Any = app.middleware_stack
    while layer is not None:
        if isinstance(layer, FastSearch):
            return True
        layer = getattr(layer, "app", None)
    return False


@contextmanager
def started(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[tuple[TestClient, TestClient]]:
    """(fast, framework): two apps on copies of the same settings and document, one without FastSearch."""
    clients = []
    with pytest.MonkeyPatch.context():
        apps = []
        for name in ("fast", "framework"):
            settings = production_settings(tmp_path_factory.mktemp(name), admin_api_key=ADMIN_KEY)
            app = create_app(settings, embedder=FailingEmbedder(embedder))
            apps.append(app if name == "fast" else without_fast_search(app))
        with started(apps[0]) as fast, started(apps[1]) as framework:
            for client in (fast, framework):
                response = client.put(f"/v1/documents/{DOC}", json={"text": TEXT}, headers=bearer(KEY_A))
                assert response.status_code == 201, response.text
            assert has_fast_search(apps[0])
            assert not has_fast_search(apps[1])
            clients = [fast, framework]
            yield fast, framework
    assert clients


COMPARED_HEADERS = (
    "content-type",
    "www-authenticate",
    "retry-after",
    "allow",
    "x-request-id",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "content-security-policy",
    "cross-origin-opener-policy",
    "ratelimit-limit",
    "x-ratelimit-limit",
)

JSON = {"content-type": "application/json"}
CASES: dict[str, tuple[str, bytes | None, dict[str, str]]] = {
    # name: (key, body, extra headers)
    "a search": (
        KEY_A,
        json.dumps({"query": "what are Saturn's rings made of", "mode": "dense"}).encode(),
        JSON,
    ),
    "hybrid, filtered, thresholded": (
        KEY_A,
        json.dumps(
            {"query": "comet tails", "top_k": 3, "filter": {"lang": "en"}, "score_threshold": 0.1}
        ).encode(),
        JSON,
    ),
    "the other tenant sees nothing": (KEY_B, json.dumps({"query": "Saturn rings"}).encode(), JSON),
    "json with a charset": (
        KEY_A,
        b'{"query": "rings"}',
        {"content-type": "application/json; charset=utf-8"},
    ),
    "a +json type": (KEY_A, b'{"query": "rings"}', {"content-type": "Application/Problem+JSON"}),
    "no body": (KEY_A, None, JSON),
    "malformed json": (KEY_A, b'{"query": ', JSON),
    "not utf-8": (KEY_A, b"\xff\xfe", JSON),
    "nested too deeply": (KEY_A, b"[" * 200_000, JSON),
    "a huge integer": (KEY_A, b'{"query": "x", "top_k": ' + b"9" * 5000 + b"}", JSON),
    "a json list": (KEY_A, b"[1, 2]", JSON),
    "a blank query": (KEY_A, b'{"query": "   "}', JSON),
    "top_k true": (KEY_A, b'{"query": "x", "top_k": true}', JSON),
    "an unknown field": (KEY_A, b'{"query": "x", "unknown": 1}', JSON),
    "NaN threshold": (KEY_A, b'{"query": "x", "score_threshold": NaN}', JSON),
    "a bad filter": (KEY_A, b'{"query": "x", "filter": {"lang": [1, 2]}}', JSON),
    "a bad filter key": (KEY_A, b'{"query": "x", "filter": {"bad key!": 1}}', JSON),
    "an unknown mode": (KEY_A, b'{"query": "x", "mode": "fuzzy"}', JSON),
    "declared as text": (KEY_A, b'{"query": "rings"}', {"content-type": "text/plain"}),
    "not declared": (KEY_A, b'{"query": "rings"}', {}),
    "no key": ("", b'{"query": "rings"}', JSON),
    "no key, malformed json": ("", b"{not json", JSON),
    "no key, not declared as json": ("", b"{not json", {}),
    "a wrong key": ("wrong-key", b"{not json", JSON),
    "two authorization headers": ("", b'{"query": "rings"}', {**JSON, "authorization": "Bearer a, Bearer b"}),
    "a client request id": (KEY_A, b'{"query": "rings"}', {**JSON, "x-request-id": "client-id-42"}),
}


def send(
    client: TestClient, key: str, body: bytes | None, extra: dict[str, str], path: str = "/v1/search"
) -> Any:
    headers = {**(bearer(key) if key else {}), **extra}
    if "authorization" in extra and extra["authorization"].count("Bearer") > 1:
        # Two Authorization header lines (httpx would fold a dict entry into one).
        first, second = extra["authorization"].split(", ")
        raw = [(k, v) for k, v in headers.items() if k != "authorization"]
        raw += [("authorization", first), ("authorization", second)]
        return client.post(path, content=body, headers=raw)
    return client.post(path, content=body, headers=headers)


@pytest.mark.parametrize("case", list(CASES))
def test_fast_search_answers_exactly_as_the_fastapi_route(
    pair: tuple[TestClient, TestClient], case: str
) -> None:
    fast, framework = pair
    key, body, extra = CASES[case]
    answers = [send(client, key, body, extra) for client in (fast, framework)]
    assert answers[0].status_code == answers[1].status_code, (answers[0].text, answers[1].text)
    assert answers[0].json() == answers[1].json()
    for name in COMPARED_HEADERS:
        if name == "x-request-id" and "x-request-id" not in extra:
            assert re.fullmatch(r"[0-9a-f]{32}", answers[0].headers[name])  # generated, different per app
            continue
        assert answers[0].headers.get(name) == answers[1].headers.get(name), name


def test_the_answers_compared_are_the_ones_meant(pair: tuple[TestClient, TestClient]) -> None:
    """The side-by-side comparison above is only worth something if the cases reach what they name."""
    fast, _ = pair

    def answer(case: str) -> Any:
        key, body, extra = CASES[case]
        return send(fast, key, body, extra)

    found = answer("a search")
    assert found.status_code == 200
    assert found.json()["results"][0]["document_id"] == DOC
    assert answer("the other tenant sees nothing").json()["results"] == []
    for case in ("json with a charset", "a +json type"):
        assert answer(case).json()["results"], case
    for case in ("no key", "no key, malformed json", "no key, not declared as json"):
        response = answer(case)
        assert response.status_code == 401, (case, response.text)
        assert response.headers["www-authenticate"] == 'Bearer realm="rag"'
    assert answer("a wrong key").status_code == 401
    assert answer("two authorization headers").status_code == 400
    for case, reason in (
        ("no body", "body: Field required"),
        ("malformed json", "body is not valid JSON: Expecting value (at character 10)"),
        ("not utf-8", "body is not valid JSON"),
        ("nested too deeply", "nested too deeply"),
        ("a json list", "valid dictionary"),
        ("a blank query", "query"),
        ("top_k true", "top_k"),
        ("an unknown field", "unknown"),
        ("NaN threshold", "score_threshold"),
        ("a bad filter", "filter.lang"),
        ("an unknown mode", "mode"),
    ):
        response = answer(case)
        assert response.status_code == 422, (case, response.text)
        assert response.json()["error"]["code"] == "invalid_input"
        assert reason in response.json()["error"]["message"], (case, response.text)
    for case in ("declared as text", "not declared"):
        response = answer(case)
        assert response.status_code == 415
        assert "Content-Type: application/json" in response.json()["error"]["message"]
    assert answer("a client request id").headers["x-request-id"] == "client-id-42"


def test_other_methods_and_paths_go_to_the_framework(pair: tuple[TestClient, TestClient]) -> None:
    fast, framework = pair
    for method, path in (
        ("GET", "/v1/search"),
        ("PUT", "/v1/search"),
        ("POST", "/v1/search/"),
        ("POST", "/v1/searchx"),
    ):
        answers = [
            client.request(method, path, headers=bearer(KEY_A), follow_redirects=False) for client in pair
        ]
        assert answers[0].status_code == answers[1].status_code, (method, path)
        assert answers[0].headers.get("allow") == answers[1].headers.get("allow")
    response = fast.get("/v1/search", headers=bearer(KEY_A))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert framework  # the pair's second app stays started for the other tests


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, False),
        ("", False),
        ("application/json", True),
        ("APPLICATION/JSON ; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("application/jsonx", False),
        ("text/json", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_json_content_types_are_recognised_as_fastapi_recognises_them(
    content_type: str | None, expected: bool
) -> None:
    assert declares_json(content_type) is expected


# --- the guarantees, on the fast path itself -----------------------------------------------------------


@contextmanager
def fast_client(tmp_path: Path, embedder: Any, **overrides: Any) -> Iterator[TestClient]:
    settings = production_settings(tmp_path, **overrides)
    app = create_app(settings, embedder=FailingEmbedder(embedder))
    with started(app) as client:
        assert has_fast_search(app)
        yield client


def search_count(client: TestClient, status: int) -> float:
    """rag_http_requests_total for POST /v1/search with ``status`` (0 when not yet counted)."""
    pattern = re.compile(
        rf'^rag_http_requests_total\{{method="POST",route="/v1/search",status="{status}"\}} (\S+)$', re.M
    )
    found = pattern.search(client.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def test_the_rate_limit_is_spent_before_the_body_is_parsed(tmp_path: Path, embedder: Any) -> None:
    """Every authenticated request spends one request of the budget, malformed JSON included (it is read only
    after the check); a request without a key spends nothing."""
    with fast_client(tmp_path, embedder, rate_limit_enabled=True, rate_limit_search="3/minute") as client:
        for _ in range(3):
            assert send(client, "", b"{not json", JSON).status_code == 401
        assert send(client, KEY_A, b"{not json", JSON).status_code == 422
        assert send(client, KEY_A, b'{"query": "rings"}', {}).status_code == 415
        ok = send(client, KEY_A, b'{"query": "rings"}', JSON)
        assert ok.status_code == 200
        assert ok.headers["ratelimit-remaining"] == "0"
        refused = send(client, KEY_A, b"{not json", JSON)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["budget"] == "search"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["x-request-id"]
        # Another key has its own budget.
        assert send(client, KEY_B, b'{"query": "rings"}', JSON).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/answer", b'{"question": '), ("/v1/search", b'{"query": '), ("/v1/admin/reindex", b'{"model": ')],
)
def test_malformed_json_without_a_key_is_401_on_every_json_route(
    tmp_path: Path, embedder: Any, path: str, body: bytes
) -> None:
    """S5: FastAPI parsed the body before the router's authentication ran."""
    with fast_client(tmp_path, embedder, admin_api_key=ADMIN_KEY) as client:
        response = send(client, "", body, JSON, path=path)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
        assert send(client, "wrong-key", body, JSON, path=path).status_code == 401
        own_key = ADMIN_KEY if path.startswith("/v1/admin") else KEY_A
        response = send(client, own_key, body, JSON, path=path)
        assert response.status_code == 422, response.text
        assert "body is not valid JSON" in response.json()["error"]["message"]


def test_answers_spend_the_budget_before_their_body_is_parsed(tmp_path: Path, embedder: Any) -> None:
    with fast_client(tmp_path, embedder, rate_limit_enabled=True, rate_limit_search="1/minute") as client:
        assert send(client, KEY_A, b'{"question": ', JSON, path="/v1/answer").status_code == 422
        response = send(
            client, KEY_A, b'{"question": "what are the rings made of?"}', JSON, path="/v1/answer"
        )
        assert response.status_code == 429, response.text


def test_an_oversize_search_body_is_413_and_never_searched(tmp_path: Path, embedder: Any) -> None:
    with fast_client(tmp_path, embedder) as client:
        limit = client.app.state.services.settings.max_document_bytes
        calls: list[SearchRequest] = []
        search = client.app.state.services.search
        real = search.search

        async def counting(tenant: str, request: SearchRequest) -> SearchResponse:
            calls.append(request)
            return await real(tenant, request)

        search.search = counting
        big = json.dumps({"query": "x" * (2 * limit)}).encode()
        declared = send(client, KEY_A, big, JSON)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(big), 65536):
                yield big[start : start + 65536]

        streamed = client.post("/v1/search", content=chunks(), headers={**bearer(KEY_A), **JSON})
        assert streamed.status_code == 413, streamed.text
        assert "exceeds the limit" in streamed.json()["error"]["message"]
        assert streamed.headers["x-request-id"]
        assert calls == []
        assert send(client, KEY_A, b'{"query": "rings"}', JSON).status_code == 200
        assert len(calls) == 1


def test_request_ids_security_headers_and_metrics_on_the_fast_path(tmp_path: Path, embedder: Any) -> None:
    with fast_client(tmp_path, embedder) as client:
        ok_before, unauthorized_before = search_count(client, 200), search_count(client, 401)
        ok = send(client, KEY_A, b'{"query": "rings"}', {**JSON, "x-request-id": "trace-1"})
        assert ok.status_code == 200
        assert ok.headers["x-request-id"] == "trace-1"
        assert ok.headers["x-content-type-options"] == "nosniff"
        assert ok.headers["content-security-policy"].startswith("default-src 'none'")
        assert ok.headers["content-length"] == str(len(ok.content))
        hostile = send(client, KEY_A, b'{"query": "rings"}', {**JSON, "x-request-id": "bad id\twith spaces"})
        assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
        denied = send(client, "", b'{"query": "rings"}', {**JSON, "x-request-id": "trace-2"})
        assert denied.status_code == 401
        assert denied.headers["x-request-id"] == "trace-2"
        assert search_count(client, 200) == ok_before + 2
        assert search_count(client, 401) == unauthorized_before + 1
        assert (
            'rag_http_request_duration_seconds_count{method="POST",route="/v1/search"}'
            in client.get("/metrics").text
        )


def test_search_errors_are_mapped_and_unexpected_ones_are_a_logged_500(
    tmp_path: Path, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with fast_client(tmp_path, embedder) as client:
        search = client.app.state.services.search

        async def unavailable(tenant: str, request: SearchRequest) -> SearchResponse:
            raise ServiceUnavailable("vector store unavailable; retry later", retry_after=3)

        search.search = unavailable
        response = send(client, KEY_A, b'{"query": "rings"}', {**JSON, "x-request-id": "trace-503"})
        assert response.status_code == 503
        assert response.json()["error"] == {
            "code": "service_unavailable",
            "message": "vector store unavailable; retry later",
            "retry_after": 3,
        }
        assert response.headers["retry-after"] == "3"
        assert response.headers["x-request-id"] == "trace-503"

        async def broken(tenant: str, request: SearchRequest) -> SearchResponse:
            raise RuntimeError("a bug")

        search.search = broken
        before = search_count(client, 500)
        response = send(client, KEY_A, b'{"query": "rings"}', {**JSON, "x-request-id": "trace-500"})
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal", "message": "internal server error"}}
        assert response.headers["x-request-id"] == "trace-500"
        assert "a bug" not in response.text
        assert search_count(client, 500) == before + 1
        assert any(record.getMessage() == "unhandled error" and record.exc_info for record in caplog.records)


def test_fastapi_telemetry_names_the_search_span_as_for_the_route(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any
) -> None:
    """With a tracer provider configured, FastAPI's native telemetry names the server span after the route; the
    search answered outside FastAPI's routing must keep that (and the framework path gives the reference)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    names = {}
    for name in ("fast", "framework"):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        app = create_app(
            production_settings(tmp_path_factory.mktemp(f"otel-{name}")), embedder=FailingEmbedder(embedder)
        )
        if name == "framework":
            without_fast_search(app)
        app._telemetry["tracer_provider"] = provider  # this app only: the global provider stays unset
        with started(app) as client:
            assert has_fast_search(app) is (name == "fast")
            assert send(client, KEY_A, b'{"query": "rings"}', JSON).status_code == 200
            assert send(client, KEY_A, b'{"query": ', JSON).status_code == 422
        servers = [span for span in exporter.get_finished_spans() if span.kind.name == "SERVER"]
        names[name] = [(span.name, span.attributes.get("http.route")) for span in servers[-2:]]
    assert names["fast"] == names["framework"] == [("POST /v1/search", "/v1/search")] * 2
