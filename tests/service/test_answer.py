"""POST /v1/answer: retrieval, the no-context refusal, citations, the extractive default and the LLM path.

The LLM path runs against tests/support/openai_server.py, a separate process speaking the Chat Completions wire
format of the official `openai` package (see test_answer_llm.py for streaming, cancellation and failures).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app.answer.citations import CitationFilter, clean_citations
from tests.service.support import CountingEmbedder, make_settings, running_app

VACATION = (
    "Employees get 25 days of paid vacation per year. Unused vacation days expire at the end of March. "
    "The office cafeteria serves lunch from noon."
)
PARKING = "Parking permits cost 40 euros per month. Bicycles can be parked for free in the basement."


@pytest.fixture
def client(tmp_path: Path, embedder: Any) -> Iterator[TestClient]:
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        for doc_id, text, team in (
            ("handbook:vacation", VACATION, "hr"),
            ("handbook:parking", PARKING, "ops"),
        ):
            body = {"text": text, "metadata": {"team": team}, "content_type": "text/plain"}
            assert client.put(f"/v1/documents/{doc_id}", json=body).status_code == 201
        yield client


def test_extractive_answer_quotes_the_supporting_sentence_with_a_valid_citation(client: TestClient) -> None:
    response = client.post("/v1/answer", json={"query": "How many days of paid vacation do employees get?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["generator"] == "extractive"
    assert body["model"] == "extractive"
    assert "25 days of paid vacation" in body["answer"]
    citations = {c["n"]: c for c in body["citations"]}
    assert citations, body
    assert all(f"[{n}]" in body["answer"] for n in citations)
    marked, _ = clean_citations(body["answer"], set(citations))
    assert marked == body["answer"]  # no marker names a missing citation
    vacation = [c for c in citations.values() if c["document_id"] == "handbook:vacation"]
    assert vacation
    assert "25 days" in vacation[0]["text"]
    assert vacation[0]["score"] > 0.3


def test_below_the_score_threshold_the_service_says_so(client: TestClient) -> None:
    body = client.post("/v1/answer", json={"query": "quantum chromodynamics of gluon plasma"}).json()
    assert body["generator"] == "no_context"
    assert body["citations"] == []
    assert body["model"] is None
    assert "nothing" in body["answer"].lower()


def test_the_filter_and_tenancy_of_search_apply(client: TestClient) -> None:
    body = client.post(
        "/v1/answer", json={"query": "How many days of paid vacation?", "filter": {"team": "ops"}}
    ).json()
    assert all(c["document_id"] == "handbook:parking" for c in body["citations"])
    assert "vacation" not in body["answer"].lower()


def test_extractive_stream_sends_tokens_then_citations_then_usage(client: TestClient) -> None:
    with client.stream(
        "POST", "/v1/answer", json={"query": "When do vacation days expire?", "stream": True}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("event: ") for line in r.iter_lines() if line.startswith("event: ")]
    assert events[0] == "token"
    assert events[-2:] == ["citations", "usage"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"query": " "}, "blank"),
        ({"query": "\u202e\u200b\u200d"}, "no content the model can read"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "stream": "yes"}, "stream"),
        ({"query": "x", "filter": {"team": [1, 2]}}, "filter.team"),
        ({"query": "x", "mode": "bogus-mode"}, "mode"),
    ],
)
def test_bad_requests_are_422_with_a_reason(client: TestClient, body: dict[str, Any], reason: str) -> None:
    response = client.post("/v1/answer", json=body)
    assert response.status_code == 422, response.text
    assert reason in response.json()["error"]["message"]


def test_citation_filter_handles_markers_split_over_tokens() -> None:
    citations = CitationFilter(range(1, 3))
    pieces = ["Vacation is 25 days ", "[", "1", "]", " and parking [", "2, ", "9", "]. Nothing [", "7", "]."]
    text = "".join(citations.feed(p) for p in pieces) + citations.finish()
    assert text == "Vacation is 25 days [1] and parking [2]. Nothing."
    assert citations.cited == [1, 2]


def test_citation_filter_does_not_hold_plain_brackets() -> None:
    citations = CitationFilter(range(1, 2))
    assert citations.feed("an array [a, b] and [") == "an array [a, b] and"
    assert citations.feed("x]") == " [x]"


class QueryCountingEmbedder(CountingEmbedder):
    """Also records every query it embeds and every batch of passages."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.queries: list[str] = []
        self.batches: list[list[str]] = []

    def embed_documents(self, texts: Any) -> list[list[float]]:
        self.batches.append(list(texts))
        return super().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return super().embed_query(text)


def test_an_extractive_answer_embeds_its_query_once_and_a_repeated_question_not_at_all(
    tmp_path: Path, embedder: Any
) -> None:
    counting = QueryCountingEmbedder(embedder)
    # The search result cache on, as deployed: the answer's search then goes through its wrapper.
    with running_app(make_settings(tmp_path, cache_enabled=True), embedder=counting) as client:
        body = {"text": VACATION, "metadata": {"team": "hr"}, "content_type": "text/plain"}
        assert client.put("/v1/documents/handbook:vacation", json=body).status_code == 201
        counting.queries.clear()
        counting.batches.clear()
        question = "How many days of paid vacation do employees get?"

        first = client.post("/v1/answer", json={"query": question})
        assert first.status_code == 200, first.text
        assert first.json()["generator"] == "extractive"
        assert "25 days" in first.json()["answer"]
        # The search embedded the query; the sentence scoring took that vector from the query-vector cache.
        assert counting.queries == [question]
        assert len(counting.batches) == 1  # the candidate sentences, in one call

        again = client.post("/v1/answer", json={"query": question})
        assert again.json() == first.json()
        assert counting.queries == [question]  # the search result and the query vector were both cached
