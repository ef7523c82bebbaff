"""The vector-store contract every adapter implements: `VectorStore`, the point and hit types, shared helpers.

Adapters, one per backend, each in its own module so a process imports only the client it uses:
- `service.app.store.edge.EdgeVectorStore`: qdrant-edge in-process (the embedded default);
- `service.app.store.qdrant.QdrantVectorStore`: qdrant-client, a Qdrant server (QDRANT_URL) or local mode;
- `service.app.store.remote.RemoteVectorStore`: the API process's store lent to job workers.

- The collection is ``{QDRANT_COLLECTION_PREFIX}__{model slug}__{dimension}`` (`collection_name`), so changing
  EMBEDDING_MODEL never mixes vector spaces.
- Point ids are uuid5(tenant/document/version/chunk_index) (`point_id`): re-running the same write is idempotent,
  and two versions of a document never overwrite each other's points. Payload: tenant_id, document_id, version,
  chunk_index, text, metadata, content_hash, model.
- Search `mode` picks dense, sparse (BM25) or both fused with reciprocal rank fusion; `fused_search` applies a
  score threshold (a cosine) to sparse and fused rankings alike in every adapter.

Which version of a document is visible is decided by the registry, not here (see service.app.ingest.service).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from service.app.store.sparse import SparseVector, default_encoder

POINT_NAMESPACE = uuid.UUID("6f1d9c1e-3b0a-5d3e-9a59-0c1f4e2b7a10")

SearchMode = Literal["dense", "sparse", "hybrid"]
SEARCH_MODES: tuple[str, ...] = ("dense", "sparse", "hybrid")
# Reciprocal rank fusion: score = sum over the dense and sparse rankings of 1 / (k + rank), rank from 0. k = 2
# is Qdrant's own default and the only one a 1.15 server takes (a parameterised k needs 1.16), so every adapter
# uses it and fuses alike.
RRF_K = 2
# Candidates each side of a fusion contributes: at least this many, and at least the page asked for.
PREFETCH_MIN = 50
# The deepest fused ranking one search reads (sparse/hybrid with a score threshold drop hits after fusion).
MAX_FUSED = 4096
# Hits read past the page of a fused search without a threshold, to tell a tie at the cut (see fused_search).
FUSED_MARGIN = 4


def model_slug(model_name: str) -> str:
    """``sentence-transformers/all-MiniLM-L6-v2`` -> ``sentence-transformers-all-minilm-l6-v2``."""
    return re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")


def collection_name(prefix: str, model_name: str, dimension: int) -> str:
    """The collection for one vector space: prefix, model and dimension all in the name."""
    return f"{prefix}__{model_slug(model_name)}__{dimension}"


def point_id(tenant_id: str, document_id: str, version: int, chunk_index: int) -> str:
    """Deterministic point id of one chunk of one version of a document."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{tenant_id}/{document_id}/{version}/{chunk_index}"))


@dataclass(frozen=True)
class ChunkPoint:
    """One embedded chunk ready to be written."""

    tenant_id: str
    document_id: str
    version: int
    chunk_index: int
    text: str
    vector: Sequence[float]
    metadata: dict[str, Any]
    content_hash: str
    model: str
    # BM25 vector of ``text``; None: the store computes it (service.app.store.sparse), as the service would.
    sparse: SparseVector | None = None

    def sparse_vector(self) -> SparseVector:
        return self.sparse if self.sparse is not None else default_encoder().document(self.text)

    def payload(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "document_id": self.document_id,
            "version": self.version,
            "chunk_index": self.chunk_index,
            "text": self.text,
            "metadata": self.metadata,
            "content_hash": self.content_hash,
            "model": self.model,
        }


@dataclass(frozen=True)
class MetadataCondition:
    """One validated filter condition on a metadata field: exactly one of equals / any_of / a numeric range."""

    field: str
    equals: str | int | float | bool | None = None
    any_of: Sequence[str | int] | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


# Every integer below this magnitude is exactly an f64, so the one-value range [v, v] selects exactly the stored
# numbers equal to v, integers and floats alike; past it the range would also take neighbouring integers.
EXACT_FLOAT_INTEGERS = 2**53
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def numeric_equality(value: object) -> float | int | None:
    """How an equality condition on ``value`` is compared by every adapter, so ``{"n": 12}`` selects a stored
    ``12`` and a stored ``12.0`` alike (the engines' integer match reads only integer payloads):

    - a float: the one-value range ``[value, value]`` (a float range reads integer and float payloads);
    - an int: an exact integer match, only for integers of 2**53 or more in magnitude within int64 (ids past
      f64's precision must not match their neighbours; a float stored there is not found by them);
    - None: not a number. Booleans are never numbers here: ``True`` must not select a stored ``1`` (Python's
      bool is an int), nor ``1`` a stored ``true``; strings match exactly.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    exact = isinstance(value, int) or value.is_integer()
    if exact and abs(value) >= EXACT_FLOAT_INTEGERS and _INT64_MIN <= value <= _INT64_MAX:
        return int(value)
    return float(value)


@dataclass(frozen=True)
class VectorHit:
    """One scored chunk as stored."""

    document_id: str
    version: int
    chunk_index: int
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None, score: float) -> VectorHit:
        """A hit from a stored point's payload (the same payload every adapter writes)."""
        payload = payload or {}
        # The fields set in one step rather than through the frozen dataclass's __init__ (one object.__setattr__
        # per field): a search builds one hit per page entry, and this is ~0.4x the CPU (docs/benchmarks.md,
        # "The search request around the engine, stop 21"). The hit is equal and immutable alike.
        hit = object.__new__(cls)
        hit.__dict__.update(
            document_id=payload["document_id"],
            version=int(payload["version"]),
            chunk_index=int(payload["chunk_index"]),
            text=payload["text"],
            score=float(score),
            metadata=dict(payload.get("metadata") or {}),
        )
        return hit


