"""Blue/green re-index: build the collection for a new model or chunking while search serves the current one.

    POST /v1/admin/reindex {"chunk_size": 128}      # or python -m service.reindex start --chunk-size 128
    GET  /v1/admin/reindex                          # state and progress
    POST /v1/admin/reindex/rollback                 # back to the previous collection

How a re-index never loses a write and never fails a search
------------------------------------------------------------
1. The target generation (collection + embedder + chunker for the new config) becomes the **shadow** of the
   process's `ActiveIndex`: from then on every write, after committing to the current collection, also writes
   the same version into the target (service.app.ingest.service). The re-index waits until every write that
   started before the shadow existed has finished, so none can slip past both.
2. **Build**: every active document is re-chunked and re-embedded from the text the registry keeps
   (``document_sources``) and written with its active version. Search keeps reading the current collection.
3. **Catch-up**: the target's stored (document, version) pairs are compared with the registry's active
   versions; any that differ (a shadow copy that failed, a write that raced the build's read) are written again
   from the kept text, until a pass finds nothing (at most CATCH_UP_PASSES).
4. **Switch**: one compare-and-set of the registry's index pointer (and, in server mode, one atomic Qdrant alias
   change ``{QDRANT_COLLECTION_PREFIX}`` -> new collection), then the process swaps its `IndexState` in one
   assignment. Searches already running finish on the old collection; new ones use the new one. The old
   generation stays the shadow (standby), still receiving every write, so a **rollback** is the same switch
   back and loses nothing; a catch-up runs after every switch.

Search results are judged against the registry in both collections (points carry the same active versions),
so a search during the build or across the switch returns only active versions, as always.

The same model and chunking can be re-indexed when the served collection has no sparse (BM25) vectors (one
created before they existed, on a Qdrant server that cannot add a vector in place): the target gets both, and
sparse and hybrid search work from the switch on. The service starts that re-index itself at start-up.

Documents written before the registry kept texts (migration 0003) cannot be rebuilt without their client:
they are counted as ``documents_without_text`` and listed (first 20), and the switch still happens only if
there are none, unless ``allow_missing`` is given.

Other processes (API replicas, workers) do not see the shadow while a build runs: their writes reach the
target through the catch-up passes. They adopt a switch at their next write (each write first compares the
persisted pointer with the index it holds) or start-up; their searches move at that point too. A write already
in flight at the switch in another process lands in the old collection only and is replayed by the next
catch-up (a rollback runs one; so does the next re-index). A process restart abandons a running build (the target
collection is kept and the next build re-uses it: upserts are idempotent).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from service.app.core.errors import Conflict, InvalidInput, RagError
from service.app.core.metrics import REINDEX_DOCUMENTS, REINDEX_STATE
from service.app.ingest.index import ActiveIndex, IndexConfig, IndexGeneration, IndexState
from service.app.ingest.service import IngestService
from service.app.store.registry import DocumentRegistry, DocumentSource

logger = logging.getLogger(__name__)

CATCH_UP_PASSES = 5
PAGE = 200
MAX_LISTED = 20

State = Literal["idle", "building", "catching_up", "switching", "switched", "failed", "rolled_back"]


@dataclass(frozen=True)
class ReindexStatus:
    """What the re-index is doing; served by GET /v1/admin/reindex."""

    state: State = "idle"
    current: dict[str, Any] = field(default_factory=dict)  # collection + config search serves from
    standby: dict[str, Any] | None = None  # where a rollback goes
    target: dict[str, Any] | None = None  # the config being built
    documents_total: int = 0
    documents_done: int = 0
    documents_replayed: int = 0
    documents_without_text: int = 0
    without_text: list[str] = field(default_factory=list)  # "tenant/document", first MAX_LISTED
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(generation: IndexGeneration | None) -> dict[str, Any] | None:
    if generation is None:
        return None
    return {"collection": generation.collection, **generation.config.as_dict()}


class Reindexer:
    """Runs at most one re-index at a time in a background thread; start/rollback/status are thread-safe."""

    def __init__(
        self,
        *,
        registry: DocumentRegistry,
        ingest: IngestService,
        index: ActiveIndex,
        make_generation: Callable[[IndexConfig], IndexGeneration],
        alias: str | None = None,
        drain_timeout_seconds: float = 3600.0,
    ) -> None:
        self.registry = registry
        self.ingest = ingest
        self.index = index
        self.make_generation = make_generation
        self.alias = alias
        self.drain_timeout_seconds = drain_timeout_seconds
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._status = ReindexStatus()

    # -- public API ---------------------------------------------------------------------------------------

    def status(self) -> ReindexStatus:
        state = self.index.state
        return replace(self._status, current=_describe(state.current) or {}, standby=_describe(state.shadow))

    def start(self, config: IndexConfig, *, allow_missing: bool = False) -> ReindexStatus:
        """Start building ``config`` in the background; Conflict while another re-index runs."""
        with self._lock:
            if self.running():
                raise Conflict("a re-index is already running; wait for it or check GET /v1/admin/reindex")
            current = self.index.current
            if config == current.config and getattr(current.vectors, "has_sparse", True):
                raise InvalidInput("the index is already built with this model and chunking")
            generation = self.make_generation(config)  # InvalidInput for a model that cannot be loaded
            self._stop.clear()
            self._set(ReindexStatus(state="building", target=config.as_dict(), started_at=datetime.now(UTC)))
            self._thread = threading.Thread(
                target=self._run, args=(generation, allow_missing), name="reindex", daemon=True
            )
            self._thread.start()
        return self.status()

    def rollback(self) -> ReindexStatus:
        """Serve from the standby generation again (the one before the last switch)."""
        with self._lock:
            if self.running():
                raise Conflict("a re-index is running; roll back after it has switched or failed")
            state = self.index.state
            if state.shadow is None:
                raise InvalidInput("there is no previous index to roll back to")
            self._switch(state.shadow, state.current)
            replayed = self._catch_up(state.shadow)
            self._set(
                replace(
                    self._status,
                    state="rolled_back",
                    documents_replayed=self._status.documents_replayed + replayed,
                    finished_at=datetime.now(UTC),
                )
            )
        return self.status()

    def wait(self, timeout: float | None = None) -> ReindexStatus:
        """Block until the running re-index (if any) has finished; for tests and the CLI's --wait."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    # -- the job ------------------------------------------------------------------------------------------

    def running(self) -> bool:
        """Whether a re-index thread of this process is building or switching."""
        return self._thread is not None and self._thread.is_alive()

    def _set(self, status: ReindexStatus) -> None:
        self._status = status
        REINDEX_STATE.set(1 if status.state in ("building", "catching_up", "switching") else 0)
        REINDEX_DOCUMENTS.labels(state="total").set(status.documents_total)
        REINDEX_DOCUMENTS.labels(state="done").set(status.documents_done)
        REINDEX_DOCUMENTS.labels(state="replayed").set(status.documents_replayed)
        REINDEX_DOCUMENTS.labels(state="without_text").set(status.documents_without_text)

    def _run(self, target: IndexGeneration, allow_missing: bool) -> None:
        try:
            target.vectors.ensure_collection()
            previous = self.index.state
            self.index.set(IndexState(current=previous.current, shadow=target))
            if not self.index.wait_for_unshadowed_writes(self.drain_timeout_seconds):
                raise RuntimeError("writes that started before the re-index did not finish in time")
            self._build(target)
            if self._status.documents_without_text and not allow_missing:
                raise InvalidInput(
                    f"{self._status.documents_without_text} documents have no kept text (written before "
                    "texts were kept); re-send them, or re-index with allow_missing to switch without them"
                )
            self._set(replace(self._status, state="catching_up"))
            replayed = self._catch_up(target)
            self._set(replace(self._status, state="switching", documents_replayed=replayed))
            with self._lock:
                self._switch(target, self.index.current)
            replayed += self._catch_up(target)
            self._set(
                replace(
                    self._status, state="switched", documents_replayed=replayed, finished_at=datetime.now(UTC)
                )
            )
            logger.info("re-index switched to %s", target.collection)
        except Exception as exc:
            # Search never moved: drop the shadow (the target collection is kept for a later attempt).
            state = self.index.state
            if state.shadow is target:
                self.index.set(IndexState(current=state.current))
            message = exc.message if isinstance(exc, RagError) else f"{type(exc).__name__}: {exc}"
            logger.error("re-index to %s failed: %s", target.collection, message)
            self._set(replace(self._status, state="failed", error=message, finished_at=datetime.now(UTC)))

    def _sources(self) -> Any:
        after: tuple[str, str] | None = None
        while True:
            kept, missing = self.registry.source_page(after, PAGE)
            if not kept and not missing:
                return
            yield kept, missing
            keys = [(s.record.tenant_id, s.record.document_id) for s in kept]
            keys += [(r.tenant_id, r.document_id) for r in missing]
            after = max(keys)

    def _write(self, target: IndexGeneration, source: DocumentSource) -> None:
        record = source.record
        self.ingest.write_version(
            target,
            record.tenant_id,
            record.document_id,
            record.version,
            source.text,
            record.metadata,
            record.content_hash,
        )

    def _build(self, target: IndexGeneration) -> None:
        total = self.registry.count_documents()
        self._set(replace(self._status, documents_total=total))
        done = without = 0
        listed: list[str] = []
        for kept, missing in self._sources():
            for source in kept:
                if self._stop.is_set():
                    raise RuntimeError("the service is shutting down")
                self._write(target, source)
                done += 1
            without += len(missing)
            listed += [f"{r.tenant_id}/{r.document_id}" for r in missing][: MAX_LISTED - len(listed)]
            self._set(
                replace(
                    self._status,
                    documents_done=done,
                    documents_total=max(total, done + without),
                    documents_without_text=without,
                    without_text=listed,
                )
            )

    def _catch_up(self, target: IndexGeneration) -> int:
        """Write every active version the target lacks, pass after pass until one finds nothing."""
        replayed = 0
        for _ in range(CATCH_UP_PASSES):
            held = {(v.tenant_id, v.document_id, v.version) for v in target.vectors.versions()}
            found = 0
            for kept, _missing in self._sources():
                for source in kept:
                    record = source.record
                    if (record.tenant_id, record.document_id, record.version) not in held:
                        self._write(target, source)
                        found += 1
            replayed += found
            if not found:
                return replayed
        return replayed

    def _switch(self, to: IndexGeneration, standby: IndexGeneration) -> None:
        """Persist the pointer (compare-and-set), move the alias, then swap the process's state."""
        self.registry.switch_index(to.collection, to.config.as_dict(), expected=standby.collection)
        if self.alias:
            to.vectors.set_alias(self.alias)
        self.index.set(IndexState(current=to, shadow=standby))
