"""Operability: /healthz, /readyz (each backend named when it fails), /metrics (Prometheus, route templates),
JSON logs one object per line carrying the request id, and X-Request-ID accepted or generated on every response."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
import redis
from fastapi.testclient import TestClient
from httpx import Response

from service.app.core.errors import ServiceUnavailable
from service.app.core.logging import JsonFormatter, request_id_var
from tests.service.prod_support import MakeClient
from tests.service.service_process import wait_for
from tests.support.servers import free_port, redis_server, restartable_postgres

pytest_plugins = ["tests.service.prod_fixtures"]

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


# --- health and readiness --------------------------------------------------------------------------------


def test_healthz_is_alive_without_auth_or_backends(make_client: MakeClient) -> None:
    with make_client() as client:
        services = client.app.state.services

        def broken() -> None:
            raise ServiceUnavailable("document registry unavailable")

        services.registry.ping = broken
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 503


def test_readyz_checks_qdrant_and_the_database(make_client: MakeClient) -> None:
    with make_client() as client:
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "checks": {"qdrant": "ok", "database": "ok", "disk": "ok"}}


def test_readyz_names_each_failed_check(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client() as client:
        services = client.app.state.services

        def registry_down() -> None:
            raise ServiceUnavailable("document registry unavailable: connection refused")

        def qdrant_down() -> None:
            raise ConnectionError("qdrant: connection refused")

        monkeypatch.setattr(services.registry, "ping", registry_down)
        monkeypatch.setattr(services.vectors, "ping", qdrant_down)
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"] == {"qdrant": "failed", "database": "failed", "disk": "ok"}
        assert body["error"]["code"] == "not_ready"
        assert body["error"]["failed"] == {
            "qdrant": "qdrant: connection refused",
            "database": "document registry unavailable: connection refused",
        }
        assert body["error"]["message"] == "failed checks: database, qdrant"

        monkeypatch.undo()
        assert client.get("/readyz").status_code == 200


def test_readyz_checks_redis_when_configured(make_client: MakeClient) -> None:
    with redis_server() as private_redis, make_client(redis_url=private_redis) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"qdrant": "ok", "database": "ok", "disk": "ok", "redis": "ok"}
        redis.Redis.from_url(private_redis).shutdown(nosave=True)
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"] == {"qdrant": "ok", "database": "ok", "disk": "ok", "redis": "failed"}
        assert "redis" in down.json()["error"]["failed"]
        # Liveness is unaffected: restarting the pod would not bring Redis back.
        assert client.get("/healthz").status_code == 200


def test_the_readiness_probe_the_deployment_uses_survives_shared_backend_outages(
    make_client: MakeClient, headers_a: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path the API Deployment's readinessProbe and GKE's health check use fails only when this pod cannot
    serve (the vector store): Redis or the database down is `degraded` with 200, or every replica would leave the
    load balancer at once while searches still work. /readyz keeps reporting the whole picture with 503."""
    from infra.components.rag_service import READINESS_PATH, api_container
    from infra.components.specs import Resources

    probe = api_container("img", 8000, Resources(), 1000, "cfg", "sec")["readinessProbe"]
    assert probe["httpGet"]["path"] == READINESS_PATH
    with redis_server() as private_redis, make_client(redis_url=private_redis) as client:
        client.put("/v1/documents/probe-doc", json={"text": "Probes gate traffic."}, headers=headers_a)
        assert client.get(READINESS_PATH).json() == {
            "status": "ok",
            "checks": {"qdrant": "ok", "database": "ok", "disk": "ok", "redis": "ok"},
        }
        redis.Redis.from_url(private_redis).shutdown(nosave=True)
        degraded = client.get(READINESS_PATH)
        assert degraded.status_code == 200
        assert degraded.json()["status"] == "degraded"
        assert degraded.json()["checks"]["redis"] == "failed"
        assert client.get("/readyz").status_code == 503
        # ... and the pod does serve: a search answers without Redis.
        found = client.post("/v1/search", json={"query": "what gates traffic"}, headers=headers_a)
        assert found.status_code == 200
        assert [hit["document_id"] for hit in found.json()["results"]][:1] == ["probe-doc"]

        def registry_down() -> None:
            raise ServiceUnavailable("document registry unavailable: connection refused")

        monkeypatch.setattr(client.app.state.services.registry, "ping", registry_down)
        assert client.get(READINESS_PATH).status_code == 200

        def qdrant_down() -> None:
            raise ConnectionError("qdrant: connection refused")

        monkeypatch.setattr(client.app.state.services.vectors, "ping", qdrant_down)
        down = client.get(READINESS_PATH)
        assert down.status_code == 503
        assert down.json()["error"]["failed"]["qdrant"] == "qdrant: connection refused"