@dataclass(frozen=True)
class PointVersion:
    """All points of one version of one document, as the orphan collector sees them."""

    tenant_id: str
    document_id: str
    version: int
    points: int


def cosine(query: Sequence[float], stored: Sequence[float]) -> float:
    """Cosine similarity (what ``score_threshold`` bounds in every mode)."""
    dot = sum(a * b for a, b in zip(query, stored, strict=True))
    norm = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in stored))
    return dot / norm if norm else 0.0


# (limit) -> the first ``limit`` hits of a sparse or fused ranking, each with its stored dense vector when a
# score threshold needs it.
FusedFetch = Callable[[int], list[tuple[VectorHit, Sequence[float] | None]]]


def fused_search(
    fetch: FusedFetch,
    *,
    vector: Sequence[float] | None,
    limit: int,
    offset: int,
    score_threshold: float | None,
) -> list[VectorHit]:
    """The hits ``[offset, offset + limit)`` of a sparse or hybrid ranking, ``score_threshold`` applied.

    ``score_threshold`` is a minimum cosine similarity in every mode. A fused or BM25 score is not one, so the
    threshold is applied to each hit's stored dense vector after the engine ranked; the ranking is read from its
    top, deeper each round, until enough hits pass or the ranking ends. Fewer than ``limit`` hits therefore means
    there are no more, as in dense mode.
    """
    want = offset + limit
    # Each side of a fusion reads at least PREFETCH_MIN candidates, so every page of a search up to that depth is
    # cut from the same ranking and paging neither skips nor repeats a hit. Without a threshold a short page
    # need not READ that deep: the first read is the page plus a margin (each hit read is a payload converted,
    # most of the engine's time for a fused query), deepened to PREFETCH_MIN only when a tie crosses the cut.
    depth = min(want + FUSED_MARGIN, PREFETCH_MIN) if score_threshold is None else max(want, PREFETCH_MIN)
    depth = max(depth, want)
    while True:
        # RRF ties are common (1/2 = 1/4 + 1/4) and each engine breaks them its own way: order equal scores by
        # document and chunk, so every adapter, and every depth, lists them alike.
        raw = sorted(fetch(depth), key=_fused_order)
        if score_threshold is None:
            if len(raw) == depth and depth < PREFETCH_MIN and not _cut_is_clear(raw, want):
                # The engine returned the top ``depth`` by score, so it holds every hit scoring above the last one
                # read; an equal score at the cut may belong to a hit it left out that sorts first.
                depth = PREFETCH_MIN
                continue
            kept = [hit for hit, _ in raw]
        else:
            if vector is None:
                raise ValueError("a score threshold needs the query's dense vector")
            kept = [
                hit for hit, stored in raw if stored is not None and cosine(vector, stored) >= score_threshold
            ]
        if len(kept) >= want or len(raw) < depth or depth >= MAX_FUSED:
            return kept[offset:want]
        depth = min(depth * 2, MAX_FUSED)


def _fused_order(item: tuple[VectorHit, Sequence[float] | None]) -> tuple[float, str, int, int]:
    hit = item[0]
    return (-round(hit.score, 6), hit.document_id, hit.chunk_index, hit.version)


def _cut_is_clear(ranked: list[tuple[VectorHit, Sequence[float] | None]], want: int) -> bool:
    """Whether the first ``want`` of a score-ordered read outscore its last hit (so no unread hit can tie in)."""
    if len(ranked) <= want:
        return True
    return round(ranked[want - 1][0].score, 6) > round(ranked[-1][0].score, 6)


class VectorStore(Protocol):
    """What the ingest and search services need from a vector store."""

    collection: str
    # Whether every point has its BM25 vector, so sparse and hybrid search see the whole collection.
    has_sparse: bool

    def ensure_collection(self) -> None: ...

    def upsert(self, points: Sequence[ChunkPoint]) -> None: ...

    def delete_versions_below(self, tenant_id: str, document_id: str, version: int) -> None: ...

    def delete_version(self, tenant_id: str, document_id: str, version: int) -> None: ...

    def delete_document(self, tenant_id: str, document_id: str) -> None: ...

    def search(
        self,
        tenant_id: str,
        vector: Sequence[float] | None,
        *,
        limit: int,
        offset: int = 0,
        conditions: Sequence[MetadataCondition] = (),
        score_threshold: float | None = None,
        mode: SearchMode = "dense",
        sparse: SparseVector | None = None,
    ) -> list[VectorHit]:
        """Best chunks of the tenant, by ``mode``: dense (cosine to ``vector``), sparse (BM25 of ``sparse``) or
        hybrid (both fused with RRF). ``score_threshold`` is a minimum cosine similarity in every mode (so it
        needs ``vector``). Fewer than ``limit`` hits: there are no more."""
        ...

    def count(self, tenant_id: str, document_id: str | None = None) -> int: ...

    def chunk_texts(
        self, tenant_id: str, document_id: str, version: int, chunk_indexes: Sequence[int]
    ) -> list[str | None]:
        """The stored text of those chunks of one version of a document, in the order asked (None for a chunk
        the store does not hold): read by point id (`point_id`), so no filter or scan (GET .../chunks)."""
        ...

    def versions(self, *, pause: Callable[[], None] | None = None) -> list[PointVersion]:
        """Every (tenant, document, version) the store holds points of, with the point count (orphan GC).

        An in-process store that scans its points in pages calls ``pause`` between two pages, holding nothing
        (no lock, no gate, not the GIL if ``pause`` sleeps), so the collector can let searches run."""
        ...

    def close(self) -> None: ...
