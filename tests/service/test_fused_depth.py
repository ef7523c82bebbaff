"""`fused_search` reads a short page shallow, and still returns exactly what the full PREFETCH_MIN-deep read gives,
ties at the cut included (an engine breaks equal scores its own way; the page must not depend on it)."""

from __future__ import annotations

import random

import pytest

from service.app.store.vectors import FUSED_MARGIN, PREFETCH_MIN, VectorHit, fused_search


def ranking(scores: list[float]) -> list[VectorHit]:
    return [
        VectorHit(document_id=f"d{i:03d}", version=1, chunk_index=0, text="", score=score, metadata={})
        for i, score in enumerate(scores)
    ]


def engine(hits: list[VectorHit], rng: random.Random, reads: list[int]):  # type: ignore[no-untyped-def]
    """The top ``depth`` by score, equal scores in an arbitrary (shuffled) order, as an engine may return them."""

    def fetch(depth: int) -> list:
        reads.append(depth)
        shuffled = hits[:]
        rng.shuffle(shuffled)
        ordered = sorted(shuffled, key=lambda hit: -hit.score)  # stable: ties stay shuffled
        return [(hit, None) for hit in ordered[:depth]]

    return fetch


def test_a_page_without_ties_at_the_cut_is_one_shallow_read() -> None:
    hits = ranking([1 / (2 + rank) for rank in range(200)])
    reads: list[int] = []
    page = fused_search(
        engine(hits, random.Random(1), reads), vector=None, limit=5, offset=0, score_threshold=None
    )
    assert [hit.document_id for hit in page] == [f"d{i:03d}" for i in range(5)]
    assert reads == [5 + FUSED_MARGIN]


def test_a_tie_across_the_cut_reads_as_deep_as_before() -> None:
    # Ten hits share the fifth-best score: which of them are in a shallow read is the engine's choice.
    hits = ranking([0.9, 0.8, 0.7, 0.6] + [0.5] * 10 + [0.1] * 100)
    reads: list[int] = []
    page = fused_search(
        engine(hits, random.Random(2), reads), vector=None, limit=5, offset=0, score_threshold=None
    )
    assert reads == [5 + FUSED_MARGIN, PREFETCH_MIN]
    assert [hit.document_id for hit in page] == ["d000", "d001", "d002", "d003", "d004"]  # ties by document


@pytest.mark.parametrize("seed", range(30))
def test_every_page_is_the_true_top_whenever_the_full_depth_read_determines_it(seed: int) -> None:
    rng = random.Random(seed)
    # Scores from a small set, so ties are everywhere; sometimes fewer hits than a page.
    hits = ranking([rng.choice([0.5, 0.33, 0.25, 0.2, 0.1]) for _ in range(rng.choice([3, 12, 80]))])
    truth = sorted(hits, key=lambda hit: (-hit.score, hit.document_id))
    checked = 0
    for want in (1, 5, 9, 20, 46, 60):
        depth = max(want, PREFETCH_MIN)
        if len(truth) > depth and truth[min(want, len(truth)) - 1].score == truth[depth - 1].score:
            continue  # a tie across the full read's own cut: it was never determined, before or now
        reads: list[int] = []
        page = fused_search(
            engine(hits, random.Random(seed), reads), vector=None, limit=want, offset=0, score_threshold=None
        )
        assert [hit.document_id for hit in page] == [hit.document_id for hit in truth[:want]]
        assert reads[0] == max(min(want + FUSED_MARGIN, PREFETCH_MIN), want)
        checked += 1
    assert checked