def test_a_killed_registry_database_is_a_503_for_documents_search_answers_from_its_copy_and_the_pods_recover(
    make_client: MakeClient, headers_a: dict[str, str]
) -> None:
    """What docs/runbooks.md#postgresunreachablefromservice promises: with the registry's Postgres killed (-9),
    reads and ingest answer 503 `document registry unavailable`; search answers from the process's copy of the
    live versions it looked up (REGISTRY_OUTAGE_SEARCH_SECONDS, docs/service.md#search-during-a-registry-outage)
    -- every hit is judged against active versions, so the vector store alone would serve deleted and replaced
    documents -- while the readiness path stays 200 (degraded) so the pods stay in the Service; Postgres back on
    the same port, the same app answers again with what was stored before, no restart."""
    from infra.components.rag_service import READINESS_PATH

    with restartable_postgres("outage") as postgres, make_client(database_url=postgres.url) as client:
        stored = client.put(
            "/v1/documents/outage-doc", json={"text": "Glaciers carve valleys."}, headers=headers_a
        )
        assert stored.status_code == 201, stored.text
        query = {"query": "what carves valleys"}
        before = client.post("/v1/search", json=query, headers=headers_a)
        assert before.status_code == 200

        postgres.kill()
        for request in (
            lambda: client.get("/v1/documents/outage-doc", headers=headers_a),
            lambda: client.put("/v1/documents/other", json={"text": "Rivers."}, headers=headers_a),
        ):
            refused = request()
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "service_unavailable"
            assert "document registry unavailable" in refused.json()["error"]["message"]
        for body in (query, {**query, "mode": "dense"}):  # a cached query, and one the result cache lacks
            answered = client.post("/v1/search", json=body, headers=headers_a)
            assert answered.status_code == 200, answered.text
            found = [(hit["document_id"], hit["text"]) for hit in answered.json()["results"]]
            assert found == [(hit["document_id"], hit["text"]) for hit in before.json()["results"]]
        degraded = client.get(READINESS_PATH)
        assert degraded.status_code == 200
        assert degraded.json()["status"] == "degraded"
        assert degraded.json()["checks"]["database"] == "failed"
        assert client.get("/readyz").status_code == 503

        postgres.start()

        def search_answers() -> Response | None:
            response = client.post("/v1/search", json=query, headers=headers_a)
            assert response.status_code in (200, 503), response.text
            return response if response.status_code == 200 else None

        found = wait_for(search_answers, "search to answer after Postgres came back")
        assert [hit["document_id"] for hit in found.json()["results"]][:1] == ["outage-doc"]
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/documents/outage-doc", headers=headers_a).status_code == 200


def test_the_api_starts_while_redis_is_down(make_client: MakeClient) -> None:
    with make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json()["checks"]["redis"] == "failed"


# --- metrics -----------------------------------------------------------------------------------------------


def metric_lines(client: TestClient) -> list[str]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text.splitlines()


