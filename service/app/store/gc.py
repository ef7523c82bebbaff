"""Orphan collector: removes vector points that no registry row makes visible and no write can still publish.

Points become orphans when a process dies between its upsert and its registry commit, between a commit and the
clean-up of the old version, or when a clean-up fails (vector store down, disk full). Search already ignores
them (service.app.search.service), but they cost space and search round trips, so they are collected:

- a version lower than the document's active version is garbage (a writer of it can no longer win its
  compare-and-set), exactly what a successful write would have deleted itself;
- any other inactive version (document deleted, or never activated) is garbage once it is older than
  GC_GRACE_SECONDS: versions are start times in microseconds (service.app.ingest.service.new_version), and a
  write older than the grace refuses to commit, so no in-flight write can lose its points to the collector.

It runs at start-up and every GC_INTERVAL_SECONDS in the API process (several replicas collecting at once is
harmless: deletes are idempotent), removes at most GC_MAX_VERSIONS versions per run, and counts the points it
removed in rag_orphan_points_removed_total.

It runs beside the searches it must not slow down: in the embedded store a scan of every point runs in native
code that holds the GIL (at 100k points the unsliced start-up pass held every other thread, the event loop
included, for most of a second; docs/benchmarks.md, "Orphan collector at start-up"). So a pass works in slices
(store pages of VERSIONS_PAGE points, registry batches of REGISTRY_BATCH versions) and, between two slices, a
``Pacer`` sleeps PAUSE_RATIO times as long as the slice took: no slice holds the GIL longer than one page,
and the collector takes at most 1/(1 + PAUSE_RATIO) of the process while it runs. The price is wall time
(a pass at 100k takes a few seconds instead of one), which nothing waits for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.app.core.metrics import ORPHAN_COLLECTIONS, ORPHANS_REMOVED
from service.app.store.registry import DocumentRegistry
from service.app.store.vectors import PointVersion, VectorStore

logger = logging.getLogger(__name__)

REGISTRY_BATCH = 500
PAUSE_RATIO = 9.0  # idle time per unit of work between two slices of a pass: the collector takes <= 10 %
MIN_PAUSE_SECONDS = 0.001


class CollectionStopped(Exception):
    """The pass was stopped between two slices (the service is shutting down); what it removed stays removed."""


class Pacer:
    """Called between two slices of a pass: sleeps ``ratio`` times the time since the last call (at least
    ``minimum``), which releases the GIL to the searches and the event loop. Once ``stop`` is set it raises
    CollectionStopped instead (at once, also mid-sleep): a paced pass is long, and shutdown must not wait for it.
    """

    def __init__(
        self,
        ratio: float = PAUSE_RATIO,
        minimum: float = MIN_PAUSE_SECONDS,
        stop: threading.Event | None = None,
    ) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self.stop = stop or threading.Event()
        self.slices = 0
        self._mark = time.perf_counter()

    def __call__(self) -> None:
        worked = time.perf_counter() - self._mark
        self.slices += 1
        if self.stop.wait(max(self.minimum, worked * self.ratio)):
            raise CollectionStopped
        self._mark = time.perf_counter()


@dataclass(frozen=True)
class GcReport:
    """What one collection run saw and removed."""

    versions_seen: int
    versions_removed: int
    points_removed: int


def now_version() -> int:
    """The current time on the version clock (microseconds since the epoch)."""
    return time.time_ns() // 1000


def is_orphan(version: PointVersion, active: int | None, *, now: int, grace_seconds: float) -> bool:
    """Whether the points of ``version`` can be removed, given the document's active version (None: no row)."""
    if active == version.version:
        return False
    if active is not None and version.version < active:
        return True
    return version.version < now - int(grace_seconds * 1_000_000)


def collect_orphans(
    registry: DocumentRegistry,
    vectors: VectorStore,
    *,
    grace_seconds: float,
    max_versions: int = 10_000,
    pause: Callable[[], None] | None = None,
    dry_run: bool = False,
    tenant_id: str | None = None,
    on_orphan: Callable[[PointVersion], None] | None = None,
    on_pending: Callable[[PointVersion], None] | None = None,
) -> GcReport:
    """One bounded collection run (blocking; call it from a thread), paced by ``pause`` between its slices
    (default: a new ``Pacer``).

    ``dry_run`` finds the orphans without deleting them (the counts are what a real run would remove);
    ``tenant_id`` limits the run to one tenant; ``on_orphan`` sees every orphan version found (the restore
    reconciliation reports them per tenant, service.app.jobs.reconcile); ``on_pending`` sees every version that is
    not active, not older than the active one, and written less than ``grace_seconds`` ago (kept by this run,
    removed by a later one once the grace has passed: a write in flight, or a document deleted within the grace
    of its last write)."""
    pause = pause if pause is not None else Pacer()
    # The clock is read before the scan: a version first seen late in a long, paced pass is judged against the
    # start, which only makes the grace longer (a live write's points are never at risk).
    now = now_version()
    stored = vectors.versions(pause=pause)
    removed_versions = removed_points = 0
    for start in range(0, len(stored), REGISTRY_BATCH):
        if start:
            pause()
        batch = stored[start : start + REGISTRY_BATCH]
        active = registry.active_version_pairs((v.tenant_id, v.document_id) for v in batch)
        for version in batch:
            if removed_versions >= max_versions:
                break
            if tenant_id is not None and version.tenant_id != tenant_id:
                continue
            if is_orphan(
                version,
                active.get((version.tenant_id, version.document_id)),
                now=now,
                grace_seconds=grace_seconds,
            ):
                if not dry_run:
                    vectors.delete_version(version.tenant_id, version.document_id, version.version)
                    ORPHANS_REMOVED.inc(version.points)
                removed_versions += 1
                removed_points += version.points
                if on_orphan is not None:
                    on_orphan(version)
            elif (
                on_pending is not None
                and active.get((version.tenant_id, version.document_id)) != version.version
            ):
                on_pending(version)
    report = GcReport(len(stored), removed_versions, removed_points)
    if dry_run:
        return report
    ORPHAN_COLLECTIONS.inc()
    if removed_versions:
        logger.info(
            "orphan points removed",
            extra={"versions": removed_versions, "points": removed_points, "seen": len(stored)},
        )
    return report
