"""Equality on a number matches the same value stored as an int or a float, in every vector store, and a boolean is
never a number (``{"n": 12}`` missed a stored ``12.0``: the engines' integer match reads only integer payloads, and
numeric keys are indexed as float; ``True`` must not select a stored ``1``, as Python's ``True == 1`` would).

Across the real engines: qdrant-edge with and without the key's payload index, qdrant-client's local mode, the
translation a Qdrant server receives (no server runs here: its filter code is the edge engine's), and the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from service.app.store.edge import EdgeVectorStore
from service.app.store.qdrant import QdrantVectorStore, _condition
from service.app.store.vectors import ChunkPoint, MetadataCondition, VectorStore, numeric_equality
from tests.service.support import make_settings, running_app

DIM = 4
TENANT = "t1"
BIG = 2**60 + 1

# document -> the value of ``n`` (and of ``m``, a second key written float first)
VALUES: dict[str, Any] = {
    "int12": 12,
    "float12": 12.0,
    "list12": [3, 12],
    "str12": "12",
    "f12_5": 12.5,
    "int1": 1,
    "float1": 1.0,
    "true": True,
    "int0": 0,
    "float0": 0.0,
    "neg0": -0.0,
    "false": False,
    "big": BIG,
    "bignext": BIG + 1,
}
# (condition on the key, the documents it must select)
CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"equals": 12}, {"int12", "float12", "list12"}),
    ({"equals": 12.0}, {"int12", "float12", "list12"}),
    ({"equals": "12"}, {"str12"}),
    ({"equals": 12.5}, {"f12_5"}),
    ({"equals": 1}, {"int1", "float1"}),
    ({"equals": 1.0}, {"int1", "float1"}),
    ({"equals": True}, {"true"}),
    ({"equals": 0}, {"int0", "float0", "neg0"}),
    ({"equals": False}, {"false"}),
    ({"equals": BIG}, {"big"}),  # past 2**53 an integer equality stays exact: not its neighbour
    ({"any_of": [12, 1]}, {"int12", "float12", "list12", "int1", "float1"}),
    ({"any_of": [0]}, {"int0", "float0", "neg0"}),
    ({"any_of": [BIG + 1, 12]}, {"bignext", "int12", "float12", "list12"}),
    ({"any_of": ["12"]}, {"str12"}),
    ({"gte": 1, "lte": 1}, {"int1", "float1"}),  # a range never reads a boolean either
]


def point(name: str, metadata: dict[str, Any]) -> ChunkPoint:
    return ChunkPoint(
        tenant_id=TENANT,
        document_id=name,
        version=1,
        chunk_index=0,
        text=f"text of {name}",
        vector=[1.0, 0.5, float(len(name)), 0.25],
        metadata=metadata,
        content_hash="h",
        model="m",
    )


KEYS = ("n", "m", "s", "b")


def write(store: VectorStore) -> None:
    # The index kind comes from a key's first value: ``n`` is first an int, ``m`` a float (both get a float
    # index), ``s`` a string (keyword index) and ``b`` a boolean (bool index); then every key holds every value.
    store.upsert([point("str12", {"s": "12"})])
    store.upsert([point("true", {"b": True})])
    for name, value in VALUES.items():
        store.upsert([point(name, {"n": value})])
    for name, value in reversed(VALUES.items()):
        store.upsert([point(name, dict.fromkeys(KEYS, value))])


def selected(store: VectorStore, key: str, case: dict[str, Any]) -> set[str]:
    condition = MetadataCondition(key, **case)
    hits = store.search(TENANT, [1.0, 0.5, 1.0, 0.25], limit=100, conditions=[condition])
    return {hit.document_id for hit in hits}


def check(store: VectorStore) -> None:
    for key in KEYS:
        for case, expected in CASES:
            assert selected(store, key, case) == expected, (key, case)


def edge_store(path: Path, max_keys: int) -> EdgeVectorStore:
    edge = EdgeVectorStore(
        path, collection="c", dimension=DIM, optimize_idle_seconds=None, metadata_index_max_keys=max_keys
    )
    edge.metadata_index_pause_ratio = 0.0
    edge.ensure_collection()
    return edge


@pytest.mark.parametrize("max_keys", [0, 4], ids=["unindexed", "indexed"])
def test_edge_numeric_equality_matches_ints_and_floats_and_never_booleans(
    tmp_path: Path, max_keys: int
) -> None:
    store = edge_store(tmp_path / "c", max_keys)
    try:
        write(store)
        if max_keys:
            assert store.indexer is not None
            assert store.indexer.wait_idle(60)
            kinds = {
                k.removeprefix("metadata."): str(v.data_type)
                for k, v in store.shard.info().payload_schema.items()
                if k.startswith("metadata.")
            }
            assert kinds == {
                "n": "PayloadSchemaType.Float",
                "m": "PayloadSchemaType.Float",
                "s": "PayloadSchemaType.Keyword",
                "b": "PayloadSchemaType.Bool",
            }
        check(store)
    finally:
        store.close()


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[QdrantVectorStore]:
    settings = make_settings(tmp_path, vector_store="local")
    client = QdrantClient(path=str(tmp_path / "q"), force_disable_check_same_thread=True)
    store = QdrantVectorStore(client, collection="c", dimension=DIM, local=True, settings=settings)
    store.ensure_collection()
    yield store
    store.close()


def test_local_mode_numeric_equality_matches_ints_and_floats_and_never_booleans(
    local_store: QdrantVectorStore,
) -> None:
    # Local mode evaluates the very filter a Qdrant server receives (one translation, service/app/store/qdrant.py).
    write(local_store)
    check(local_store)


def test_a_qdrant_server_receives_numeric_equality_as_a_one_value_float_range() -> None:
    assert _condition(MetadataCondition("n", equals=12)) == models.FieldCondition(
        key="metadata.n", range=models.Range(gte=12.0, lte=12.0)
    )
    assert _condition(MetadataCondition("n", equals=True)) == models.FieldCondition(
        key="metadata.n", match=models.MatchValue(value=True)
    )
    assert _condition(MetadataCondition("n", equals=BIG)) == models.FieldCondition(
        key="metadata.n", match=models.MatchValue(value=BIG)
    )
    assert _condition(MetadataCondition("n", any_of=[12, BIG])) == models.Filter(
        should=[
            models.FieldCondition(key="metadata.n", range=models.Range(gte=12.0, lte=12.0)),
            models.FieldCondition(key="metadata.n", match=models.MatchAny(any=[BIG])),
        ]
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12.0),  # a float: the one-value range
        (12.0, 12.0),
        (-0.0, 0.0),
        (2**53 - 1, float(2**53 - 1)),
        (2**53, 2**53),  # an int: an exact integer match
        (-(2**53), -(2**53)),
        (float(2**60), 2**60),  # an integral float past 2**53: the exact integer
        (1e30, 1e30),  # past int64: no integer match exists, a range
        (True, None),
        (False, None),
        ("1", None),
    ],
)
def test_numeric_equality_decides_range_exact_or_not_a_number(value: object, expected: object) -> None:
    decided = numeric_equality(value)
    assert decided == expected
    assert type(decided) is type(expected)


def test_through_the_api_a_filter_on_12_finds_a_document_stored_with_12_0(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with running_app(settings) as client:
        for name, value in (("a", 12), ("b", 12.0), ("c", True), ("d", 1)):
            response = client.put(
                f"/v1/documents/{name}", json={"text": f"numeric document {name}", "metadata": {"n": value}}
            )
            assert response.status_code == 201, response.text

        def ids(value: Any) -> set[str]:
            body = {"query": "numeric document", "top_k": 10, "filter": {"n": value}}
            response = client.post("/v1/search", json=body)
            assert response.status_code == 200, response.text
            return {hit["document_id"] for hit in response.json()["results"]}

        assert ids(12) == {"a", "b"}
        assert ids(12.0) == {"a", "b"}
        assert ids(True) == {"c"}
        assert ids(1) == {"d"}
        assert ids({"any": [12, 1]}) == {"a", "b", "d"}
