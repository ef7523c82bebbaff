"""Search: embed the query, ask the vector store, keep only chunks of ACTIVE document versions.

Modes: ``dense`` (the embedding), ``sparse`` (BM25 vector of the query, service.app.store.sparse) or ``hybrid``
(both, fused by the store with reciprocal rank fusion). A request without a mode gets DEFAULT_MODE, or dense
while the served collection has no sparse vectors (one created before them, until a re-index); asking for
sparse or hybrid then is a 409 naming the re-index.

The vector store may hold points that are not (or no longer) visible: a new version being written, an old one
not yet cleaned up, leftovers of a crashed or failed write (see service.app.ingest.service and
service.app.store.gc). The registry decides: hits are over-fetched and those whose (document_id, version) is not
active are dropped. All pages of one search are judged against ONE registry snapshot (`DocumentRegistry.snapshot`),
so a write committing mid-search cannot mix versions in a response (through `LiveVersions`, which also keeps a
bounded-age copy of the versions looked up, so search answers through a registry outage: see there); pages grow geometrically until ``top_k``
visible hits are found or the store is exhausted, so search is correct whatever the share of invisible points.
A search never returns duplicates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from service.app.core.errors import Conflict, RagError, ServiceUnavailable
from service.app.core.hop import SEARCH_THREADS
from service.app.core.metrics import FAILURES, INVISIBLE_HITS, SEARCH_SECONDS
from service.app.ingest.index import ActiveIndex
from service.app.search.models import DEFAULT_MODE, SearchRequest, SearchResponse, SearchResult
from service.app.search.query_cache import QueryVectorCache
from service.app.store.live_versions import LiveVersions
from service.app.store.protocols import Embedder
from service.app.store.registry import DocumentRegistry
from service.app.store.sparse import SparseVector, default_encoder
from service.app.store.vectors import MetadataCondition, SearchMode, VectorHit, VectorStore

logger = logging.getLogger(__name__)

# Extra hits fetched on the first page to absorb invisible points (writes in flight, leftovers the orphan collector
# has not reached yet) without a second round trip; when a page still falls short the next, twice as large page is
# fetched, until top_k visible hits are found or the store has no more.
OVERFETCH_MIN = 4
MAX_PAGE = 2048


class SearchService:
    """Semantic search over one tenant's active documents."""

    def __init__(
        self,
        *,
        registry: DocumentRegistry,
        vectors: VectorStore,
        embedder: Embedder,
        index: ActiveIndex | None = None,
        query_cache: QueryVectorCache | None = None,
        live: LiveVersions | None = None,
    ) -> None:
        self.registry = registry
        # The versions hits are judged by (REGISTRY_OUTAGE_SEARCH_SECONDS; without it every search needs the
        # registry, as before the copy existed).
        self.live = live if live is not None else LiveVersions(registry, outage_seconds=0)
        # Vectors of recent query texts, per model (QUERY_EMBEDDING_CACHE_SIZE; None: every search embeds).
        self.query_cache = query_cache
        self._fixed = (vectors, embedder)
        # Shared with the ingest service: a re-index switches both at once.
        self.index = index
        self.sync_index: Callable[[], None] | None = None  # set by service.app.main: follow the index pointer

    @property
    def vectors(self) -> VectorStore:
        return self.index.current.vectors if self.index is not None else self._fixed[0]

    @property
    def embedder(self) -> Embedder:
        return self.index.current.embedder if self.index is not None else self._fixed[1]

    async def search(self, tenant_id: str, request: SearchRequest) -> SearchResponse:
        """The ``top_k`` best chunks matching the request, best first."""
        # One hop for the whole blocking part: under CPU contention every hop costs scheduling time. The search
        # pool's hop costs the event loop a third of anyio's (service.app.core.hop).
        return await SEARCH_THREADS.run(self.search_sync, tenant_id, request)

    def search_sync(self, tenant_id: str, request: SearchRequest) -> SearchResponse:
        """`search` for a caller already off the event loop (blocking: embedding, engine, registry)."""
        mode, hits = self._search_blocking(
            tenant_id,
            request.query,
            request.top_k,
            request.conditions(),
            request.score_threshold,
            request.mode,
        )
        return SearchResponse(
            mode=mode,
            results=[
                SearchResult(
                    document_id=hit.document_id,
                    chunk_index=hit.chunk_index,
                    text=hit.text,
                    score=hit.score,
                    metadata=hit.metadata,
                )
                for hit in hits
            ],
        )

    def _search_blocking(
        self,
        tenant_id: str,
        query: str,
        top_k: int,
        conditions: Sequence[MetadataCondition],
        score_threshold: float | None,
        requested: SearchMode | None,
    ) -> tuple[SearchMode, list[VectorHit]]:
        if self.sync_index is not None:
            self.sync_index()  # follow a switch another replica made (cached; see Reindexer.sync)
        generation = self.index.current if self.index is not None else None
        store, embedder = (generation.vectors, generation.embedder) if generation else self._fixed
        mode = resolve_mode(store, requested)
        vector = None
        if mode != "sparse" or score_threshold is not None:  # sparse needs the embedding only for a threshold
            try:
                cache = self.query_cache
                vector = cache.dense(embedder, query) if cache is not None else embedder.embed_query(query)
            except RagError:
                raise
            except Exception as exc:
                FAILURES.labels(component="embedder").inc()
                logger.error("query embedding failed", exc_info=exc)
                raise ServiceUnavailable("query embedding failed; retry later") from exc
        sparse = None
        if mode != "dense":
            encoder = default_encoder()
            cache = self.query_cache
            sparse = cache.sparse(encoder, query) if cache is not None else encoder.query(query)
        started = time.perf_counter()
        hits = self._visible_hits(store, tenant_id, vector, top_k, conditions, score_threshold, mode, sparse)
        SEARCH_SECONDS.observe(time.perf_counter() - started)
        return mode, hits

    def _visible_hits(
        self,
        store: VectorStore,
        tenant_id: str,
        vector: Sequence[float] | None,
        top_k: int,
        conditions: Sequence[MetadataCondition],
        score_threshold: float | None,
        mode: SearchMode = "dense",
        sparse: SparseVector | None = None,
    ) -> list[VectorHit]:
        limit = top_k + max(OVERFETCH_MIN, top_k // 4)
        offset = 0
        kept: list[VectorHit] = []
        seen: set[tuple[str, int]] = set()
        active: dict[str, int | None] = {}
        # A fused ranking depends on how deep each side is read, so a deeper page could reorder what an earlier
        # page returned: sparse and hybrid re-read the ranking from its top, deeper each round, and keep that.
        fused = mode != "dense"
        with self.live.view(tenant_id) as view:
            while True:
                if fused:
                    kept, seen = [], set()
                hits = store.search(
                    tenant_id,
                    vector,
                    limit=offset + limit if fused else limit,
                    offset=0 if fused else offset,
                    conditions=conditions,
                    score_threshold=score_threshold,
                    mode=mode,
                    sparse=sparse,
                )
                unknown = {hit.document_id for hit in hits} - active.keys()
                if unknown:
                    found = view.active_versions(unknown)
                    active.update({document_id: found.get(document_id) for document_id in unknown})
                invisible = 0
                for hit in hits:
                    key = (hit.document_id, hit.chunk_index)
                    if active.get(hit.document_id) == hit.version and key not in seen:
                        seen.add(key)
                        kept.append(hit)
                    else:
                        invisible += 1
                done = len(kept) >= top_k or len(hits) < (offset + limit if fused else limit)
                # A fused re-read sees the earlier pages' invisible hits again: count its last pass only.
                if invisible and (done or not fused):
                    INVISIBLE_HITS.inc(invisible)
                if done:
                    return kept[:top_k]
                # Short of top_k with more hits to come: fetch the next, larger page. Doubling keeps the number
                # of round trips logarithmic in the number of invisible points, with no cap that could let
                # orphans crowd out real results.
                offset += limit
                limit = min(limit * 2, MAX_PAGE)


def resolve_mode(store: VectorStore, requested: SearchMode | None) -> SearchMode:
    """The mode a request runs in: the one asked for, else DEFAULT_MODE, else dense without sparse vectors."""
    has_sparse = getattr(store, "has_sparse", False)
    if requested is None:
        return DEFAULT_MODE if has_sparse else "dense"  # type: ignore[return-value]
    if requested != "dense" and not has_sparse:
        raise Conflict(
            f"mode {requested!r} needs sparse vectors, and the served index ({store.collection}) was built "
            "before they existed: re-index it (POST /v1/admin/reindex, or python -m service.reindex start), "
            "meanwhile use mode 'dense'"
        )
    return requested
