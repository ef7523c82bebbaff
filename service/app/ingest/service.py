"""Ingestion: text -> chunks -> vectors -> Qdrant, with the registry deciding what is visible.

Write ordering (why a crash or a backend error never exposes half a document)
-----------------------------------------------------------------------------
The registry row ``(tenant_id, document_id) -> version`` is the source of truth for the ACTIVE version, and a
search returns a chunk only if its ``(document_id, version)`` is active (service.app.search.service). So:

Ingest
  1. Hash the content: text + canonical metadata + content type. Equal to the active row's hash ->
     ``unchanged``; nothing is embedded or written. The model and chunking are not part of it: they are the
     index's (every document of a collection is built with its config, and a re-index rebuilds them all), so an
     unchanged re-send after a re-index is still a no-op. Rows written by a release that hashed them in
     (``legacy_content_hash``) are recognised under the served or standby config and re-hashed once.
  2. Chunk and embed (in a threadpool), then upsert the points tagged with a NEW version ``v_new`` (point ids
     are uuid5 of tenant/document/version/chunk, so a retry rewrites the same points). They are invisible:
     the registry still points at the old version (or at nothing).
  3. In ONE registry transaction switch the row to ``v_new`` and bump the tenant's ``data_version`` (the
     search cache key). This is the commit point: before it searches see the old version, after it the new one.
     It is a compare-and-set on the version read in step 1, so a concurrent writer that lost gets 409 Conflict
     and deletes its own points, and never replaces a version it did not see.
  4. Delete the document's points with ``version < v_new``. A failure here is logged and ignored: what is left
     is invisible garbage that the next write of the document, or the orphan collector, removes.

  A write that reaches step 3 more than GC_GRACE_SECONDS after it chose its version refuses to commit (503):
  the orphan collector (service.app.store.gc) may already have removed its points as leftovers of a dead write.

  A Qdrant error in step 2 (or a registry error in step 3) answers 503, leaves the registry unchanged and at
  most some invisible points (removed best-effort right away, else by the next write); a retry succeeds.
  Versions are ``max(previous + 1, now in microseconds)``: increasing per document and distinct between
  concurrent writers, which is what makes the ``version < v_new`` clean-up safe while another write is in flight.

Delete
  Registry row first (atomic; from then on no search returns the document), then the document's points up to
  the deleted version (a writer in another process may already be upserting a newer one). If the point
  deletion fails the points are invisible garbage and the request still succeeds.

Within one process, writes of the same document are serialised by a per-document lock, so concurrent PUTs of
one id both succeed (last one wins) instead of one getting 409; across processes the compare-and-set decides.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from anyio import to_thread

from service.app.core.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    RagError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from service.app.core.faults import fault_point
from service.app.core.metrics import CHUNKS_INGESTED, DOCUMENTS_INGESTED, FAILURES, SHADOW_WRITE_FAILURES
from service.app.ingest.chunking import Chunker
from service.app.ingest.extract import SUPPORTED_TYPES, normalize_content_type, normalize_text
from service.app.ingest.index import ActiveIndex, IndexConfig, IndexGeneration
from service.app.ingest.models import (
    ChunkOut,
    DocumentChunks,
    DocumentList,
    DocumentOut,
    IngestResult,
    has_lone_surrogate,
    validate_document_id,
    validate_metadata,
    validate_new_document_id,
)
from service.app.store.protocols import Embedder
from service.app.store.registry import CommitFence, DocumentRecord, DocumentRegistry, Superseded
from service.app.store.sparse import default_encoder
from service.app.store.vectors import ChunkPoint, VectorStore

logger = logging.getLogger(__name__)

# Chunks embedded between two checks of a job's lease (about a second of embedding on one core).
FENCE_CHECK_CHUNKS = 128
# How often GET .../chunks reads again when the document was replaced between its registry and store reads.
CHUNK_READ_ATTEMPTS = 3
# How often a job's write is tried when another process's commit wins the version compare-and-set.
JOB_CONFLICT_ATTEMPTS = 3
# How long a delete answered 503 with its outcome unknown makes this process answer its retry 204 rather than
# 404 (a client retries within seconds to minutes), and how many such deletes it remembers at most.
UNCERTAIN_DELETE_SECONDS = 600.0
UNCERTAIN_DELETES_KEPT = 10_000
# Runs the vector store's syncs of written points while the writer prepares its registry commit. The syncs of
# concurrent writers are grouped by the store (one fsync round covers all of them), so a few threads suffice.
_SYNCS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-sync")


def content_hash(text: str, metadata: dict[str, Any], content_type: str) -> str:
    """The hash of a document's content (its normalized text, canonical metadata and content type)."""
    material = canonical_json({"text": text, "metadata": metadata, "content_type": content_type})
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def legacy_content_hash(
    text: str, metadata: dict[str, Any], content_type: str, model: str, chunking: dict[str, int]
) -> str:
    """The hash releases before 2026-11-26 stored: the content plus the model and chunking of the writing index
    (which made every unchanged re-send after a re-index re-embed once)."""
    material = canonical_json(
        {
            "text": text,
            "metadata": metadata,
            "content_type": content_type,
            "model": model,
            "chunking": chunking,
        }
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON: equal values always serialise to equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def new_version(previous: int | None) -> int:
    """Next version of a document: increasing, and distinct between concurrent writers."""
    return max((previous or 0) + 1, time.time_ns() // 1000)


def to_document_out(record: DocumentRecord) -> DocumentOut:
    return DocumentOut(
        document_id=record.document_id,
        version=record.version,
        content_hash=record.content_hash,
        content_type=record.content_type,
        chunk_count=record.chunk_count,
        metadata=record.metadata,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


@dataclass
class _KeyedLocks:
    """asyncio locks per key, dropped when nobody holds or waits for them."""

    _locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class IngestService:
    """Creates, replaces, reads and deletes documents; the only writer of the registry and the vector store."""

    def __init__(
        self,
        *,
        registry: DocumentRegistry,
        vectors: VectorStore,
        embedder: Embedder,
        chunker: Chunker,
        commit_deadline_seconds: float = 3600.0,
        index: ActiveIndex | None = None,
    ) -> None:
        self.registry = registry
        # The generation writes go to; a re-index swaps it (and adds a shadow generation every write also fills).
        self.index = index or ActiveIndex(
            IndexGeneration(
                IndexConfig(embedder.model_name, chunker.budget, chunker.overlap),
                vectors,
                embedder,
                chunker,
            )
        )
        # Set by build_services: adopt an index switch made by another process before writing.
        self.sync_index: Callable[[], None] | None = None
        self.commit_deadline_us = int(commit_deadline_seconds * 1_000_000)
        self._locks = _KeyedLocks()
        # (tenant, document) -> monotonic deadline: deletes answered 503 whose commit may have happened.
        self._uncertain_deletes: dict[tuple[str, str], float] = {}

    @property
    def vectors(self) -> VectorStore:
        return self.index.current.vectors

    @property
    def embedder(self) -> Embedder:
        return self.index.current.embedder

    @property
    def chunker(self) -> Chunker:
        return self.index.current.chunker

    def content_hash(self, text: str, metadata: dict[str, Any], content_type: str) -> str:
        """What decides whether a write changes anything: the document, not the index it is built into."""
        return content_hash(text, metadata, content_type)

    def _legacy_match(
        self, stored: str, text: str, metadata: dict[str, Any], kind: str, generations: list[IndexGeneration]
    ) -> bool:
        """Whether ``stored`` is an earlier release's hash of this content under one of ``generations``."""
        return any(
            stored == legacy_content_hash(text, metadata, kind, g.embedder.model_name, g.chunker.params())
            for g in generations
        )

    async def ingest(
        self,
        tenant_id: str,
        document_id: str,
        *,
        text: str,
        metadata: dict[str, Any] | None = None,
        content_type: str = "text/plain",
        fence: CommitFence | None = None,
        ticket: int | None = None,
    ) -> IngestResult:
        """Create or replace a document from its extracted text; ``unchanged`` (no embedding) when nothing changed.

        ``ticket`` (an async write's place in the write order, from `accept` at its 202): the commit is refused
        when a write or delete of the document was acknowledged after that acceptance, and the result is
        ``superseded`` (nothing visible changed; its points are discarded). None: a synchronous write, ordered at
        its commit.

        ``text`` is plain text: callers extract it first (`extract_text` for files, `html_to_text` for HTML
        sent as JSON); ``content_type`` records what the source was. ``fence`` (an ingestion job's lease) is
        checked between embedding batches and held by the commit: a job whose lease was taken over stops, and
        never commits over the worker that took it (its points are discarded).
        """
        validate_new_document_id(document_id)
        clean_metadata = validate_metadata(metadata)
        kind = normalize_content_type(content_type)
        if kind not in SUPPORTED_TYPES:
            raise UnsupportedMediaType(
                f"unsupported content_type {kind or content_type!r}; supported: {', '.join(SUPPORTED_TYPES)}",
                supported=list(SUPPORTED_TYPES),
            )
        if not isinstance(text, str):
            raise InvalidInput("text must be a string")
        if has_lone_surrogate(text):
            raise InvalidInput(
                "text contains an unpaired surrogate (\\ud800-\\udfff), which is not valid Unicode"
            )
        text = normalize_text(text)
        if not text:
            raise InvalidInput("text is empty")
        digest = self.content_hash(text, clean_metadata, kind)
        async with self._locks.hold((tenant_id, document_id)):
            for attempt in range(1, JOB_CONFLICT_ATTEMPTS + 1):
                try:
                    return await self._write(
                        tenant_id, document_id, text, clean_metadata, kind, digest, fence, ticket
                    )
                except Superseded:
                    raise
                except Conflict:
                    # A job (it has a ticket) that lost the version compare-and-set to another process's commit
                    # (an older queued job run by another worker) tries again: its ticket decides the order,
                    # not which commit came first. A synchronous writer gets the 409 (its client retries).
                    if ticket is None or attempt == JOB_CONFLICT_ATTEMPTS:
                        raise
                    logger.info("write of %s/%s lost a race; writing again", tenant_id, document_id)
            raise AssertionError("unreachable")

    def _missing_from_served(self, tenant_id: str, record: DocumentRecord) -> bool:
        """Whether the served index lacks ``record``'s version (a re-index switched without its text)."""
        if not record.chunk_count:
            return False
        vectors = self.index.current.vectors
        return vectors.chunk_texts(tenant_id, record.document_id, record.version, [0]) == [None]

    async def accept(self, tenant_id: str, document_id: str) -> int:
        """Take an async write's ticket at its acceptance (before the 202): see `DocumentRegistry.accept_write`.

        ServiceUnavailable, as the same write sent synchronously, while the vector store refuses writes now (the
        embedded store's disk below READY_MIN_FREE_BYTES, or a failed WAL sync): a 202 would promise a job that
        can only spend its attempts and fail (EYES10)."""
        validate_new_document_id(document_id)
        await to_thread.run_sync(self.check_room)
        return await to_thread.run_sync(self.registry.accept_write, tenant_id, document_id)

    def check_room(self) -> None:
        """ServiceUnavailable (DiskFull when the disk is the cause) while the vector store refuses writes now.
        Only the embedded engine manages a disk of its own; the other adapters have nothing to check."""
        check_room = getattr(self.index.current.vectors, "check_room", None)
        if check_room is not None:
            check_room()

    async def _write(
        self,
        tenant_id: str,
        document_id: str,
        text: str,
        metadata: dict[str, Any],
        kind: str,
        digest: str,
        fence: CommitFence | None = None,
        ticket: int | None = None,
    ) -> IngestResult:
        # The whole write in one threadpool hop (the registry read, steps 2-4): a sequential client waits for
        # every hop, and under CPU contention each costs scheduling latency (2-4 ms each at load 6-8).
        return await to_thread.run_sync(
            lambda: self._write_in_thread(tenant_id, document_id, text, metadata, kind, digest, fence, ticket)
        )

    def _write_in_thread(
        self,
        tenant_id: str,
        document_id: str,
        text: str,
        metadata: dict[str, Any],
        kind: str,
        digest: str,
        fence: CommitFence | None,
        ticket: int | None,
    ) -> IngestResult:
        current = self.registry.get(tenant_id, document_id, served=self._served())
        if current is not None and current.content_hash != digest:
            state = self.index.state
            generations = [g for g in (state.current, state.shadow) if g is not None]
            if self._legacy_match(current.content_hash, text, metadata, kind, generations):
                # Unchanged, hashed by an earlier release: store this release's hash, so no later re-index
                # (whose config the old hash named) makes the next re-send re-embed it.
                self.registry.rehash(tenant_id, document_id, current.version, digest)
                current = replace(current, content_hash=digest)
        if current is not None and current.content_hash == digest:
            # A document written before texts were kept gets its text now (a no-op when it has one); if a
            # re-index left it out of the served index (it could not rebuild it), it is written again below.
            kept_now = self.registry.ensure_source(tenant_id, document_id, current.version, text)
            if kept_now and self._missing_from_served(tenant_id, current):
                current = replace(current, content_hash="")
        if current is not None and current.content_hash == digest:
            # Acknowledged: an older queued write of the document must not replace it later.
            self.registry.confirm_unchanged(tenant_id, document_id, current.version, ticket)
            DOCUMENTS_INGESTED.labels(status="unchanged").inc()
            return IngestResult(
                document_id=document_id,
                status="unchanged",
                chunks=current.chunk_count,
                version=current.version,
            )

        version = new_version(current.version if current else None)
        try:
            count = self._publish(
                tenant_id, document_id, text, metadata, kind, digest, current, version, fence, ticket
            )
        except Superseded:
            # A newer write or delete was acknowledged after this one was accepted: it stays (ordered by acceptance).
            DOCUMENTS_INGESTED.labels(status="superseded").inc()
            logger.info("write of %s/%s superseded by a newer one", tenant_id, document_id)
            return IngestResult(document_id=document_id, status="superseded", chunks=0, version=None)
        status = "created" if current is None else "updated"
        DOCUMENTS_INGESTED.labels(status=status).inc()
        CHUNKS_INGESTED.inc(count)
        return IngestResult(document_id=document_id, status=status, chunks=count, version=version)

    def _publish(
        self,
        tenant_id: str,
        document_id: str,
        text: str,
        metadata: dict[str, Any],
        kind: str,
        digest: str,
        current: DocumentRecord | None,
        version: int,
        fence: CommitFence | None = None,
        ticket: int | None = None,
    ) -> int:
        """Chunk, embed, upsert (invisible), commit in the registry, clean up; returns the chunk count.

        With a shadow generation (a re-index building, or the previous index on standby for a rollback) the
        active version is also written there once committed, so the two never miss a write.
        """
        if self.sync_index is not None:
            self.sync_index()
        with self.index.writing() as state:
            count = self._publish_in(
                state.current,
                tenant_id,
                document_id,
                text,
                metadata,
                kind,
                digest,
                current,
                version,
                fence,
                ticket,
            )
            if state.shadow is not None:
                try:
                    self.write_version(state.shadow, tenant_id, document_id, version, text, metadata, digest)
                except (RagError, InvalidInput) as exc:
                    # Found and replayed by the re-index's catch-up from the kept text; never fails the write.
                    SHADOW_WRITE_FAILURES.inc()
                    logger.warning("shadow copy of %s/%s failed: %s", tenant_id, document_id, exc)
        return count

    def write_version(
        self,
        generation: IndexGeneration,
        tenant_id: str,
        document_id: str,
        version: int,
        text: str,
        metadata: dict[str, Any],
        digest: str,
    ) -> int:
        """Write one (already active) version of a document into ``generation`` and drop its older versions there."""
        points = self._points(generation, tenant_id, document_id, version, text, metadata, digest)
        generation.vectors.upsert(points)
        try:
            generation.vectors.delete_versions_below(tenant_id, document_id, version)
        except ServiceUnavailable:
            logger.warning("stale chunks of %s/%s left in %s", tenant_id, document_id, generation.collection)
        # Its chunk count there (other chunking, other count): what GET reports once search serves it.
        self.registry.record_chunk_count(generation.collection, tenant_id, document_id, version, len(points))
        return len(points)

    def _points(
        self,
        generation: IndexGeneration,
        tenant_id: str,
        document_id: str,
        version: int,
        text: str,
        metadata: dict[str, Any],
        digest: str,
        fence: CommitFence | None = None,
    ) -> list[ChunkPoint]:
        chunks = generation.chunker.split(text)
        if not chunks:
            raise InvalidInput("text has no content the model can read")
        texts = [chunk.text for chunk in chunks]
        try:
            if fence is None:
                vectors = generation.embedder.embed_documents(texts)
            else:
                # A job that lost its lease (taken over, or cancelled by a shutdown) stops within one slice
                # instead of embedding a whole large document nobody will commit.
                vectors = []
                for start in range(0, len(texts), FENCE_CHECK_CHUNKS):
                    fence.check()
                    vectors += generation.embedder.embed_documents(texts[start : start + FENCE_CHECK_CHUNKS])
                fence.check()
        except RagError:
            raise
        except Exception as exc:
            FAILURES.labels(component="embedder").inc()
            logger.error("embedding failed", exc_info=exc)
            raise ServiceUnavailable("embedding failed; nothing was changed, retry later") from exc
        sparse = default_encoder().documents(texts)  # BM25 for sparse and hybrid search, ~0.1 ms a chunk
        return [
            ChunkPoint(
                tenant_id=tenant_id,
                document_id=document_id,
                version=version,
                chunk_index=index,
                text=chunk_text,
                vector=vector,
                metadata=metadata,
                content_hash=digest,
                model=generation.embedder.model_name,
                sparse=sparse_vector,
            )
            for index, (chunk_text, vector, sparse_vector) in enumerate(
                zip(texts, vectors, sparse, strict=True)
            )
        ]

    def _publish_in(
        self,
        generation: IndexGeneration,
        tenant_id: str,
        document_id: str,
        text: str,
        metadata: dict[str, Any],
        kind: str,
        digest: str,
        current: DocumentRecord | None,
        version: int,
        fence: CommitFence | None = None,
        ticket: int | None = None,
    ) -> int:
        store = generation.vectors
        points = self._points(generation, tenant_id, document_id, version, text, metadata, digest, fence)
        fault_point("before_upsert")
        try:
            synced = self._upsert(store, points)
        except ServiceUnavailable:
            self._discard(store, tenant_id, document_id, version)
            raise

        if time.time_ns() // 1000 - version > self.commit_deadline_us:
            # The orphan collector may already treat this version as garbage (service.app.store.gc).
            self._discard(store, tenant_id, document_id, version)
            raise ServiceUnavailable(
                "the write took longer than GC_GRACE_SECONDS; nothing was changed, retry"
            )
        fault_point("before_activate")
        try:
            self.registry.activate(
                tenant_id,
                document_id,
                expected_version=current.version if current else None,
                version=version,
                content_hash=digest,
                metadata=metadata,
                content_type=kind,
                chunk_count=len(points),
                text=text,
                fence=fence,
                ticket=ticket,
                before_commit=None if synced is None else synced.result,
            )
        except Conflict:  # Superseded is a Conflict: raised before the commit, nothing was changed
            self._discard(store, tenant_id, document_id, version)
            raise
        except ServiceUnavailable:
            # The outcome is unknown: a commit whose answer was lost (a connection reset after the server
            # committed) made ``version`` active. Its points are discarded only once the registry says it is not.
            if not self._committed(store, tenant_id, document_id, version):
                raise
            logger.warning("commit of %s/%s answered with an error but it happened", tenant_id, document_id)
        except Exception:
            # Anything else (a bug, a failed sync of the points before the commit): the points are discarded at
            # once, not after GC_GRACE_SECONDS, unless the registry says the version is active (the failure came
            # after the commit); unreadable, they are left to the collector, as above. The error stands.
            self._committed(store, tenant_id, document_id, version)
            raise

        fault_point("before_cleanup")
        try:
            store.delete_versions_below(tenant_id, document_id, version)
        except ServiceUnavailable:
            logger.warning("stale chunks of %s/%s left behind (invisible)", tenant_id, document_id)
        return len(points)

    @staticmethod
    def _upsert(store: VectorStore, points: list[ChunkPoint]) -> Future[None] | None:
        """Write the points (invisible until the commit); for a store that syncs its writes to disk
        (WRITE_DURABILITY=power_loss on the edge store), the sync is started here and returned: it runs while the
        registry prepares the commit, which waits for it (``before_commit``) and commits nothing if it fails."""
        deferred = getattr(store, "sync_deferred", None)
        if deferred is None or not getattr(store, "sync_writes", False):
            store.upsert(points)
            return None
        with deferred():
            store.upsert(points)
        return _SYNCS.submit(store.sync)  # type: ignore[attr-defined]

    def _committed(self, store: VectorStore, tenant_id: str, document_id: str, version: int) -> bool:
        """After a commit whose outcome is unknown: True when the registry holds ``version`` active (the commit
        happened); otherwise the version's points are discarded and False returned. When the registry cannot be
        read either, the points are left: the orphan collector removes them after GC_GRACE_SECONDS unless the
        version is active (then a retry of the write finds it unchanged, and searchable)."""
        try:
            record = self.registry.get(tenant_id, document_id)
        except ServiceUnavailable:
            logger.warning(
                "commit of version %s of %s/%s may have happened; its points are left to the orphan collector",
                version,
                tenant_id,
                document_id,
            )
            return False
        if record is not None and record.version == version:
            return True
        self._discard(store, tenant_id, document_id, version)
        return False

    def _discard(self, store: VectorStore, tenant_id: str, document_id: str, version: int) -> None:
        # Best effort: these points were never active; if this fails too the next write removes them.
        try:
            store.delete_version(tenant_id, document_id, version)
        except ServiceUnavailable:
            logger.warning(
                "could not discard unpublished version %s of %s/%s", version, tenant_id, document_id
            )

    def _served(self) -> str:
        """The collection search serves (after following the pointer): whose chunk counts documents report."""
        if self.sync_index is not None:
            self.sync_index()
        return self.index.current.collection

    async def get(self, tenant_id: str, document_id: str) -> DocumentOut:
        """The active document (its chunk count in the collection search serves), or NotFound."""
        validate_document_id(document_id)
        record = await to_thread.run_sync(
            lambda: self.registry.get(tenant_id, document_id, served=self._served())
        )
        if record is None:
            raise NotFound(f"document {document_id!r} not found", document_id=document_id)
        return to_document_out(record)

    def _delete_happened(self, tenant_id: str, document_id: str, existed: bool) -> bool:
        """After a registry delete whose outcome is unknown: True when the document, which ``existed`` before the
        attempt, is gone now (the commit happened, or a concurrent delete won: either way it is deleted). When the
        registry cannot be read, the document is remembered as possibly deleted (for its retry) and False
        returned. A document that did not exist before the attempt was not deleted by it: False (the 503 stands;
        its retry gets the 404)."""
        if not existed:
            return False
        try:
            gone = self.registry.get(tenant_id, document_id) is None
        except ServiceUnavailable:
            if len(self._uncertain_deletes) >= UNCERTAIN_DELETES_KEPT:
                now = time.monotonic()
                self._uncertain_deletes = {k: t for k, t in self._uncertain_deletes.items() if t > now}
            if len(self._uncertain_deletes) < UNCERTAIN_DELETES_KEPT:
                self._uncertain_deletes[(tenant_id, document_id)] = (
                    time.monotonic() + UNCERTAIN_DELETE_SECONDS
                )
            return False
        if gone:
            logger.warning(
                "delete of %s/%s answered with an error but it happened; its points are left to the orphan "
                "collector",
                tenant_id,
                document_id,
            )
        return gone

    async def chunks(self, tenant_id: str, document_id: str, *, offset: int, limit: int) -> DocumentChunks:
        """A page of the active version's stored chunks (as search serves them), or NotFound.

        The registry names the version, the served store holds its text: read by point id, so a page costs
        ``limit`` lookups whatever the document's size. A write that replaces the document between the two reads
        deletes the old version's points; then the registry is read again (the new version's chunks are
        complete once it is active), so a page never mixes two versions."""
        validate_document_id(document_id)

        def read() -> DocumentChunks | None:
            collection = self._served()
            vectors = self.index.current.vectors
            record = self.registry.get(tenant_id, document_id, served=collection)
            if record is None:
                raise NotFound(f"document {document_id!r} not found", document_id=document_id)
            indexes = list(range(offset, min(offset + limit, record.chunk_count)))
            texts = vectors.chunk_texts(tenant_id, document_id, record.version, indexes) if indexes else []
            if any(text is None for text in texts):
                if self.registry.source(tenant_id, document_id) is None:
                    again = self.registry.get(tenant_id, document_id)
                    if again is not None and again.version == record.version:
                        # Written before texts were kept, so the re-index that built the served index left it
                        # out: a retry never helps, a re-send does.
                        raise Conflict(
                            f"document {document_id!r} is not in the served index: it was written by a release "
                            "before texts were kept, so a re-index could not rebuild it; re-send it (PUT the "
                            "same content again) to index it with the current settings",
                            document_id=document_id,
                        )
                return None
            stop = offset + len(indexes)
            return DocumentChunks(
                document_id=document_id,
                version=record.version,
                chunk_count=record.chunk_count,
                chunks=[ChunkOut(chunk_index=i, text=t or "") for i, t in zip(indexes, texts, strict=True)],
                next_offset=stop if stop < record.chunk_count else None,
            )

        for _ in range(CHUNK_READ_ATTEMPTS):
            page = await to_thread.run_sync(read)
            if page is not None:
                return page
        raise ServiceUnavailable(f"document {document_id!r} changed while its chunks were read; retry")

    async def list(self, tenant_id: str, *, cursor: str | None, limit: int) -> DocumentList:
        """A page of the tenant's documents ordered by id."""
        page = await to_thread.run_sync(
            lambda: self.registry.list(tenant_id, cursor=cursor, limit=limit, served=self._served())
        )
        return DocumentList(documents=[to_document_out(r) for r in page.items], next_cursor=page.next_cursor)

    async def delete(self, tenant_id: str, document_id: str) -> DocumentOut | None:
        """Remove a document (registry row first, then its points); NotFound when unknown.

        A delete whose commit answer was lost (a connection reset after the database committed) is read back: the
        row gone means it happened (None: the removed record is not known, its points are left to the orphan
        collector, which removes the points of versions the registry does not hold). When the read fails too,
        the 503 stands and this process remembers the document for UNCERTAIN_DELETE_SECONDS: the client's
        retry, finding no row, is answered as a delete that happened (204), not a 404."""
        validate_document_id(document_id)
        key = (tenant_id, document_id)
        async with self._locks.hold(key):
            # Read first: a failed attempt is only answered as done on read-back if there was a row to delete
            # (the attempt may have failed before reaching the database: then "no row" means "never existed").
            existed = await to_thread.run_sync(self.registry.get, tenant_id, document_id) is not None
            try:
                record = await to_thread.run_sync(self.registry.delete, tenant_id, document_id)
            except ServiceUnavailable:
                if not await to_thread.run_sync(self._delete_happened, tenant_id, document_id, existed):
                    raise
                return None
            if record is None:
                if self._uncertain_deletes.pop(key, 0.0) > time.monotonic():
                    return None  # the retry of a delete whose outcome was unknown: it had happened
                raise NotFound(f"document {document_id!r} not found", document_id=document_id)
            self._uncertain_deletes.pop(key, None)
            fault_point("after_registry_delete")
            state = self.index.state
            for generation in (state.current, state.shadow):
                if generation is None:
                    continue
                try:
                    # Up to the deleted version only: a concurrent writer's newer points are its own business.
                    await to_thread.run_sync(
                        generation.vectors.delete_versions_below, tenant_id, document_id, record.version + 1
                    )
                except ServiceUnavailable:
                    logger.warning("chunks of deleted %s/%s left behind (invisible)", tenant_id, document_id)
        return to_document_out(record)