def test_metrics_expose_every_service_metric_with_route_templates(
    make_client: MakeClient, headers_a: dict[str, str]
) -> None:
    with make_client() as client:
        client.put(
            "/v1/documents/metric-doc", json={"text": "Metrics are numbers over time."}, headers=headers_a
        )
        client.get("/v1/documents/metric-doc", headers=headers_a)
        client.get("/v1/documents/no-such-doc", headers=headers_a)
        client.post("/v1/search", json={"query": "numbers"}, headers=headers_a)
        client.post("/v1/search", json={"query": "numbers"}, headers=headers_a)
        lines = metric_lines(client)
    text = "\n".join(lines)
    for family in (
        "rag_http_requests_total",
        "rag_http_request_duration_seconds_bucket",
        "rag_chunks_ingested_total",
        "rag_documents_ingested_total",
        "rag_embedding_duration_seconds_bucket",
        "rag_search_duration_seconds_bucket",
        "rag_search_cache_requests_total",
        "rag_queue_depth",
        "rag_jobs_total",
        "rag_failures_total",
    ):
        assert any(line.startswith(family) for line in lines), family
    assert 'route="/v1/documents/{document_id}",status="404"' in text
    assert 'route="/v1/documents/{document_id}",status="200"' in text
    assert "no-such-doc" not in text  # raw paths never become label values
    assert 'rag_search_cache_requests_total{result="hit"}' in text


def test_unmatched_paths_share_one_label(make_client: MakeClient) -> None:
    with make_client() as client:
        client.get("/random/path/123")
        text = "\n".join(metric_lines(client))
    assert 'route="<unmatched>"' in text
    assert "/random/path/123" not in text


# --- request ids and logs ------------------------------------------------------------------------------


def test_request_id_is_echoed_or_generated_on_every_response(
    make_client: MakeClient, headers_a: dict[str, str]
) -> None:
    with make_client() as client:
        given = client.get("/healthz", headers={"X-Request-ID": "abc-123.trace_1"})
        assert given.headers["X-Request-ID"] == "abc-123.trace_1"
        generated = client.get("/healthz")
        assert HEX_ID.match(generated.headers["X-Request-ID"])
        assert client.get("/healthz").headers["X-Request-ID"] != generated.headers["X-Request-ID"]
        for unsafe in ("has spaces", "x" * 129, 'quote"d', "line\\nbreak"):
            replaced = client.get("/healthz", headers={"X-Request-ID": unsafe})
            assert HEX_ID.match(replaced.headers["X-Request-ID"]), unsafe
        for response in (
            client.get("/v1/documents"),  # 401
            client.get("/v1/documents/missing", headers=headers_a),  # 404
            client.post("/v1/search", json={"query": ""}, headers=headers_a),  # 422
            client.get("/nowhere"),  # unmatched 404
        ):
            assert response.status_code >= 400
            assert HEX_ID.match(response.headers["X-Request-ID"])


def test_unexpected_errors_are_500_json_with_the_request_id(
    make_client: MakeClient, headers_a: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_client() as client:

        async def explode(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internal state")

        monkeypatch.setattr(client.app.state.services.ingest, "list", explode)
        client_no_raise = TestClient(client.app, raise_server_exceptions=False)
        response = client_no_raise.get("/v1/documents", headers={**headers_a, "X-Request-ID": "req-500"})
        assert response.status_code == 500
        assert response.headers["X-Request-ID"] == "req-500"
        assert response.json() == {"error": {"code": "internal", "message": "internal server error"}}
        assert "secret" not in response.text
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_logs_are_one_json_object_per_line_with_the_request_id(
    make_client: MakeClient, headers_a: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with make_client(log_json=True) as client:
        capsys.readouterr()
        client.get("/v1/documents/missing", headers={**headers_a, "X-Request-ID": "log-trace-1"})
    out = capsys.readouterr().out
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]  # every line parses alone
    access = [
        e for e in entries if e.get("logger") == "service.access" and e.get("request_id") == "log-trace-1"
    ]
    assert len(access) == 1
    entry = access[0]
    assert entry["route"] == "/v1/documents/{document_id}"
    assert entry["status"] == 404
    assert entry["tenant"] == "tenant-a"
    assert entry["level"] == "INFO"
    assert isinstance(entry["duration_ms"], float)
    assert "time" in entry


def test_json_formatter_keeps_extras_and_exceptions_on_one_line() -> None:
    formatter = JsonFormatter()
    token = request_id_var.set("rid-7")
    try:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            record = logging.getLogger("t").makeRecord(
                "t", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info(), extra={"job_id": "j1"}
            )
        line = formatter.format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed x"
    assert entry["request_id"] == "rid-7"
    assert entry["job_id"] == "j1"
    assert "ValueError: bad" in entry["exception"]
