"""Restore reconciliation: make the vector store agree with the registry again after one of them was restored.

A Qdrant snapshot taken at T and a registry from another moment (its own backup, point-in-time recovery, or the
live database) disagree in two ways, and both are fixed per collection the service serves (the current index
and its standby, which also takes every write), reported per tenant:

- **orphan points**: points of a document version the registry does not hold active (a document deleted or
  replaced after T, or written after the registry's moment). They are the orphan collector's case exactly
  (service.app.store.gc: versions below the active one at once, others once older than GC_GRACE_SECONDS, so a
  write in flight keeps its points), and are removed by it, unbounded.
- **missing points**: a document the registry holds active whose active version has no points (written after
  T), or fewer than its kept text makes (a write cut off between two upsert batches). It is written again from
  the text the registry keeps, as a re-index's catch-up does (service.app.jobs.reindex.write_from_source). A
  document without kept text (written before migration 0003) cannot be rebuilt here: it is reported with its
  id, for its client to send again.

Safe while the service serves: deletes are the collector's (idempotent, grace-protected); a rewrite is an
idempotent upsert of the registry's own active version. A write racing the pass can at worst leave the points
of a version it has just replaced, which search ignores (it judges every hit against the registry) and the
collector removes. Idempotent: a second run finds nothing to do; a run killed at any point (``kill -9``) leaves
each document either untouched or rewritten, and the next run finishes the rest.

Run it where the service runs, with the service's settings: ``python -m service.reconcile`` (a Job or
``kubectl exec`` into a worker or API pod; docs/runbooks.md "Restore from a snapshot"), or ``--dry-run`` to only
report.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.app.core.faults import fault_point
from service.app.ingest.index import IndexGeneration
from service.app.ingest.service import IngestService
from service.app.jobs.reindex import source_pages, write_from_source
from service.app.store.gc import Pacer, collect_orphans
from service.app.store.registry import DocumentRegistry
from service.app.store.vectors import PointVersion

logger = logging.getLogger(__name__)

MAX_LISTED = 50
"""Document ids listed per tenant, collection and kind (the counts are always complete)."""


@dataclass
class TenantReport:
    """What one pass found (and did) for one tenant in one collection."""

    orphan_versions: int = 0
    orphan_points: int = 0
    reindexed: int = 0
    without_text: int = 0
    orphan_ids: list[str] = field(default_factory=list)
    reindexed_ids: list[str] = field(default_factory=list)
    without_text_ids: list[str] = field(default_factory=list)
    # Inactive versions written less than GC_GRACE_SECONDS ago and not older than the active one (a write in
    # flight, or a document deleted within the grace of its last write: the age is the version's, not the
    # delete's; a version older than the active one is an orphan at once): invisible to search, kept by this
    # pass, removed by the orphan collector once `pending_removable_after` (UTC, ISO 8601) has passed. Not an
    # inconsistency (EYES9 L2: they went unreported, so "consistent" read as "the store matches the registry"
    # while their points remained).
    pending_versions: int = 0
    pending_points: int = 0
    pending_ids: list[str] = field(default_factory=list)
    pending_removable_after: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CollectionReport:
    """One collection's reconciliation: per tenant, and the documents that could not be rebuilt."""

    collection: str
    role: str
    """``current`` (searched) or ``standby`` (the rollback target, which takes every write too)."""
    tenants: dict[str, TenantReport] = field(default_factory=lambda: defaultdict(TenantReport))

    def tenant(self, tenant_id: str) -> TenantReport:
        return self.tenants[tenant_id]

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "role": self.role,
            "tenants": {tenant: report.as_dict() for tenant, report in sorted(self.tenants.items())},
        }


@dataclass
class ReconcileReport:
    """A whole run: every collection, and whether the store now matches the registry."""

    dry_run: bool
    collections: list[CollectionReport]

    def total(self, name: str) -> int:
        return sum(getattr(t, name) for c in self.collections for t in c.tenants.values())

    @property
    def consistent(self) -> bool:
        """After a real run: nothing is left that needs a client. After a dry run: nothing needed doing."""
        if self.dry_run:
            return not any(self.total(name) for name in ("orphan_versions", "reindexed", "without_text"))
        return self.total("without_text") == 0

    def as_dict(self) -> dict[str, Any]:
        after = [t.pending_removable_after for c in self.collections for t in c.tenants.values()]
        return {
            "dry_run": self.dry_run,
            "consistent": self.consistent,
            "orphan_versions": self.total("orphan_versions"),
            "orphan_points": self.total("orphan_points"),
            "pending_collection": {
                "versions": self.total("pending_versions"),
                "points": self.total("pending_points"),
                "removable_after": max((a for a in after if a), default=None),
                "note": "inactive versions younger than GC_GRACE_SECONDS: invisible to search; the orphan "
                "collector (every GC_INTERVAL_SECONDS) removes them after `removable_after`",
            },
            "reindexed": self.total("reindexed"),
            "without_text": self.total("without_text"),
            "collections": [c.as_dict() for c in self.collections],
        }


