"""QDRANT_VECTORS_ON_DISK / QDRANT_QUANTIZATION (O10) against a Qdrant server: a new collection is created with them,
and an existing one created without them is updated in place (PATCH /collections/{name}), once, and only when it
differs. The server is a stand-in on a real socket answering the REST shapes of Qdrant's openapi (qdrant/qdrant
docs/redoc/v1.19.x/openapi.json: CreateCollection, UpdateCollection, CollectionInfo), built from qdrant-client's own
models so the client parses them as it parses a real server's."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from qdrant_client.http import models

from service.app.store.qdrant import QdrantVectorStore
from tests.service.support import make_settings

DIMENSION = 4


class FakeQdrant:
    """Records every request; `collection` is what GET /collections/{name} answers (None: it does not exist)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.collection: models.CollectionInfo | None = None

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, body))
        parts = path.split("?")[0].strip("/").split("/")
        if method == "GET" and parts == [""]:
            return 200, {"title": "qdrant - vector search engine", "version": "1.19.0"}
        if parts[:1] != ["collections"] or len(parts) < 2:
            return 404, {"status": {"error": f"no route {path}"}}
        if method == "GET" and parts[2:] == ["exists"]:
            return 200, {"exists": self.collection is not None}
        if method == "GET" and len(parts) == 2:
            return 200, self.collection.model_dump(
                mode="json", exclude_none=True
            ) if self.collection else None
        if method in ("PUT", "PATCH") and len(parts) == 2:
            return 200, True
        if method == "PUT" and parts[2:] == ["index"]:
            return 200, {"operation_id": 1, "status": "completed"}
        return 404, {"status": {"error": f"no route {method} {path}"}}

    def of(self, method: str, path_end: str) -> list[Any]:
        return [body for m, p, body in self.requests if m == method and p.split("?")[0].endswith(path_end)]


@pytest.fixture
def qdrant() -> Iterator[tuple[FakeQdrant, str]]:
    fake = FakeQdrant()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, result = fake.answer(method, self.path, json.loads(raw) if raw else None)
            payload = json.dumps(
                result if self.path == "/" else {"result": result, "status": "ok", "time": 0.0}
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._reply("GET")

        def do_PUT(self) -> None:
            self._reply("PUT")

        def do_PATCH(self) -> None:
            self._reply("PATCH")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def collection(*, on_disk: bool | None, quantization: Any = None) -> models.CollectionInfo:
    """A collection as Qdrant describes it (dense unnamed vector + the BM25 sparse one)."""
    return models.CollectionInfo(
        status=models.CollectionStatus.GREEN,
        optimizer_status=models.OptimizersStatusOneOf.OK,
        segments_count=2,
        payload_schema={},
        config=models.CollectionConfig(
            params=models.CollectionParams(
                vectors=models.VectorParams(size=DIMENSION, distance=models.Distance.COSINE, on_disk=on_disk),
                sparse_vectors={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
            ),
            hnsw_config=models.HnswConfig(m=16, ef_construct=100, full_scan_threshold=10000),
            optimizer_config=models.OptimizersConfig(default_segment_number=0, flush_interval_sec=5),
            quantization_config=quantization,
        ),
    )


def store(tmp_path: Path, url: str, **settings: Any) -> QdrantVectorStore:
    return QdrantVectorStore.from_settings(
        make_settings(tmp_path, qdrant_url=url, **settings), model_name="org/model", dimension=DIMENSION
    )


INT8 = {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}


def test_a_new_collection_is_created_on_disk_and_quantized(
    tmp_path: Path, qdrant: tuple[FakeQdrant, str]
) -> None:
    fake, url = qdrant
    store(tmp_path, url, qdrant_vectors_on_disk=True, qdrant_quantization="int8").ensure_collection()
    (created,) = fake.of("PUT", "/collections/documents__org-model__4")
    assert created["vectors"]["on_disk"] is True
    assert created["quantization_config"] == INT8
    assert fake.of("PATCH", "/collections/documents__org-model__4") == []


def test_the_defaults_create_what_they_always_did(tmp_path: Path, qdrant: tuple[FakeQdrant, str]) -> None:
    fake, url = qdrant
    store(tmp_path, url).ensure_collection()
    (created,) = fake.of("PUT", "/collections/documents__org-model__4")
    assert "on_disk" not in created["vectors"]
    assert "quantization_config" not in created


def test_an_existing_collection_created_without_them_is_updated_in_place(
    tmp_path: Path, qdrant: tuple[FakeQdrant, str]
) -> None:
    fake, url = qdrant
    fake.collection = collection(on_disk=None)  # created before the settings existed: float vectors in RAM
    store(tmp_path, url, qdrant_vectors_on_disk=True, qdrant_quantization="int8").ensure_collection()
    assert fake.of("PUT", "/collections/documents__org-model__4") == []  # never re-created: the data stays
    (update,) = fake.of("PATCH", "/collections/documents__org-model__4")
    assert update == {"vectors": {"": {"on_disk": True}}, "quantization_config": INT8}


def test_a_collection_already_in_the_layout_is_left_alone_and_turning_them_off_is_applied_too(
    tmp_path: Path, qdrant: tuple[FakeQdrant, str]
) -> None:
    fake, url = qdrant
    fake.collection = collection(on_disk=True, quantization=models.ScalarQuantization(**INT8))
    store(tmp_path, url, qdrant_vectors_on_disk=True, qdrant_quantization="int8").ensure_collection()
    assert fake.of("PATCH", "/collections/documents__org-model__4") == []

    store(tmp_path, url).ensure_collection()  # both settings back to their defaults
    (update,) = fake.of("PATCH", "/collections/documents__org-model__4")
    assert update == {"vectors": {"": {"on_disk": False}}, "quantization_config": "Disabled"}
