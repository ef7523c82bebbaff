"""Wrong statuses and weak production settings the adversarial run found, each pinned: tenant names, key
strength, empty or broken key files, CORS null, duplicate Authorization headers, NaN filters, deep HTML, a
client that disconnects mid-upload, a full disk, 503 messages without exception class names, OpenAPI patterns."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from qdrant_client import QdrantClient

from service.app.core.config import Settings, SettingsError, parse_api_keys
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.qdrant import QdrantVectorStore
from service.app.store.vectors import collection_name
from tests.service.prod_support import KEY_A, MakeClient, bearer
from tests.service.support import make_settings, running_app

pytest_plugins = ["tests.service.prod_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STRONG = "s" * 40


def test_tenant_names_are_validated_where_keys_are_parsed() -> None:
    assert parse_api_keys(f"{STRONG}:tenant-1") == {STRONG: "tenant-1"}
    with pytest.raises(SettingsError, match="is not 1-64 characters"):
        parse_api_keys(f"{STRONG}:{'t' * 65}")  # was a 503 on every write on Postgres (String(64))
    with pytest.raises(SettingsError, match="is not 1-64 characters"):
        parse_api_keys(json.dumps({STRONG: "a tenant with spaces"}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_keys": "k:tenant"}, "shorter than 32 characters"),
        ({"api_keys": f"{STRONG}:t", "cors_origins": "null"}, "CORS_ORIGINS='null' is refused"),
        ({"api_keys_file": "EMPTY"}, "needs at least one key"),
        ({"api_keys": f"{STRONG}:t", "admin_api_key": "admin"}, "ADMIN_API_KEY shorter than 32 characters"),
    ],
)
def test_production_refuses_weak_settings(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    if overrides.get("api_keys_file") == "EMPTY":
        (tmp_path / "keys").write_text("\n")
        overrides = {"api_keys_file": tmp_path / "keys"}
    with pytest.raises(ValueError, match=message):
        Settings(_env_file=None, environment="production", **overrides)
    Settings(_env_file=None, environment="staging", **overrides)  # the rules are production's


def test_a_broken_keys_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text('{"not": closed')
    env = {**os.environ, "API_KEYS_FILE": str(keys), "DATA_DIR": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    for name in ("API_KEYS", "REDIS_URL", "DATABASE_URL", "ENVIRONMENT"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "service"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"service: error: API_KEYS_FILE {keys} is not valid JSON: Expecting value"
    ]


def test_two_authorization_headers_are_a_400(client: Any) -> None:
    headers = [("Authorization", f"Bearer {KEY_A}"), ("Authorization", "Bearer someone-else")]
    response = client.get("/v1/documents", headers=headers)  # a list keeps both (the client may be httpx2)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "bad_request",
        "message": "send exactly one Authorization header",
    }
    assert client.get("/v1/documents", headers=bearer(KEY_A)).status_code == 200


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_filter_values_are_a_422(client: Any, literal: str) -> None:
    for shape in (f'{{"year": {literal}}}', f'{{"year": {{"gte": {literal}}}}}'):
        body = f'{{"query": "anything", "filter": {shape}}}'
        response = client.post(
            "/v1/search", content=body, headers={**bearer(KEY_A), "Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text


def test_deeply_nested_html_is_extracted_not_a_500(client: Any) -> None:
    html = "<div>" * 3000 + "deep basalt columns" + "</div>" * 3000
    put = client.put(
        "/v1/documents/deep", json={"text": html, "content_type": "text/html"}, headers=bearer(KEY_A)
    )
    assert put.status_code == 201, put.text
    upload = client.post(
        "/v1/documents", files={"file": ("deep.html", html.encode(), "text/html")}, headers=bearer(KEY_A)
    )
    assert upload.status_code == 201, upload.text


def test_openapi_states_the_id_metadata_and_text_rules(make_client: MakeClient) -> None:
    with make_client() as client:
        schema = client.get("/openapi.json").json()
    put = schema["paths"]["/v1/documents/{document_id}"]["put"]
    (param,) = [p for p in put["parameters"] if p["name"] == "document_id"]
    assert param["schema"]["pattern"] == r"^[A-Za-z0-9._:-]{1,256}$"
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["text"]["minLength"] == 1
    assert body["properties"]["metadata"]["propertyNames"]["pattern"] == r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
    search = schema["components"]["schemas"]["SearchRequest"]["properties"]["filter"]
    assert search["propertyNames"]["pattern"] == r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


def test_a_client_disconnecting_mid_upload_is_not_a_server_error(
    tmp_path: Path, embedder: FastEmbedEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        app = client.app
        boundary = "b0undary"
        first = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            "Content-Type: text/plain\r\n\r\nhalf of the file"
        ).encode()
        messages = [{"type": "http.request", "body": first, "more_body": True}, {"type": "http.disconnect"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/documents",
            "raw_path": b"/v1/documents",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
        }
        caplog.clear()
        # The counters are process-wide: compare before and after (another test's deliberate 500 on GET
        # /v1/documents, run earlier in the same process, failed this one).
        before = {status: upload_requests(status) for status in ("499", "500")}
        client.portal.call(app, scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [499]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert upload_requests("500") == before["500"]
    assert upload_requests("499") == before["499"] + 1


def upload_requests(status: str) -> float:
    labels = {"method": "POST", "route": "/v1/documents", "status": status}
    return REGISTRY.get_sample_value("rag_http_requests_total", labels) or 0.0


def test_disk_full_fails_readiness_and_writes_answer_503(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    """Readiness reads the real free space (threshold above it); the write failure is ENOSPC injected at the
    vector-store boundary (no tmpfs mount is assumed to be allowed in CI)."""
    settings = make_settings(tmp_path, ready_min_free_bytes=2**62)

    class FullDisk:
        def __init__(self, inner: QdrantClient) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "upsert":

                def upsert(*_args: Any, **_kwargs: Any) -> None:
                    raise OSError(errno.ENOSPC, "No space left on device")

                return upsert
            return getattr(self._inner, name)

    vectors = QdrantVectorStore(
        FullDisk(QdrantClient(path=str(tmp_path / "qdrant"), force_disable_check_same_thread=True)),  # type: ignore[arg-type]
        collection=collection_name("documents", embedder.model_name, embedder.dimension),
        dimension=embedder.dimension,
        local=True,
        settings=settings,
    )
    with running_app(settings, embedder=embedder, vectors=vectors) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["disk"] == "failed"
        assert "READY_MIN_FREE_BYTES" in ready.json()["error"]["failed"]["disk"]
        # Searches are still served, so the serving probe (Kubernetes, a VM's load balancer) stays 200 and says
        # what is degraded (EYES10: it was a 503, which took reads offline for a disk that only refuses writes).
        serving = client.get("/readyz/serving")
        assert serving.status_code == 200, serving.text
        assert serving.json()["status"] == "degraded"
        assert serving.json()["checks"] == {"qdrant": "ok", "database": "ok", "disk": "failed"}
        assert "READY_MIN_FREE_BYTES" in serving.json()["error"]["failed"]["disk"]
        assert client.post("/v1/search", json={"query": "room", "top_k": 1}).status_code == 200
        write = client.put("/v1/documents/d", json={"text": "no room for this"})
        assert write.status_code == 503
        assert write.json()["error"]["message"] == "vector store unavailable; retry later"  # no class names
        assert client.get("/v1/documents/d").status_code == 404
    vectors.close()


def test_a_nearly_full_disk_refuses_edge_writes_with_a_503_before_the_engine_can_fault(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    """The embedded engine writes through memory maps: on a really full filesystem the next write is a SIGBUS
    that kills the process without a log line (a full tmpfs, EYES_SVC2 S2). So the store reads the real free
    space before each write and refuses below READY_MIN_FREE_BYTES: a 503 naming it, nothing stored, what was
    stored still served, and writes work again once there is room (no injected error: statvfs of tmp_path)."""
    from service.app.store.edge import EdgeVectorStore, EmbeddedStoreError

    settings = make_settings(tmp_path, vector_store="edge")
    store = EdgeVectorStore.from_settings(
        settings, model_name=embedder.model_name, dimension=embedder.dimension
    )
    assert store.min_free_bytes == settings.ready_min_free_bytes > 0
    with running_app(settings, embedder=embedder, vectors=store) as client:
        text = "The lighthouse keeper logs the tides."
        assert client.put("/v1/documents/kept", json={"text": text}).status_code == 201
        kept = client.get("/v1/documents/kept").json()
        store.min_free_bytes = 2**62  # more than any disk has: "nearly full" by the same statvfs reading
        refused = client.put("/v1/documents/new", json={"text": "no room for this"})
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert "READY_MIN_FREE_BYTES" in message
        assert "searches still work" in message
        assert client.put("/v1/documents/kept", json={"text": "A replacement."}).status_code == 503
        assert client.get("/v1/documents/new").status_code == 404
        assert client.get("/v1/documents/kept").json() == kept
        hits = client.post("/v1/search", json={"query": "lighthouse tides", "top_k": 1}).json()["results"]
        assert hits[0]["document_id"] == "kept"
        assert hits[0]["text"] == text
        # A DELETE on the full volume: the registry forgets the document (204, invisible at once) and the
        # engine's point delete, a write through the same memory maps (it was the SIGBUS after ~20 deletes,
        # EYES_SVC3 S3), is refused: its points stay for the orphan collector once there is room.
        stored = {v.document_id for v in store.versions()}
        assert client.delete("/v1/documents/kept").status_code == 204
        assert client.get("/v1/documents/kept").status_code == 404
        assert (
            client.post("/v1/search", json={"query": "lighthouse tides", "top_k": 1}).json()["results"] == []
        )
        assert {v.document_id for v in store.versions()} == stored == {"kept"}
        store.min_free_bytes = settings.ready_min_free_bytes
        assert client.put("/v1/documents/new", json={"text": "room again"}).status_code == 201
    store.close()
    # Opening the store on a full volume maps and preallocates its files: it died of SIGBUS at start-up with no
    # line; it is now refused with one naming the setting, and nothing in the store changes.
    full = make_settings(tmp_path, vector_store="edge", ready_min_free_bytes=2**62)
    reopened = EdgeVectorStore.from_settings(
        full, model_name=embedder.model_name, dimension=embedder.dimension
    )
    with pytest.raises(EmbeddedStoreError, match=r"below READY_MIN_FREE_BYTES .* free space on the volume"):
        reopened.ensure_collection()
    reopened.close()
    store = EdgeVectorStore.from_settings(
        settings, model_name=embedder.model_name, dimension=embedder.dimension
    )
    store.ensure_collection()
    try:
        assert {v.document_id for v in store.versions()} == {
            "kept",
            "new",
        }  # kept's points await the collector
    finally:
        store.close()
