"""Search through the API on a small topical corpus: each query finds its document first; filters, threshold,
top_k and ordering behave as documented."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app.store.embedder import FastEmbedEmbedder
from tests.service.support import make_settings, running_app

CORPUS = json.loads((Path(__file__).parent / "fixtures" / "corpus.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, embedder: FastEmbedEmbedder) -> Iterator[TestClient]:
    """An app holding the ten-document corpus."""
    settings = make_settings(tmp_path_factory.mktemp("search"), chunk_size=48, chunk_overlap=8)
    with running_app(settings, embedder=embedder) as client:
        for document_id, document in CORPUS["documents"].items():
            response = client.put(f"/v1/documents/{document_id}", json=document)
            assert response.status_code == 201, response.text
        yield client


def search(client: TestClient, query: str, **options: object) -> list[dict]:
    response = client.post("/v1/search", json={"query": query, **options})
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.mark.parametrize(("query", "expected"), sorted(CORPUS["queries"].items()))
def test_each_query_ranks_its_document_first(client: TestClient, query: str, expected: str) -> None:
    results = search(client, query, top_k=3)
    assert results[0]["document_id"] == expected, [(r["document_id"], round(r["score"], 3)) for r in results]


def test_results_are_best_first_and_carry_text_and_metadata(client: TestClient) -> None:
    results = search(client, "immune system antibodies", top_k=20)
    assert len(results) == 20
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert len({(r["document_id"], r["chunk_index"]) for r in results}) == 20
    top = results[0]
    assert top["document_id"] == "vaccines"
    assert top["text"] in CORPUS["documents"]["vaccines"]["text"]
    assert top["metadata"] == CORPUS["documents"]["vaccines"]["metadata"]


def test_top_k_bounds_the_result_count(client: TestClient) -> None:
    assert len(search(client, "science", top_k=1)) == 1
    assert len(search(client, "science")) == 5
    assert len(search(client, "science", top_k=100)) == sum(
        client.get(f"/v1/documents/{d}").json()["chunk_count"] for d in CORPUS["documents"]
    )


def test_score_threshold_drops_weak_matches(client: TestClient) -> None:
    everything = search(client, "honeybee waggle dance", top_k=100, mode="dense")
    threshold = (everything[2]["score"] + everything[3]["score"]) / 2
    strong = search(client, "honeybee waggle dance", top_k=100, score_threshold=threshold, mode="dense")
    assert [(r["document_id"], r["chunk_index"]) for r in strong] == [
        (r["document_id"], r["chunk_index"]) for r in everything[:3]
    ]
    # The threshold is a cosine floor in every mode: hybrid keeps exactly the chunks above it (its dense side
    # brings them all in), sparse those of them that share a term with the query.
    above = {(r["document_id"], r["chunk_index"]) for r in everything[:3]}
    hybrid = search(client, "honeybee waggle dance", top_k=100, score_threshold=threshold, mode="hybrid")
    assert {(r["document_id"], r["chunk_index"]) for r in hybrid} == above
    sparse = search(client, "honeybee waggle dance", top_k=100, score_threshold=threshold, mode="sparse")
    assert sparse
    assert {(r["document_id"], r["chunk_index"]) for r in sparse} <= above


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_every_mode_answers_and_says_which_it_ran(client: TestClient, mode: str) -> None:
    response = client.post("/v1/search", json={"query": "honeybee waggle dance", "mode": mode})
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == mode
    assert response.json()["results"][0]["document_id"] == "honeybees"
    assert client.post("/v1/search", json={"query": "honeybee"}).json()["mode"] == "hybrid"


@pytest.mark.parametrize("mode", ["bm25", "HYBRID", "", 1, None])
def test_an_unknown_mode_is_a_422_naming_the_modes(client: TestClient, mode: object) -> None:
    response = client.post("/v1/search", json={"query": "honeybee", "mode": mode})
    if mode is None:  # an explicit null is the default
        assert response.status_code == 200
        return
    assert response.status_code == 422, response.text
    assert "dense" in response.text
    assert "hybrid" in response.text


def test_the_openapi_document_states_the_modes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"][
        "mode"
    ]
    assert {"dense", "sparse", "hybrid"} <= set(json.dumps(schema).replace('"', " ").split())
    assert "reciprocal rank fusion" in json.dumps(schema)


def ids(results: list[dict]) -> set[str]:
    return {r["document_id"] for r in results}


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ({"subject": "biology"}, {"photosynthesis", "honeybees"}),
        ({"year": 2021}, {"volcanoes", "vaccines"}),
        ({"level": 1.5}, {"photosynthesis", "marathon"}),
        ({"reviewed": False}, {"sourdough", "french-revolution", "tcp-ip", "marathon"}),
        ({"tags": "plants"}, {"photosynthesis", "honeybees"}),
        ({"tags": {"any": ["space", "networking"]}}, {"black-holes", "tcp-ip"}),
        ({"subject": {"any": ["games", "sport"]}}, {"chess", "marathon"}),
        ({"year": {"gte": 2022}}, {"sourdough", "honeybees", "black-holes", "marathon"}),
        ({"year": {"gt": 2017, "lt": 2020}}, {"chess", "photosynthesis"}),
        ({"level": {"lte": 1.0}}, {"sourdough", "honeybees"}),
        ({"subject": "biology", "year": {"gte": 2020}}, {"honeybees"}),
        ({"subject": "astrology"}, set()),
        ({"missing_field": "x"}, set()),
    ],
)
def test_metadata_filters(client: TestClient, filter_: dict, expected: set[str]) -> None:
    results = search(client, "an interesting topic", top_k=100, filter=filter_)
    assert ids(results) == expected


def test_filtering_happens_before_ranking(client: TestClient) -> None:
    # The volcano query's best document is excluded: the best remaining match still comes back.
    results = search(client, "Why does lava erupt from mountains?", top_k=1, filter={"subject": "history"})
    assert [r["document_id"] for r in results] == ["french-revolution"]
