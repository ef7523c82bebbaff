"""The retrieval-quality gate: the committed CI subset of the man-page set, through the HTTP API, above the floors.

The subset (quality/ci_corpus.json: the labelled pages shorter than 2,500 characters, and the queries that have a
relevant page among them) runs on embedded defaults in-process with the real model. quality/floors.json records
the floor of every metric per mode (dense, sparse, hybrid); a change that lowers one fails here, and so does
hybrid losing its lead over dense on identifier (keyword) queries. The scoring itself is checked on
rankings whose metrics are known by hand, so a broken scorer cannot pass the gate by scoring everything high.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from quality.corpus import Page, parse
from quality.evaluate import (
    CI_CORPUS,
    FLOORS,
    below_floors,
    evaluate,
    fold_pages,
    http_search,
    ingest,
    load_queries,
    restrict,
    score,
)
from service.app.main import create_app
from service.app.store.embedder import FastEmbedEmbedder
from tests.service.support import make_settings


@pytest.fixture(scope="module", params=["fp32", "int8"])
def ci_client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedder: FastEmbedEmbedder
) -> Iterator[TestClient]:
    """The service on the CI subset, its queries embedded by each EMBEDDING_QUERY_PRECISION (int8 is the
    default; documents are float32 either way)."""
    settings = make_settings(tmp_path_factory.mktemp("quality"))
    if request.param == "int8":
        embedder = FastEmbedEmbedder(
            embedder.model_name, model_path=embedder.model_dir, query_precision="int8"
        )
        assert embedder.query_graph.endswith("model_query_int8.onnx")
    with TestClient(create_app(settings, embedder=embedder)) as client:
        yield client


def ci_pages() -> list[Page]:
    return [Page(**page) for page in json.loads(CI_CORPUS.read_text(encoding="utf-8"))["pages"]]


def test_ci_subset_stays_above_the_recorded_floors(ci_client: TestClient) -> None:
    pages = ci_pages()
    _query_set, queries = load_queries()
    subset = restrict(queries, {page.document_id for page in pages})
    assert len(subset) >= 80, "the CI subset lost its queries: rebuild it with python -m quality.queries"
    assert {query.kind for query in subset} == {"keyword", "description", "question"}

    chunks = ingest(ci_client, pages)
    assert chunks >= len(pages)
    floors = json.loads(FLOORS.read_text())["ci"]
    assert set(floors) == {"dense", "sparse", "hybrid"}
    results = evaluate(http_search(ci_client), subset, sorted(floors))
    assert below_floors(results, floors) == []
    # What hybrid retrieval is for: identifier queries the dense model ranks second or worse (measured 0.909
    # against 0.773 hit@1 on this subset, docs/quality.md).
    keyword = {mode: results[mode]["kinds"]["keyword"]["hit@1"] for mode in ("dense", "hybrid")}
    assert keyword["hybrid"] >= keyword["dense"] + 0.08, keyword


def test_the_query_set_labels_only_pages_of_its_corpus() -> None:
    query_set, queries = load_queries()
    pages = set(query_set["pages"])
    assert len(queries) >= 500
    assert {page for query in queries for page in query.relevant} <= pages
    assert len({query.query for query in queries}) == len(queries), "a query text is labelled twice"
    ci_ids = {page.document_id for page in ci_pages()}
    assert ci_ids <= pages


def test_scores_of_known_rankings() -> None:
    assert score(["a", "b"], ["a"]) == {"hit@1": 1.0, "hit@5": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0}
    third = score(["x", "y", "a"], ["a"])
    assert third["hit@1"] == 0.0
    assert third["hit@5"] == 1.0
    assert third["mrr@10"] == pytest.approx(1 / 3)
    assert third["ndcg@10"] == pytest.approx(1 / math.log2(4))
    # Two relevant pages, one found at rank 2: DCG 1/log2(3) against the ideal 1 + 1/log2(3).
    two = score(["x", "a", "y"], ["a", "b"])
    assert two["ndcg@10"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    beyond = score([f"p{i}" for i in range(10)] + ["a"], ["a"])
    assert beyond == {"hit@1": 0.0, "hit@5": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    sixth = score([f"p{i}" for i in range(5)] + ["a"], ["a"])
    assert sixth["hit@5"] == 0.0
    assert sixth["mrr@10"] == pytest.approx(1 / 6)


def test_chunk_hits_fold_into_pages_by_their_best_chunk() -> None:
    assert fold_pages(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_a_metric_under_its_floor_is_reported() -> None:
    results = {"dense": {"all": {"hit@1": 0.5, "hit@5": 0.9, "mrr@10": 0.6, "ndcg@10": 0.7}}}
    assert below_floors(results, {"dense": {"hit@1": 0.5, "hit@5": 0.8}}) == []
    assert below_floors(results, {"dense": {"hit@1": 0.51}}) == [
        "dense hit@1 = 0.500 is below the floor 0.510"
    ]
    assert below_floors(results, {"hybrid": {"hit@1": 0.1}}) == [
        "mode hybrid has a floor but was not evaluated"
    ]


RENDERED = """\
open(2)                       System Calls Manual                      open(2)

NAME
       open, openat, creat - open and possibly create a file

SYNOPSIS
       #include <fcntl.h>

       int open(const char *pathname, int flags);

DESCRIPTION
       The open() system call opens the file specified by pathname.   O_CLOEXEC sets the flag.

Linux man-pages 6.03              2023-02-05                           open(2)
"""


def test_a_rendered_page_loses_header_footer_and_name_section() -> None:
    page = parse("open.2", RENDERED)
    assert page is not None
    assert page.title == "open(2)"
    assert page.names == ["open", "openat", "creat"]
    assert page.description == "open and possibly create a file"
    assert "possibly create" not in page.text
    assert "System Calls Manual" not in page.text
    assert "man-pages 6.03" not in page.text
    assert page.text.startswith("SYNOPSIS")
    assert "O_CLOEXEC" in page.text


def test_a_page_without_name_line_is_left_out() -> None:
    assert parse("x.2", "x(2)  Manual  x(2)\n\nDESCRIPTION\n   text\n\nfooter x(2)\n") is None


def test_committed_files_are_where_the_tools_write_them() -> None:
    assert Path(CI_CORPUS).parent == Path(FLOORS).parent