def _listed(ids: list[str], value: str) -> None:
    if len(ids) < MAX_LISTED:
        ids.append(value)


def reconcile_generation(
    registry: DocumentRegistry,
    ingest: IngestService,
    generation: IndexGeneration,
    *,
    role: str,
    grace_seconds: float,
    dry_run: bool = False,
    tenant_id: str | None = None,
    pause: Callable[[], None] | None = None,
) -> CollectionReport:
    """Reconcile one collection with the registry (blocking): orphans out, missing active versions back in."""
    report = CollectionReport(generation.collection, role)

    def orphan(version: PointVersion) -> None:
        tenant = report.tenant(version.tenant_id)
        tenant.orphan_versions += 1
        tenant.orphan_points += version.points
        _listed(tenant.orphan_ids, f"{version.document_id}@{version.version}")

    def pending(version: PointVersion) -> None:
        tenant = report.tenant(version.tenant_id)
        tenant.pending_versions += 1
        tenant.pending_points += version.points
        _listed(tenant.pending_ids, f"{version.document_id}@{version.version}")
        # A version is its write's time on the version clock (microseconds since the epoch).
        removable = datetime.fromtimestamp(version.version / 1_000_000 + grace_seconds, UTC).isoformat()
        tenant.pending_removable_after = max(tenant.pending_removable_after or removable, removable)

    collect_orphans(
        registry,
        generation.vectors,
        grace_seconds=grace_seconds,
        max_versions=2**62,
        pause=pause if pause is not None else Pacer(),
        dry_run=dry_run,
        tenant_id=tenant_id,
        on_orphan=orphan,
        on_pending=pending,
    )
    # Read after the collection: what the collector removed is not counted as held.
    held = {
        (v.tenant_id, v.document_id, v.version): v.points
        for v in generation.vectors.versions(pause=pause or Pacer())
    }
    for kept, without in source_pages(registry):
        for source in kept:
            record = source.record
            if tenant_id is not None and record.tenant_id != tenant_id:
                continue
            points = held.get((record.tenant_id, record.document_id, record.version))
            # Present and complete: as many points as this index's chunker makes of the kept text. Fewer is a
            # write cut off between two upsert batches (a kill -9 of this command or of a writer): rewritten.
            if points is not None and points >= len(generation.chunker.split(source.text)):
                continue
            tenant = report.tenant(record.tenant_id)
            if not dry_run:
                write_from_source(registry, ingest, generation, source)
                fault_point("reconcile_write")
            tenant.reindexed += 1
            _listed(tenant.reindexed_ids, record.document_id)
        for record in without:
            if tenant_id is not None and record.tenant_id != tenant_id:
                continue
            if (record.tenant_id, record.document_id, record.version) in held:
                continue
            tenant = report.tenant(record.tenant_id)
            tenant.without_text += 1
            _listed(tenant.without_text_ids, record.document_id)
    for tenant_name, tenant in report.tenants.items():
        logger.info(
            "reconciled",
            extra={
                "collection": generation.collection,
                "tenant": tenant_name,
                "dry_run": dry_run,
                **tenant.as_dict(),
            },
        )
    return report


def reconcile(
    registry: DocumentRegistry,
    ingest: IngestService,
    generations: Iterable[tuple[str, IndexGeneration]],
    *,
    grace_seconds: float,
    dry_run: bool = False,
    tenant_id: str | None = None,
    pause: Callable[[], None] | None = None,
) -> ReconcileReport:
    """Reconcile every (role, generation) given (the served index first); see the module docstring."""
    return ReconcileReport(
        dry_run,
        [
            reconcile_generation(
                registry,
                ingest,
                generation,
                role=role,
                grace_seconds=grace_seconds,
                dry_run=dry_run,
                tenant_id=tenant_id,
                pause=pause,
            )
            for role, generation in generations
        ],
    )


def served_generations(ingest: IngestService) -> list[tuple[str, IndexGeneration]]:
    """The collections a service writes: the current index, and its standby when there is one."""
    state = ingest.index.state
    generations = [("current", state.current)]
    if state.shadow is not None and state.shadow.collection != state.current.collection:
        generations.append(("standby", state.shadow))
    return generations
