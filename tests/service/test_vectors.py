"""The vector-store contract, run against every embedded adapter (qdrant-edge and local mode): collection naming per
model and dimension, deterministic point ids, payload shape, version-scoped deletes, metadata filters, the score
threshold, and refusing a collection of the wrong size. Server mode is checked through the calls it makes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from service.app.core.errors import ServiceUnavailable
from service.app.main import open_vector_store
from service.app.store.edge import EdgeVectorStore
from service.app.store.qdrant import QdrantVectorStore
from service.app.store.registry import normalize_database_url
from service.app.store.vectors import (
    ChunkPoint,
    MetadataCondition,
    VectorHit,
    VectorStore,
    collection_name,
    model_slug,
    point_id,
)
from tests.service.support import make_settings

DIM = 4


@pytest.fixture(params=["edge", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    """An embedded store with tiny vectors, once per adapter."""
    settings = make_settings(tmp_path, vector_store=request.param)
    store = open_vector_store(settings, model_name="org/Tiny-Model_v1", dimension=DIM)
    store.ensure_collection()
    yield store
    store.close()


def stored_payload(store: VectorStore, point: str) -> dict[str, Any] | None:
    """The payload of one point as the backend holds it."""
    if isinstance(store, EdgeVectorStore):
        records = store.shard.retrieve([point], True, False)
    else:
        assert isinstance(store, QdrantVectorStore)
        records = store.client.retrieve(store.collection, [point], with_payload=True)
    return records[0].payload if records else None


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


def test_points_carry_the_full_payload_and_rewrites_are_idempotent(store: VectorStore) -> None:
    points = [chunk("doc", 1, i, [1.0, float(i), 0.0, 0.0]) for i in range(3)]
    store.upsert(points)
    store.upsert(points)
    assert store.count("t1", "doc") == 3
    assert stored_payload(store, point_id("t1", "doc", 1, 2)) == {
        "tenant_id": "t1",
        "document_id": "doc",
        "version": 1,
        "chunk_index": 2,
        "text": "doc v1 #2",
        "metadata": {"lang": "en"},
        "content_hash": "hash-1",
        "model": "org/Tiny-Model_v1",
    }


def test_deletes_are_scoped_to_tenant_document_and_version(store: VectorStore) -> None:
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


def test_search_is_confined_to_the_tenant(store: VectorStore) -> None:
    store.upsert(
        [
            chunk("a", 1, 0, [1.0, 0.0, 0.0, 0.0], tenant="t1"),
            chunk("b", 1, 0, [1.0, 0.0, 0.0, 0.0], tenant="t2"),
        ]
    )
    assert [hit.document_id for hit in store.search("t2", [1.0, 0.0, 0.0, 0.0], limit=10)] == ["b"]


def test_delete_document_removes_every_version(store: VectorStore) -> None:
    store.upsert([chunk("doc", v, 0, [1.0, 0.0, 0.0, float(v)]) for v in (1, 2)])
    store.upsert([chunk("doc", 1, 0, [1.0, 0.0, 0.0, 0.0], tenant="t2")])
    store.delete_document("t1", "doc")
    assert store.count("t1") == 0
    assert store.count("t2") == 1


def with_metadata(document_id: str, metadata: dict[str, Any], vector: list[float]) -> ChunkPoint:
    return ChunkPoint(**{**chunk(document_id, 1, 0, vector).__dict__, "metadata": metadata})


METADATA_CASES = [
    (MetadataCondition(field="lang", equals="de"), {"b"}),
    (MetadataCondition(field="year", equals=2024), {"a"}),
    (MetadataCondition(field="year", equals=2024.0), {"a"}),
    (MetadataCondition(field="score", equals=0.5), {"a"}),
    (MetadataCondition(field="draft", equals=True), {"b"}),
    (MetadataCondition(field="draft", equals=False), {"a"}),
    (MetadataCondition(field="tags", any_of=["x", "z"]), {"a"}),
    (MetadataCondition(field="year", gte=2020, lt=2024), {"b"}),
    (MetadataCondition(field="score", gt=0.5), {"b"}),
]


def test_metadata_filters_select_the_same_points_in_every_adapter(store: VectorStore) -> None:
    store.upsert(
        [
            with_metadata(
                "a",
                {"lang": "en", "year": 2024, "score": 0.5, "draft": False, "tags": ["x", "y"]},
                [1.0, 0.0, 0.0, 0.0],
            ),
            with_metadata(
                "b",
                {"lang": "de", "year": 2021, "score": 0.75, "draft": True, "tags": ["y"]},
                [0.0, 1.0, 0.0, 0.0],
            ),
        ]
    )
    selected = {
        repr(condition): {
            hit.document_id
            for hit in store.search("t1", [1.0, 1.0, 0.0, 0.0], limit=10, conditions=[condition])
        }
        for condition, _ in METADATA_CASES
    }
    assert selected == {repr(condition): expected for condition, expected in METADATA_CASES}


def test_score_threshold_and_offset_page_through_results(store: VectorStore) -> None:
    store.upsert([chunk("doc", 1, i, [1.0, 0.3 * i, 0.0, 0.0]) for i in range(6)])
    ranked = [hit.chunk_index for hit in store.search("t1", [1.0, 0.0, 0.0, 0.0], limit=6)]
    assert ranked == [0, 1, 2, 3, 4, 5]
    assert [hit.chunk_index for hit in store.search("t1", [1.0, 0.0, 0.0, 0.0], limit=2, offset=2)] == [2, 3]
    above = store.search("t1", [1.0, 0.0, 0.0, 0.0], limit=6, score_threshold=0.9)
    assert [hit.chunk_index for hit in above] == [0, 1]  # cosines 1.0, 0.958, 0.857, ...
    assert all(hit.score >= 0.9 for hit in above)


def test_an_existing_edge_store_of_another_size_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = EdgeVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    first.ensure_collection()
    first.close()
    other = EdgeVectorStore(first.path, collection=first.collection, dimension=DIM + 1)
    with pytest.raises(ServiceUnavailable, match="size 4, the model gives 5"):
        other.ensure_collection()
    other.close()
    reopened = EdgeVectorStore(first.path, collection=first.collection, dimension=DIM)
    reopened.ensure_collection()  # the refusal released the directory lock
    reopened.close()


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
    assert created["sparse_vectors_config"] == {
        "bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)
    }
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
        # Numbers get a float index whatever their first value: an integer index hid later float values from
        # every filter on the key (service/app/store/metadata_index.py index_kind).
        "metadata.year": models.PayloadSchemaType.FLOAT,
        "metadata.score": models.PayloadSchemaType.FLOAT,
        "metadata.ok": models.PayloadSchemaType.BOOL,
        "metadata.tags": models.PayloadSchemaType.KEYWORD,
    }
    assert sum(1 for name, _, _ in client.calls if name == "create_payload_index") == 5
    assert sum(1 for name, _, _ in client.calls if name == "upsert") == 2


def test_versions_lists_every_stored_version_with_its_point_count(store: VectorStore) -> None:
    from service.app.store.vectors import PointVersion

    store.upsert([chunk("doc", v, i, [1.0, float(i), float(v), 0.0]) for v in (1, 2) for i in range(v + 1)])
    store.upsert([chunk("doc", 1, 0, [1.0, 0.0, 0.0, 0.0], tenant="t2")])
    assert sorted(store.versions(), key=lambda p: (p.tenant_id, p.version)) == [
        PointVersion("t1", "doc", 1, 2),
        PointVersion("t1", "doc", 2, 3),
        PointVersion("t2", "doc", 1, 1),
    ]
    store.delete_version("t1", "doc", 1)
    assert {(p.tenant_id, p.version) for p in store.versions()} == {("t1", 2), ("t2", 1)}


def test_a_hit_from_a_payload_equals_the_constructed_one_and_is_immutable() -> None:
    payload = {"document_id": "d", "version": 3, "chunk_index": 2, "text": "t", "metadata": {"lang": "en"}}
    hit = VectorHit.from_payload(payload, 0.25)
    assert hit == VectorHit(
        document_id="d", version=3, chunk_index=2, text="t", score=0.25, metadata={"lang": "en"}
    )
    assert hit.metadata is not payload["metadata"]  # the hit's metadata is its own
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.version = 4  # type: ignore[misc]
    assert VectorHit.from_payload({**payload, "metadata": None}, 1).metadata == {}


def test_searches_alternating_tenants_and_filters_stay_confined(store: VectorStore) -> None:
    # The edge adapter keeps each tenant's filter between searches: reusing it must never leak another tenant's
    # points, with or without metadata conditions beside it.
    store.upsert([chunk("a", 1, 0, [1, 0, 0, 0], tenant="t1"), chunk("b", 1, 0, [1, 0, 0, 0], tenant="t2")])
    for _ in range(3):
        for tenant, document in (("t1", "a"), ("t2", "b")):
            hits = store.search(tenant, [1, 0, 0, 0], limit=5)
            assert [hit.document_id for hit in hits] == [document]
            hits = store.search(
                tenant, [1, 0, 0, 0], limit=5, conditions=[MetadataCondition("lang", equals="en")]
            )
            assert [hit.document_id for hit in hits] == [document]
            assert (
                store.search(
                    tenant, [1, 0, 0, 0], limit=5, conditions=[MetadataCondition("lang", equals="de")]
                )
                == []
            )
