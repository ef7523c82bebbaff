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
   from the kept text, until a pass finds nothing (at most CATCH_UP_PASSES). A pass reads every point of the
   target: in the embedded store each scan page runs in native code holding the GIL, so an unpaced pass held
   every other thread (searches, the event loop) for one 4096-point page at a time (docs/benchmarks.md,
   "Re-index scans"). The store scan is paced exactly as the orphan collector's (service.app.store.gc.Pacer,
   PAUSE_RATIO): small pages, and a pause of PAUSE_RATIO times the work between two. Registry pages (I/O and
   bytecode, which hand the GIL over every switch interval) and writes (embedding runs outside the GIL) are not
   paced: a re-index must finish. Nor is a rollback's catch-up, which the admin's request waits for.
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

Several replicas (a rollout starts N pods with the new config, each wanting the same re-index)
------------------------------------------------------------------------------------------------
Only the holder of the registry's **re-index lease** (``index_lease``: holder id, target collection and config,
expiry) builds. A replica takes it with one conditional statement (free, expired, or already its own) and renews
it every third of ``REINDEX_LEASE_SECONDS`` from a heartbeat thread; losing it (a pause longer than the lease, a
takeover) aborts the build before the switch, and the pointer's compare-and-set refuses a stale switch anyway.
The others report ``waiting`` with the ``builder`` and poll: when the pointer reaches the target they are done
(``switched``, by the builder), when the lease expires (the builder died: ``kill -9``, a lost node) one of them
takes it over and builds (upserts are idempotent, so the half-built target is re-used).

Every replica follows the persisted pointer and lease before each search and write (re-read at most every
``INDEX_POINTER_TTL_SECONDS``): it serves the pointer's collection, and while another replica holds the lease it
writes into the lease's target collection as well (its shadow), otherwise into the pointer's previous collection
(the rollback target). So a switch or rollback made by any replica is served by all within the TTL, without a
write. A write that committed in a replica before it saw the lease (at most one TTL after the build started)
lands in the current collection only; the builder's catch-up passes, which compare the target with the
registry, write it into the target. A write in flight in another replica at the very switch is replayed by the
next catch-up (a rollback runs one; so does the next re-index). Workers follow the pointer the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from service.app.core.errors import Conflict, InvalidInput, RagError, ServiceUnavailable
from service.app.core.faults import fault_point
from service.app.core.metrics import REINDEX_DOCUMENTS, REINDEX_INTERRUPTED, REINDEX_STATE
from service.app.ingest.index import ActiveIndex, IndexConfig, IndexGeneration, IndexState
from service.app.ingest.service import IngestService, content_hash
from service.app.store.gc import CollectionStopped, Pacer
from service.app.store.registry import (
    DocumentRecord,
    DocumentRegistry,
    DocumentSource,
    IndexLease,
    IndexPointer,
)

logger = logging.getLogger(__name__)

CATCH_UP_PASSES = 5
PAGE = 200
MAX_LISTED = 20
# Builds of one target that died (kill -9, OOM, a lost node) and were resumed automatically; after this many
# the build is reported ``interrupted`` and waits for an admin: a build that kills its process every time (a
# document that runs it out of memory) must not take every replica down in turn.
MAX_ATTEMPTS = 3

State = Literal[
    "idle",
    "waiting",
    "building",
    "catching_up",
    "switching",
    "switched",
    "failed",
    "rolled_back",
    "interrupted",
]
RUNNING_STATES = frozenset({"waiting", "building", "catching_up", "switching"})
# Who chose the served index (the pointer's ``chosen_by``): the deployed settings, or an operator through the
# admin API (a rollback, a re-index to other settings than the deployed ones).
Chooser = Literal["config", "rollback", "manual"]
# Lease holders of this process's live Reindexers (tests run several "replicas" in one process).
_LIVE_HOLDERS: set[str] = set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def holder_is_dead(holder: str) -> bool:
    """Whether the lease ``holder`` (``host:pid:random``) provably died: it ran on this host and its process is
    gone, or it claims this very process but is none of its Reindexers (a restarted container, where the new
    process often gets the old one's pid). A holder on another host is only dead once its lease expires."""
    host, _, rest = holder.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return holder not in _LIVE_HOLDERS
    return not _pid_alive(pid)


def lease_attempt(lease: IndexLease) -> int:
    """Which attempt at its target the lease's build is (1 unless it resumed an interrupted one)."""
    try:
        return max(1, int(lease.config.get("attempt", 1)))
    except (TypeError, ValueError):
        return 1


