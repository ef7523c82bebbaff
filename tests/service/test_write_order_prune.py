"""Write-order rows are pruned once nothing can consult them, and never while a job may still commit against
one (which would let an older accepted write commit over a newer acknowledged one): DocumentRegistry.
prune_write_order, on SQLite and Postgres, rule by rule and under concurrent writers with a checker."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from service.app.core.errors import Conflict
from service.app.store.jobstore import JobTable
from service.app.store.registry import DocumentRegistry, Superseded, write_order
from tests.service.support import migrated_registry

HOUR = 3600.0


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DocumentRegistry]:
    with migrated_registry(request, tmp_path_factory, "h2_test_write_order_prune") as registry:
        yield registry


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _write(registry: DocumentRegistry, tenant: str, document_id: str, *, ticket: int | None = None) -> int:
    """A committed write (synchronous, or a job's with ``ticket``); the new version."""
    current = registry.get(tenant, document_id)
    version = (current.version if current else 0) + 1
    registry.activate(
        tenant,
        document_id,
        expected_version=current.version if current else None,
        version=version,
        content_hash=f"h{version}",
        metadata={},
        content_type="text/plain",
        chunk_count=1,
        ticket=ticket,
    )
    return version


def _rows(registry: DocumentRegistry, tenant: str) -> set[str]:
    with registry.engine.connect() as connection:
        return set(
            connection.execute(sa.select(write_order.c.document_id).where(write_order.c.tenant_id == tenant))
            .scalars()
            .all()
        )


def _age_marks(registry: DocumentRegistry, tenant: str) -> None:
    """As if the marks were made an hour and more ago (the grace is measured from the mark)."""
    with registry.engine.begin() as connection:
        connection.execute(
            write_order.update()
            .where(write_order.c.tenant_id == tenant, write_order.c.marked_at.is_not(None))
            .values(marked_at=datetime.now(UTC) - timedelta(hours=2))
        )


def _prune(registry: DocumentRegistry, tenant: str) -> set[str]:
    """One mark pass, the grace elapsed, one delete pass; the tenant's rows left."""
    registry.prune_write_order(HOUR)
    _age_marks(registry, tenant)
    registry.prune_write_order(HOUR)
    return _rows(registry, tenant)


def test_settled_rows_go_after_two_passes_and_the_grace(registry: DocumentRegistry, tenant: str) -> None:
    _write(registry, tenant, "settled")
    registry.delete(tenant, "settled")  # a tombstone nobody waits on
    _write(registry, tenant, "written")
    assert registry.prune_write_order(HOUR) == 0  # the first pass only marks
    registry.prune_write_order(HOUR)
    assert _rows(registry, tenant) == {"settled", "written"}, "deleted before the grace elapsed"
    _age_marks(registry, tenant)
    registry.prune_write_order(HOUR)
    assert _rows(registry, tenant) == set()
    # The next write starts the document's order again and works as before.
    ticket = registry.accept_write(tenant, "written")
    _write(registry, tenant, "written")  # acknowledged after the ticket
    with pytest.raises(Superseded):
        _write(registry, tenant, "written", ticket=ticket)


def test_a_row_a_job_may_still_commit_against_stays(registry: DocumentRegistry, tenant: str) -> None:
    jobs = JobTable(registry)
    # An outstanding ticket (its job not inserted yet, or queued): issued > committed.
    _write(registry, tenant, "ticketed")
    registry.accept_write(tenant, "ticketed")
    # A ticket, then a synchronous write acknowledged after it (issued == committed), its job queued.
    _write(registry, tenant, "overtaken")
    stale = registry.accept_write(tenant, "overtaken")
    _write(registry, tenant, "overtaken")
    jobs.insert(f"job-{uuid.uuid4().hex}", tenant, "overtaken", "{}")
    assert _prune(registry, tenant) == {"ticketed", "overtaken"}
    # The tombstone still wins: the queued job is superseded, the acknowledged write stays.
    with pytest.raises(Superseded):
        _write(registry, tenant, "overtaken", ticket=stale)
    assert registry.get(tenant, "overtaken").version == 2


def test_the_grace_covers_a_job_inserted_after_its_ticket(registry: DocumentRegistry, tenant: str) -> None:
    # The 202 takes the ticket, and the job row is inserted just after, in another transaction; a synchronous
    # write in between leaves issued == committed and no job row yet. A pass in that gap only marks the row.
    _write(registry, tenant, "gap")
    stale = registry.accept_write(tenant, "gap")
    _write(registry, tenant, "gap")
    registry.prune_write_order(HOUR)
    registry.prune_write_order(HOUR)  # the grace has not elapsed: still there
    JobTable(registry).insert(f"job-{uuid.uuid4().hex}", tenant, "gap", "{}")
    assert _rows(registry, tenant) == {"gap"}
    with pytest.raises(Superseded):
        _write(registry, tenant, "gap", ticket=stale)


def test_a_row_changed_after_its_mark_is_not_deleted(registry: DocumentRegistry, tenant: str) -> None:
    _write(registry, tenant, "busy")
    registry.prune_write_order(HOUR)  # marked at issued == 1
    _age_marks(registry, tenant)
    stale = registry.accept_write(tenant, "busy")  # issued moves on: the mark no longer holds
    _write(registry, tenant, "busy")
    registry.prune_write_order(HOUR)
    assert _rows(registry, tenant) == {"busy"}
    with pytest.raises(Superseded):
        _write(registry, tenant, "busy", ticket=stale)


def test_pruning_under_concurrent_writers_never_lets_an_older_job_win(
    registry: DocumentRegistry, tenant: str
) -> None:
    """Writers take tickets (and queue a job), write synchronously or delete after them, and run their jobs,
    while a pruner marks and deletes with no grace at all; the checker: a job never commits over a write or
    delete acknowledged after its ticket, and a job nothing overtook always commits."""
    jobs = JobTable(registry)
    stop = threading.Event()
    errors: list[str] = []
    pruned = [0]

    def pruner() -> None:
        while not stop.is_set():
            pruned[0] += registry.prune_write_order(0)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        # Each writer its own documents: a synchronous write of another writer landing between a ticket and its
        # job row is the grace's case (above), which a pruner without grace does not cover.
        documents = [f"w{seed}-d{i}" for i in range(3)]
        for _ in range(60):
            document_id = rng.choice(documents)
            try:
                ticket = registry.accept_write(tenant, document_id)
                job_id = f"job-{uuid.uuid4().hex}"
                jobs.insert(job_id, tenant, document_id, "{}")
                overtaken = rng.random() < 0.5
                if overtaken:  # an acknowledged write or delete after the 202
                    if rng.random() < 0.5:
                        _write(registry, tenant, document_id)
                    else:
                        registry.delete(tenant, document_id)
                try:
                    _write(registry, tenant, document_id, ticket=ticket)
                    if overtaken:
                        errors.append(f"job of ticket {ticket} on {document_id} committed over a newer write")
                except Superseded:
                    if not overtaken:
                        errors.append(f"job of ticket {ticket} on {document_id} superseded by nothing")
                finally:
                    with registry.engine.begin() as connection:
                        connection.execute(
                            sa.text("UPDATE jobs SET status = 'succeeded' WHERE job_id = :id"), {"id": job_id}
                        )
            except Conflict as exc:
                errors.append(f"unexpected conflict on {document_id}: {exc}")

    pruning = threading.Thread(target=pruner)
    pruning.start()
    writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    pruning.join()
    assert errors == []
    assert pruned[0] > 0, "the pruner never deleted a row: the test exercised nothing"
