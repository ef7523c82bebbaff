"""What tenancy does and does not isolate in keyword (BM25) scoring: documented in docs/service.md.

The engine multiplies in the inverse document frequency over the whole collection (every tenant's chunks), so
another tenant's documents change a tenant's sparse scores, and through them its hybrid ranking; dense scores
are a tenant's own. This pins that exact behaviour so the documentation cannot drift from it: a change to
per-tenant statistics must update this test and docs/service.md ("Tenants and keyword statistics") together.
"""

from __future__ import annotations

import math
from pathlib import Path

from service.app.store.edge import EdgeVectorStore
from service.app.store.sparse import default_encoder
from service.app.store.vectors import ChunkPoint

DIM = 4


def chunks(tenant: str, document_id: str, texts: list[str]) -> list[ChunkPoint]:
    return [
        ChunkPoint(tenant, document_id, 1, i, text, [1.0, 0.2, 0.0, 0.5], {}, "h", "m")
        for i, text in enumerate(texts)
    ]


def idf(total: int, containing: int) -> float:
    """Qdrant's IDF modifier (BM25's, +1 inside the log)."""
    return math.log((total - containing + 0.5) / (containing + 0.5) + 1)


def test_another_tenants_documents_change_a_tenants_sparse_score_by_collection_wide_idf(
    tmp_path: Path,
) -> None:
    store = EdgeVectorStore(
        tmp_path / "edge" / "c", collection="c", dimension=DIM, optimize_idle_seconds=None
    )
    store.ensure_collection()
    try:
        query = default_encoder().query("zebra")
        store.upsert(chunks("b", "mine", ["the zebra crossing policy", "parking rules for bicycles"]))
        store.upsert(chunks("a", "filler", [f"routine memo number {i} about lunch" for i in range(50)]))

        def tenant_b() -> tuple[float, float]:
            (sparse,) = store.search("b", None, limit=5, mode="sparse", sparse=query)
            dense = store.search("b", [1.0, 0.2, 0.0, 0.5], limit=1, mode="dense")[0]
            return sparse.score, dense.score

        sparse_before, dense_before = tenant_b()
        store.upsert(chunks("a", "secret", [f"project zebra acquisition note {i}" for i in range(20)]))
        sparse_after, dense_after = tenant_b()

        assert dense_after == dense_before  # dense scores are the tenant's own
        # Tenant a's 20 chunks moved tenant b's score by exactly the collection-wide IDF ratio: N chunks of all
        # tenants, n of them containing the term. Knowing its own chunk, b can solve for n (and N).
        expected = idf(72, 21) / idf(52, 1)
        assert math.isclose(sparse_after / sparse_before, expected, rel_tol=1e-4)
    finally:
        store.close()