def write_from_source(
    registry: DocumentRegistry, ingest: IngestService, target: IndexGeneration, source: DocumentSource
) -> int:
    """Write a document's active version into ``target`` from the text the registry keeps (a re-index's build
    and catch-up, the restore reconciliation); the number of points written."""
    record = source.record
    digest = content_hash(source.text, record.metadata, record.content_type)
    if record.content_hash != digest:
        # Hashed by an earlier release with the old index's config: after the switch an unchanged re-send
        # would not match it (and re-embed). The content is the registry's own, so the new hash is exact.
        registry.rehash(record.tenant_id, record.document_id, record.version, digest)
    return ingest.write_version(
        target,
        record.tenant_id,
        record.document_id,
        record.version,
        source.text,
        record.metadata,
        digest,
    )


def source_pages(
    registry: DocumentRegistry, page: int = PAGE
) -> Iterator[tuple[list[DocumentSource], list[DocumentRecord]]]:
    """Every tenant's active documents, a page at a time: (with kept text, without)."""
    after: tuple[str, str] | None = None
    while True:
        kept, missing = registry.source_page(after, page)
        if not kept and not missing:
            return
        yield kept, missing
        keys = [(s.record.tenant_id, s.record.document_id) for s in kept]
        keys += [(r.tenant_id, r.document_id) for r in missing]
        after = max(keys)


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
    builder: str | None = None  # the replica holding the re-index lease (live), if any
    attempt: int = 0  # 1 for a fresh build, n when it resumes an interrupted one for the (n-1)th time
    resumed_from: str | None = None  # the holder whose interrupted build this one continues
    replica: str = ""  # this replica's lease holder id
    started_at: datetime | None = None
    finished_at: datetime | None = None
    chosen_by: str | None = None  # who chose the served index: config, rollback or manual (the pointer's)
    pinned_settings: dict[str, Any] | None = None  # the deployed settings an operator's choice holds against
    settings: dict[str, Any] | None = None  # this replica's deployed settings (model, chunking)
    startup: str | None = None  # why this replica's start-up did or did not re-index

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(generation: IndexGeneration | None) -> dict[str, Any] | None:
    if generation is None:
        return None
    return {"collection": generation.collection, **generation.config.as_dict()}


def settings_of(config: IndexConfig | dict[str, Any] | None) -> dict[str, Any] | None:
    """The operator's settings of an index config (model and chunking, not the chunker's version)."""
    if config is None:
        return None
    if isinstance(config, dict):
        config = IndexConfig.from_dict(config)
    return {"model": config.model, "chunk_size": config.chunk_size, "chunk_overlap": config.chunk_overlap}


def _text(settings: dict[str, Any] | None) -> str:
    if not settings:
        return "-"
    return f"{settings['model']} chunk {settings['chunk_size']}/{settings['chunk_overlap']}"


def without_text_advice(count: int, listed: list[str]) -> str:
    """Why a re-index cannot include documents written before texts were kept, and what makes it possible."""
    named = ", ".join(listed[:5]) + (", ..." if count > len(listed[:5]) else "")
    return (
        f"{count} documents have no kept text (written by a release before texts were kept: {named}), so no "
        "re-index can rebuild them: re-send each one (PUT /v1/documents/{id} again, or run `python -m "
        "service.client ingest DIR` again: the same content is enough), then re-index again; or "
        'POST /v1/admin/reindex with {"allow_missing": true} to switch without them (they drop out of search '
        "until re-sent)"
    )


def operator_pin(pointer: IndexPointer | None) -> dict[str, Any] | None:
    """The deployed settings an operator's choice of the served index holds against (None: the configuration
    chose it, or the pointer predates migration 0009)."""
    if pointer is None or pointer.chosen_by == "config" or not pointer.pinned_settings:
        return None
    try:
        return settings_of(pointer.pinned_settings)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class StartupDecision:
    """Whether a start-up re-indexes towards its settings, and the log line that says why."""

    reindex: bool
    reason: str
    follow_settings: bool = False  # the settings now name the operator's choice: it becomes the config's


