"""Qdrant vector store: collection naming per model and dimension, deterministic point ids, payload shape,
version-scoped deletes, and refusing a collection of the wrong size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from service.app.core.errors import ServiceUnavailable
from service.app.store.registry import normalize_database_url
from service.app.store.vectors import ChunkPoint, QdrantVectorStore, collection_name, model_slug, point_id
from tests.service.support import make_settings

DIM = 4


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QdrantVectorStore]:
    """A local-mode store with tiny vectors."""
    settings = make_settings(tmp_path)
    store = QdrantVectorStore.from_settings(settings, model_name="org/Tiny-Model_v1", dimension=DIM)
    store.ensure_collection()
    yield store
    store.close()


def chunk(document_id: str, version: int, index: int, vector: list[float], tenant: str = "t1") -> ChunkPoint:
    return ChunkPoint(
        tenant_id=tenant,
        document_id=document_id,
        version=version,
        chunk_index=index,
        text=f"{document_id} v{version} #{index}",
        vector=vector,
        metadata={"lang": "en"},
        content_hash=f"hash-{version}",
        model="org/Tiny-Model_v1",
    )


def test_collection_name_encodes_model_and_dimension() -> None:
    assert model_slug("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers-all-minilm-l6-v2"
    assert (
        collection_name("documents", "sentence-transformers/all-MiniLM-L6-v2", 384)
        == "documents__sentence-transformers-all-minilm-l6-v2__384"
    )
    assert collection_name("documents", "BAAI/bge-small-en-v1.5", 384) != collection_name(
        "documents", "sentence-transformers/all-MiniLM-L6-v2", 384
    )


def test_point_ids_are_deterministic_and_distinct_per_version_and_tenant() -> None:
    assert point_id("t", "d", 1, 0) == point_id("t", "d", 1, 0)
    ids = {
        point_id("t", "d", 1, 0),
        point_id("t", "d", 2, 0),
        point_id("t", "d", 1, 1),
        point_id("u", "d", 1, 0),
    }
    assert len(ids) == 4


def test_points_carry_the_full_payload_and_rewrites_are_idempotent(store: QdrantVectorStore) -> None:
    points = [chunk("doc", 1, i, [1.0, float(i), 0.0, 0.0]) for i in range(3)]
    store.upsert(points)
    store.upsert(points)
    assert store.count("t1", "doc") == 3
    stored = store.client.retrieve(store.collection, [point_id("t1", "doc", 1, 2)], with_payload=True)
    assert stored[0].payload == {
        "tenant_id": "t1",
        "document_id": "doc",
        "version": 1,
        "chunk_index": 2,
        "text": "doc v1 #2",
        "metadata": {"lang": "en"},
        "content_hash": "hash-1",
        "model": "org/Tiny-Model_v1",
    }


def test_deletes_are_scoped_to_tenant_document_and_version(store: QdrantVectorStore) -> None:
    store.upsert([chunk("doc", v, i, [1.0, 0.0, float(v), float(i)]) for v in (1, 2, 3) for i in range(2)])
    store.upsert(
        [chunk("doc", 1, 0, [1.0, 0.0, 0.0, 0.0], tenant="t2"), chunk("other", 1, 0, [0.0, 1.0, 0.0, 0.0])]
    )
    store.delete_versions_below("t1", "doc", 3)
    assert {
        hit.version for hit in store.search("t1", [1.0, 0.0, 0.0, 0.0], limit=50) if hit.document_id == "doc"
    } == {3}
    store.delete_version("t1", "doc", 3)
    assert store.count("t1", "doc") == 0
    assert store.count("t1", "other") == 1
    assert store.count("t2") == 1


def test_search_is_confined_to_the_tenant(store: QdrantVectorStore) -> None:
    store.upsert(
        [
            chunk("a", 1, 0, [1.0, 0.0, 0.0, 0.0], tenant="t1"),
            chunk("b", 1, 0, [1.0, 0.0, 0.0, 0.0], tenant="t2"),
        ]
    )
    assert [hit.document_id for hit in store.search("t2", [1.0, 0.0, 0.0, 0.0], limit=10)] == ["b"]


def test_an_existing_collection_of_another_size_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    name = collection_name(settings.qdrant_collection_prefix, "m", DIM)
    client = QdrantClient(path=str(tmp_path / "other"), force_disable_check_same_thread=True)
    client.create_collection(
        name, vectors_config=models.VectorParams(size=DIM + 1, distance=models.Distance.COSINE)
    )
    store = QdrantVectorStore(client, collection=name, dimension=DIM, local=True, settings=settings)
    with pytest.raises(ServiceUnavailable, match="size 5"):
        store.ensure_collection()
    store.close()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_database_urls_default_to_psycopg3(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


class RecordingClient:
    """Stands in for a Qdrant *server* client (none runs here): records the calls the store makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        def call(*args: object, **kwargs: object) -> object:
            self.calls.append((name, args, kwargs))
            return False if name == "collection_exists" else None

        return call


def test_server_mode_creates_the_collection_with_cosine_and_payload_indexes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, qdrant_replication_factor=2, qdrant_shard_number=3)
    client = RecordingClient()
    store = QdrantVectorStore(client, collection="c", dimension=384, local=False, settings=settings)  # type: ignore[arg-type]
    store.ensure_collection()
    created = next(kwargs for name, _, kwargs in client.calls if name == "create_collection")
    assert created["vectors_config"] == models.VectorParams(size=384, distance=models.Distance.COSINE)
    assert created["replication_factor"] == 2
    assert created["shard_number"] == 3
    indexes = {
        args[1]: kwargs["field_schema"]
        for name, args, kwargs in client.calls
        if name == "create_payload_index"
    }
    assert indexes["tenant_id"] == models.KeywordIndexParams(
        type=models.KeywordIndexType.KEYWORD, is_tenant=True
    )
    assert indexes["document_id"] == models.PayloadSchemaType.KEYWORD
    assert indexes["version"] == models.PayloadSchemaType.INTEGER

    client.calls.clear()
    point = chunk("doc", 1, 0, [1.0, 0.0, 0.0, 0.0])
    store.upsert(
        [
            ChunkPoint(
                **{
                    **point.__dict__,
                    "metadata": {"lang": "en", "year": 2024, "score": 0.5, "ok": True, "tags": ["a"]},
                }
            )
        ]
    )
    store.upsert([point])  # already indexed fields are not re-created
    metadata_indexes = {
        args[1]: kwargs["field_schema"]
        for name, args, kwargs in client.calls
        if name == "create_payload_index"
    }
    assert metadata_indexes == {
        "metadata.lang": models.PayloadSchemaType.KEYWORD,
        "metadata.year": models.PayloadSchemaType.INTEGER,
        "metadata.score": models.PayloadSchemaType.FLOAT,
        "metadata.ok": models.PayloadSchemaType.BOOL,
        "metadata.tags": models.PayloadSchemaType.KEYWORD,
    }
    assert sum(1 for name, _, _ in client.calls if name == "create_payload_index") == 5
    assert sum(1 for name, _, _ in client.calls if name == "upsert") == 2