def startup_decision(
    pointer: IndexPointer | None, served: IndexConfig, wanted: IndexConfig, *, needs_sparse: bool = False
) -> StartupDecision:
    """Re-index at start-up only when the DEPLOYED settings changed since the served index was chosen.

    - The served index has the settings: nothing to do (a served index without sparse vectors is rebuilt with
      the same settings). If an operator had chosen it, the settings now agree: the pin is dropped, so a later
      change of the settings to what was rolled back from re-indexes again.
    - An operator chose the served index (``ragops reindex rollback``, a ``reindex start`` to other settings)
      while the deployed settings were ``pinned_settings``: as long as they still are, every start-up (a
      restart, an HPA scale-out, a node drain) keeps serving the operator's choice instead of undoing it.
    - The configuration chose the served index, replacing one with these very settings (the pointer's
      ``previous``): this is a pod of the release a rollout is replacing (a scale-out or a restart mid-rollout)
      or the stack's settings were reverted, which a pod cannot tell apart. Not re-indexing back keeps a
      rollout's old pods from moving every replica to the old settings; a revert is applied by ``ragops up``
      (it converges the index after the rollout) or ``ragops reindex rollback`` (the standby has them).
    - Otherwise (the configuration chose the served index, or the settings changed since the operator's pin):
      re-index towards the settings.
    """
    pin = operator_pin(pointer)
    served_text = _text(settings_of(served))
    wanted_text = _text(settings_of(wanted))
    if served.same_settings(wanted):
        if needs_sparse:
            return StartupDecision(
                True, f"the served index ({served_text}) has no sparse vectors: re-indexing"
            )
        if pin is not None:
            assert pointer is not None
            return StartupDecision(
                False,
                f"the deployed settings ({wanted_text}) now match the index an operator chose "
                f"({pointer.chosen_by}); it follows the settings from now on",
                follow_settings=True,
            )
        return StartupDecision(False, f"the served index has the deployed settings ({wanted_text})")
    if pin is not None and pin == settings_of(wanted):
        assert pointer is not None
        when = pointer.updated_at.isoformat() if pointer.updated_at else "earlier"
        return StartupDecision(
            False,
            f"not re-indexing: an operator chose the served index ({served_text}, {pointer.chosen_by} at {when}) "
            f"while the deployed settings were {wanted_text}, and they have not changed since; it is served "
            "until the stack's settings change (to follow the settings now: `ragops reindex start` with them, "
            "or `ragops reindex rollback` if they are the standby's)",
        )
    if (
        pin is None
        and pointer is not None
        and pointer.previous_config
        and settings_of(pointer.previous_config) == settings_of(wanted)
    ):
        return StartupDecision(
            False,
            f"not re-indexing: the deployed settings ({wanted_text}) are those the served index ({served_text}) "
            "replaced: a pod of the release a rollout is replacing, or a revert of the stack's settings. A revert "
            "is applied by `ragops up` (it converges the index) or `ragops reindex rollback` (the standby has "
            "these settings), not by each pod start",
        )
    if pin is not None:
        return StartupDecision(
            True,
            f"the deployed settings changed ({_text(pin)} when an operator chose the served index by "
            f"{pointer.chosen_by if pointer else '?'}, now {wanted_text}): re-indexing from {served_text}"
            + (", adding sparse vectors" if needs_sparse else ""),
        )
    return StartupDecision(
        True,
        f"index config changed ({served_text} -> {wanted_text}"
        + (", adding sparse vectors" if needs_sparse else "")
        + "): re-indexing",
    )


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
        lease_seconds: float = 30.0,
        pointer_ttl_seconds: float = 1.0,
        holder: str | None = None,
        settings_config: IndexConfig | None = None,
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
        self.lease_seconds = lease_seconds
        self.pointer_ttl_seconds = pointer_ttl_seconds
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._building = False  # this process holds the lease and its thread owns the index state
        self._lease_lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._sync_lock = threading.Lock()
        self._synced_at = float("-inf")
        self._builder: str | None = None
        # An expired (or provably dead) lease whose target never became the pointer: a build that died.
        self._abandoned: IndexLease | None = None
        self._serving: str | None = None  # the pointer's collection at the last follow
        # Set by build_services in the API process: resume such a build (one attempt per lease per process).
        self.resume_interrupted = False
        self._resume_tried: set[tuple[str, str, int]] = set()
        self._queued = False  # the running start was automatic (start-up, a resume): it may give up
        # The deployed settings of this process (None: unknown, every choice counts as the configuration's).
        self.settings_config = settings_config
        self._pointer: IndexPointer | None = None  # the pointer at the last follow
        self._origin: tuple[Chooser, dict[str, Any] | None] = ("config", None)  # the running build's chooser
        self.startup: str | None = None  # why this replica's start-up did or did not re-index
        _LIVE_HOLDERS.add(self.holder)

    # -- public API ---------------------------------------------------------------------------------------

    def attention(self) -> str | None:
        """Why the served index does not have the deployed settings although start-up wanted them (a re-index
        to them failed or could not start), with what to do; None when there is nothing to act on."""
        if self.settings_config is None or self.running():
            return None
        served = self.index.current
        if served.config.same_settings(self.settings_config):
            return None
        wanted = _text(settings_of(self.settings_config))
        status = self.status()
        if (
            status.state == "failed"
            and status.target
            and settings_of(status.target) == settings_of(self.settings_config)
        ):
            return (
                f"the served index ({_text(settings_of(served.config))}) does not have the deployed settings "
                f"({wanted}): the re-index to them failed: {status.error}"
            )
        if self.startup and "cannot re-index" in self.startup:
            return f"the served index does not have the deployed settings ({wanted}): {self.startup}"
        return None

    def status(self) -> ReindexStatus:
        self.sync()
        state = self.index.state
        status = replace(
            self._status,
            current=_describe(state.current) or {},
            standby=_describe(state.shadow),
            builder=self.holder if self._building else self._builder,
            replica=self.holder,
            chosen_by=self._pointer.chosen_by if self._pointer is not None else None,
            pinned_settings=operator_pin(self._pointer),
            settings=settings_of(self.settings_config),
            startup=self.startup,
        )
        if not self.running() and self._builder is not None and self._builder != self.holder:
            status = replace(status, state="building")  # another replica builds: its progress is there
        abandoned = self._abandoned
        if (
            abandoned is not None
            and not self.running()
            and self._builder is None
            and status.state not in ("failed", *RUNNING_STATES)
        ):
            if self.resume_interrupted and lease_attempt(abandoned) < MAX_ATTEMPTS:
                # This replica is about to take the dead builder's lease: report the wait, not a halt.
                return replace(status, state="waiting", resumed_from=abandoned.holder)
            status = replace(
                status,
                state="interrupted",
                target={
                    "collection": abandoned.collection,
                    **IndexConfig.from_dict(abandoned.config).as_dict(),
                },
                error=self._interruption(abandoned),
                attempt=lease_attempt(abandoned),
                finished_at=abandoned.expires_at,
            )
        return status

    def _interruption(self, lease: IndexLease) -> str:
        """What an interrupted build's status says: who died, what is served, what an admin can do."""
        attempt = lease_attempt(lease)
        text = (
            f"the re-index to {lease.collection} by {lease.holder} stopped before it switched (attempt {attempt}: "
            f"the process died or lost the registry; its lease expired at {lease.expires_at.isoformat()}); "
            f"search still serves {self._serving or self.index.current.collection}. "
        )
        if self.resume_interrupted and attempt < MAX_ATTEMPTS:
            return text + "It resumes here into the same collection."
        if attempt >= MAX_ATTEMPTS:
            text += (
                f"It is not resumed automatically after {attempt} interrupted attempts (does the build run the "
                "process out of memory?). "
            )
        return text + (
            "POST /v1/admin/reindex with the same settings (`ragops reindex start`) resumes it into the same "
            "collection; a re-index to other settings replaces it and drops its collection."
        )

    def sync(self, *, force: bool = False) -> None:
        """Follow the persisted pointer and lease: serve the pointer's collection, dual-write into the target
        another replica builds (else into the rollback target). Re-read at most every ``pointer_ttl_seconds``.

        A registry outage keeps the state this process has (searches go on; writes fail on the registry).
        """
        if not force and time.monotonic() - self._synced_at < self.pointer_ttl_seconds:
            return
        # While another thread re-reads the pointer, a search or write goes on with what this process serves
        # (it would have, a moment earlier) instead of queueing behind that read: a registry host that stopped
        # answering holds it up to DATABASE_TCP_TIMEOUT_SECONDS. A forced sync waits for it.
        if not self._sync_lock.acquire(blocking=force):
            return
        try:
            if not force and time.monotonic() - self._synced_at < self.pointer_ttl_seconds:
                return
            try:
                self._sync()
            except RagError as exc:
                # A registry outage, or a generation this process cannot make (a model missing in this image):
                # keep serving what it serves rather than fail the search or write that asked.
                logger.warning("cannot follow the index pointer: %s", exc.message)
                return
            self._synced_at = time.monotonic()
        finally:
            self._sync_lock.release()
        self._maybe_resume()

    def _sync(self) -> None:
        pointer = self.registry.index_pointer()
        lease = self.registry.index_lease()
        self._observe(pointer, lease)
        live = (
            lease
            if lease is not None
            and lease.live()
            and (lease.holder == self.holder or not holder_is_dead(lease.holder))
            else None
        )
        self._builder = live.holder if live is not None else None
        if self._building or pointer is None:
            return  # this process builds and switches itself
        state = self.index.state
        held = {g.collection: g for g in (state.current, state.shadow) if g is not None}

        def generation(collection: str, config: dict[str, Any]) -> IndexGeneration:
            found = held.get(collection)
            if found is not None:
                return found
            made = self.make_generation(IndexConfig.from_dict(config), collection)
            made.vectors.ensure_collection()
            return made

        current = generation(pointer.collection, pointer.config)
        shadow: IndexGeneration | None = None
        if live is not None and live.holder != self.holder and live.collection != pointer.collection:
            try:
                shadow = generation(live.collection, live.config)
            except InvalidInput as exc:
                # The builder's catch-up passes still bring this replica's writes into its target.
                logger.warning(
                    "cannot dual-write into the re-index target %s: %s", live.collection, exc.message
                )
        if shadow is None and pointer.previous_collection and pointer.previous_config:
            shadow = generation(pointer.previous_collection, pointer.previous_config)
        if current is state.current and shadow is state.shadow:
            return
        if current is not state.current:
            logger.info("following the index pointer to %s", current.collection)
        self.index.set(IndexState(current=current, shadow=shadow))

    def _observe(self, pointer: IndexPointer | None, lease: IndexLease | None) -> None:
        """Note a build that died: a lease left behind (expired, or its holder provably dead) whose target the
        pointer never reached. A finished or failed build releases its lease, so only a dead one leaves it."""
        self._serving = pointer.collection if pointer is not None else None
        self._pointer = pointer
        abandoned = None
        if (
            lease is not None
            and lease.holder != self.holder
            and pointer is not None
            and lease.collection != pointer.collection
            and (not lease.live() or holder_is_dead(lease.holder))
        ):
            abandoned = lease
        if abandoned is not None and (self._abandoned is None or self._abandoned.holder != abandoned.holder):
            logger.warning(
                "the re-index to %s by %s was interrupted before it switched (attempt %d)",
                abandoned.collection,
                abandoned.holder,
                lease_attempt(abandoned),
            )
        self._abandoned = abandoned
        REINDEX_INTERRUPTED.set(1 if abandoned is not None else 0)

    def _maybe_resume(self) -> None:
        """In the API process: resume an interrupted build (in a thread: a follow runs under searches)."""
        abandoned = self._abandoned
        if abandoned is None or not self.resume_interrupted or self.running():
            return
        key = (abandoned.holder, abandoned.collection, lease_attempt(abandoned))
        if key in self._resume_tried or lease_attempt(abandoned) >= MAX_ATTEMPTS:
            return
        self._resume_tried.add(key)
        threading.Thread(target=self._resume, args=(abandoned,), name="reindex-resume", daemon=True).start()

    def _resume(self, lease: IndexLease) -> None:
        try:
            chosen_by = lease.config.get("chosen_by")
            self.start(
                IndexConfig.from_dict(lease.config),
                allow_missing=bool(lease.config.get("allow_missing", False)),
                queue=True,
                collection=lease.collection,
                origin=(chosen_by, lease.config.get("pinned_settings"))
                if chosen_by in ("config", "manual", "rollback")
                else None,
            )
        except RagError as exc:
            logger.error("cannot resume the interrupted re-index to %s: %s", lease.collection, exc.message)
            self._set(
                ReindexStatus(
                    state="failed",
                    target={"collection": lease.collection, **IndexConfig.from_dict(lease.config).as_dict()},
                    error=f"the interrupted re-index to {lease.collection} cannot be resumed here: {exc.message}",
                    resumed_from=lease.holder,
                    finished_at=datetime.now(UTC),
                )
            )
        except Exception:
            logger.exception("cannot resume the interrupted re-index to %s", lease.collection)

    def chooser(self, config: IndexConfig, operator: Chooser) -> tuple[Chooser, dict[str, Any] | None]:
        """Who chooses an index of ``config``: the configuration when it has this replica's deployed settings
        (or they are unknown), else ``operator``, pinned to the deployed settings."""
        if self.settings_config is None or config.same_settings(self.settings_config):
            return "config", None
        return operator, settings_of(self.settings_config)

    def start(
        self,
        config: IndexConfig,
        *,
        allow_missing: bool = False,
        queue: bool = False,
        collection: str | None = None,
        origin: tuple[Chooser, dict[str, Any] | None] | None = None,
    ) -> ReindexStatus:
        """Start building ``config`` in the background; Conflict while another re-index runs.

        ``queue``: when another replica holds the lease, wait for it (and take over if it dies) instead of
        Conflict: what start-up does, so N pods of a rollout with the new config build it once. Such an
        automatic start gives up on a target whose build died MAX_ATTEMPTS times (``interrupted``).
        ``collection``: build into this collection (an interrupted build's) instead of the config's own.
        A target an interrupted build left half-built is built on (upserts are idempotent), as its next attempt.
        ``origin``: who chooses the index the build switches to (the pointer's ``chosen_by`` and
        ``pinned_settings``); by default the configuration when ``config`` has the deployed settings, else
        ``manual`` (an operator's choice, which start-ups honour until the deployed settings change).
        """
        with self._lock:
            if self.running():
                raise Conflict("a re-index is already running; wait for it or check GET /v1/admin/reindex")
            self.sync(force=True)
            if not queue and self._builder is not None and self._builder != self.holder:
                raise Conflict(
                    f"replica {self._builder} is re-indexing; wait for it or check GET /v1/admin/reindex"
                )
            current = self.index.current
            if config == current.config and getattr(current.vectors, "has_sparse", True):
                raise InvalidInput(
                    "the index is already built with this model and chunking (and this release's chunker)"
                )
            # InvalidInput for a model that cannot be loaded
            generation = (
                self.make_generation(config, collection) if collection else self.make_generation(config)
            )
            abandoned = self._abandoned
            attempt, resumed_from = 1, None
            if abandoned is not None and abandoned.collection == generation.collection:
                attempt, resumed_from = lease_attempt(abandoned) + 1, abandoned.holder
                if queue and attempt > MAX_ATTEMPTS:
                    logger.error("%s", self._interruption(abandoned))
                    return self.status()
                logger.warning(
                    "resuming the interrupted re-index to %s (attempt %d, after %s)",
                    generation.collection,
                    attempt,
                    abandoned.holder,
                )
            elif abandoned is not None:
                logger.warning(
                    "the interrupted re-index to %s is replaced by one to %s",
                    abandoned.collection,
                    generation.collection,
                )
            self._stop.clear()
            self._queued = queue
            self._origin = origin if origin is not None else self.chooser(config, "manual")
            self._set(
                ReindexStatus(
                    state="building",
                    target=config.as_dict(),
                    attempt=attempt,
                    resumed_from=resumed_from,
                    started_at=datetime.now(UTC),
                )
            )
            # The chooser travels with the lease: whoever resumes a dead build switches with the same one.
            extra = {
                "attempt": attempt,
                "allow_missing": allow_missing,
                "chosen_by": self._origin[0],
                "pinned_settings": self._origin[1],
            }
            self._thread = threading.Thread(
                target=self._run, args=(generation, allow_missing, extra), name="reindex", daemon=True
            )
            self._thread.start()
        return self.status()

    def rollback(self) -> ReindexStatus:
        """Serve from the standby generation again (the one before the last switch)."""
        with self._lock:
            if self.running():
                raise Conflict("a re-index is running; roll back after it has switched or failed")
            self.sync(force=True)
            if self._builder is not None and self._builder != self.holder:
                raise Conflict(
                    f"replica {self._builder} is re-indexing; roll back after it has switched or failed"
                )
            state = self.index.state
            if state.shadow is None:
                raise InvalidInput("there is no previous index to roll back to")
            chosen_by, pinned = self.chooser(state.shadow.config, "rollback")
            self._switch(state.shadow, state.current, chosen_by=chosen_by, pinned=pinned)
            if chosen_by != "config":
                logger.warning(
                    "rolled back to %s (%s) while the deployed settings are %s: every start-up keeps serving it "
                    "until the stack's settings change",
                    state.shadow.collection,
                    _text(settings_of(state.shadow.config)),
                    _text(pinned),
                )
            # Unpaced: the admin's request waits for this pass, and a paced one at 100k points on a loaded
            # machine (~70 s measured) would outlast the CLI's 60 s timeout; a rollback is rare and short.
            replayed = self._catch_up(state.shadow, paced=False)
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
        _LIVE_HOLDERS.discard(self.holder)
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

    def _run(self, target: IndexGeneration, allow_missing: bool, extra: dict[str, Any]) -> None:
        heartbeat: threading.Thread | None = None
        try:
            try:
                if not self._lease(target, extra):
                    return  # another replica built it and switched
            except Exception as exc:  # shutting down while waiting for another replica's lease
                message = exc.message if isinstance(exc, RagError) else f"{type(exc).__name__}: {exc}"
                self._set(replace(self._status, state="failed", error=message, finished_at=datetime.now(UTC)))
                return
            heartbeat = threading.Thread(target=self._heartbeat, name="reindex-lease", daemon=True)
            heartbeat.start()
            self._build_and_switch(target, allow_missing)
        finally:
            if self._building:
                with self._sync_lock:
                    self._building = False
                self._stop_heartbeat.set()
                if heartbeat is not None:
                    heartbeat.join()
                with contextlib.suppress(ServiceUnavailable):  # else it expires on its own
                    self.registry.release_index_lease(self.holder)
                self._synced_at = float("-inf")

    def _lease(self, target: IndexGeneration, extra: dict[str, Any]) -> bool:
        """Take the re-index lease, waiting while a live replica holds it; False when that one switched to
        ``target`` meanwhile (nothing left to build), or when its build died too often (``interrupted``).

        The lease carries the attempt (taking over a dead builder's lease of the same target is the next
        attempt) and ``allow_missing``, so whoever resumes the build knows both.
        """
        attempt = int(extra.get("attempt", 1))
        start_pointer = self._pointer
        while True:
            try:
                pointer = self.registry.index_pointer()
                if pointer is not None and pointer.collection == target.collection:
                    self.sync(force=True)
                    self._set(replace(self._status, state="switched", finished_at=datetime.now(UTC)))
                    return False
                given_up = self._superseded(pointer, target, start_pointer)
                if given_up is not None:
                    logger.warning("%s", given_up)
                    self.startup = given_up
                    self.sync(force=True)
                    self._set(replace(self._status, state="idle", finished_at=datetime.now(UTC)))
                    return False
                held = self.registry.index_lease()
                dead = None
                if held is not None and held.holder != self.holder and holder_is_dead(held.holder):
                    dead = held.holder  # a predecessor on this host: no need to wait out its lease
                if (
                    held is not None
                    and held.holder != self.holder
                    and held.collection == target.collection
                    and (dead is not None or not held.live())
                ):
                    attempt = max(attempt, lease_attempt(held) + 1)
                    self._set(replace(self._status, resumed_from=held.holder))
                    if self._queued and attempt > MAX_ATTEMPTS:
                        self._abandoned = held
                        self._set(replace(self._status, state="idle"))  # status() says interrupted
                        logger.error("%s", self._interruption(held))
                        return False
                config = {**target.config.as_dict(), **extra, "attempt": attempt}
                lease = self.registry.acquire_index_lease(
                    self.holder, target.collection, config, self.lease_seconds, take_from=dead
                )
            except ServiceUnavailable as exc:
                logger.warning("re-index lease: %s", exc.message)
                lease = None
            if lease is not None and lease.holder == self.holder:
                if (
                    held is not None
                    and held.holder != self.holder
                    and held.collection != target.collection
                    and (dead is not None or not held.live())
                ):
                    self._reclaim(held.collection, f"the target of {held.holder}'s interrupted re-index")
                self._lease_lost.clear()
                self._stop_heartbeat = threading.Event()
                with self._sync_lock:  # no follow of the pointer is half-way when this thread owns the state
                    self._building = True
                self._set(
                    replace(self._status, state="building", builder=self.holder, error=None, attempt=attempt)
                )
                logger.info(
                    "re-index lease taken by %s for %s (attempt %d)", self.holder, target.collection, attempt
                )
                return True
            if lease is not None:
                self._set(replace(self._status, state="waiting", builder=lease.holder))
                self.sync(force=True)  # dual-write into the builder's target
            if self._stop.wait(max(self.lease_seconds / 3, 0.05)):
                raise RuntimeError("the service is shutting down")

    def _superseded(
        self, pointer: IndexPointer | None, target: IndexGeneration, at_start: IndexPointer | None
    ) -> str | None:
        """Why an automatic start-up re-index gives up before it takes the lease (None: it goes on).

        The start-up decision is taken again whenever the pointer moved while this replica waited for another
        one's build: an operator's rollback meanwhile holds as it would at start-up, and a newer index that
        replaced this target's settings is not built back.
        """
        if not self._queued or self._origin[0] != "config" or pointer is None:
            return None
        if at_start is not None and (at_start.collection, at_start.chosen_by) == (
            pointer.collection,
            pointer.chosen_by,
        ):
            return None
        decision = startup_decision(pointer, IndexConfig.from_dict(pointer.config), target.config)
        if decision.reindex:
            return None
        return f"while this replica waited to re-index to {target.collection}, the pointer moved: {decision.reason}"

    def _heartbeat(self) -> None:
        """Renew the lease every third of its length; a lost lease stops the build before it switches."""
        while not self._stop_heartbeat.wait(self.lease_seconds / 3):
            try:
                if not self.registry.renew_index_lease(self.holder, self.lease_seconds):
                    logger.error("re-index lease of %s was taken over; abandoning the build", self.holder)
                    self._lease_lost.set()
                    return
            except ServiceUnavailable as exc:
                logger.warning("cannot renew the re-index lease: %s", exc.message)

    def _check(self) -> None:
        if self._stop.is_set():
            raise RuntimeError("the service is shutting down")
        if self._building and self._lease_lost.is_set():
            raise RuntimeError("the re-index lease was lost (renewal failed for longer than the lease)")

    def _build_and_switch(self, target: IndexGeneration, allow_missing: bool) -> None:
        try:
            target.vectors.ensure_collection()
            previous = self.index.state
            self.index.set(IndexState(current=previous.current, shadow=target))
            if not self.index.wait_for_unshadowed_writes(self.drain_timeout_seconds):
                raise RuntimeError("writes that started before the re-index did not finish in time")
            self._build(target)
            if self._status.documents_without_text and not allow_missing:
                raise InvalidInput(
                    without_text_advice(self._status.documents_without_text, self._status.without_text)
                )
            self._set(replace(self._status, state="catching_up"))
            replayed = self._catch_up(target)
            self._set(replace(self._status, state="switching", documents_replayed=replayed))
            self._check()
            if not self.registry.renew_index_lease(self.holder, self.lease_seconds):
                self._lease_lost.set()
                self._check()
            before = self.registry.index_pointer()
            with self._lock:
                chosen_by, pinned = self._origin
                self._switch(target, self.index.current, chosen_by=chosen_by, pinned=pinned)
            replayed += self._catch_up(target)
            if before is not None and before.previous_collection:
                self._reclaim(before.previous_collection, "the standby this switch replaced")
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

    def _reclaim(self, collection: str, why: str) -> None:
        """Delete a collection nothing names any more (not the pointer's two, not a live lease's target), so
        neither a replaced standby nor an abandoned build's target keeps its disk space forever."""
        drop = getattr(self.make_generation, "drop", None)
        if drop is None:
            return
        try:
            pointer = self.registry.index_pointer()
            named = {pointer.collection, pointer.previous_collection} if pointer is not None else set()
            lease = self.registry.index_lease()
            if lease is not None and lease.holder != self.holder and lease.live():
                named.add(lease.collection)
            if collection in named or collection in (self.index.current.collection, None):
                return
            if drop(collection):
                logger.info("dropped collection %s (%s)", collection, why)
        except Exception as exc:  # a store or registry outage: the collection stays, nothing else changes
            logger.warning("cannot drop collection %s (%s): %s", collection, why, exc)

    def _pacer(self) -> Pacer | None:
        """Paces a catch-up pass's scans (the orphan collector's pacer; stopped at once by shutdown)."""
        return Pacer(stop=self._stop)

    def _sources(self) -> Any:
        return source_pages(self.registry)

    def _write(self, target: IndexGeneration, source: DocumentSource) -> None:
        write_from_source(self.registry, self.ingest, target, source)

    def _build(self, target: IndexGeneration) -> None:
        total = self.registry.count_documents()
        self._set(replace(self._status, documents_total=total))
        done = without = 0
        listed: list[str] = []
        for kept, missing in self._sources():
            for source in kept:
                self._check()
                self._write(target, source)
                done += 1
                if done == 2:
                    fault_point("reindex_build")
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

    def _catch_up(self, target: IndexGeneration, *, paced: bool = True) -> int:
        """Write every active version the target lacks, pass after pass until one finds nothing.

        The store scan is paced (an embedded store calls the pacer between its pages) unless ``paced`` is False.
        The registry pages are not: reading them is I/O or bytecode, which hands the GIL over every switch
        interval."""
        replayed = 0
        fault_point("reindex_catch_up")
        try:
            for _ in range(CATCH_UP_PASSES):
                pacer = self._pacer() if paced else None
                held = {(v.tenant_id, v.document_id, v.version) for v in target.vectors.versions(pause=pacer)}
                found = 0
                for kept, _missing in self._sources():
                    for source in kept:
                        self._check()
                        record = source.record
                        if (record.tenant_id, record.document_id, record.version) not in held:
                            self._write(target, source)
                            found += 1
                replayed += found
                if not found:
                    return replayed
        except CollectionStopped:
            raise RuntimeError("the service is shutting down") from None
        return replayed

    def _switch(
        self,
        to: IndexGeneration,
        standby: IndexGeneration,
        *,
        chosen_by: Chooser = "config",
        pinned: dict[str, Any] | None = None,
    ) -> None:
        """Persist the pointer (compare-and-set, with who chose it), move the alias, then swap the process's
        state."""
        with self._sync_lock:  # a follow that read the pointer before this switch cannot undo it
            self._pointer = self.registry.switch_index(
                to.collection,
                to.config.as_dict(),
                expected=standby.collection,
                chosen_by=chosen_by,
                pinned_settings=pinned,
            )
            if self.alias:
                to.vectors.set_alias(self.alias)
            self.index.set(IndexState(current=to, shadow=standby))
        try:
            # Counts of collections no replica serves or rolls back to any more (an earlier standby, a target
            # that was replaced); the two named keep theirs.
            self.registry.forget_chunk_counts({to.collection, standby.collection})
        except ServiceUnavailable as exc:
            logger.warning("old chunk counts are left for the next switch: %s", exc.message)
