"""Job leases in the job table, on SQLite (embedded) and Postgres (production), with the same semantics: a claim
takes a queued job or an expired lease, never a live one; of workers racing for a job exactly one gets it; a
worker whose lease was taken over can neither renew, finish, retry, release nor commit the document (fencing
token); the heartbeat keeps a job longer than its lease with its worker while another one sweeps; a lease lost
mid-job stops the job. The same across real worker processes (SIGKILL, SIGSTOP): tests/service/test_job_lease_processes.py.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app.core.config import Settings
from service.app.core.metrics import JOBS_LEASE_LOST, JOBS_RECLAIMED
from service.app.ingest.service import FENCE_CHECK_CHUNKS
from service.app.jobs.models import IngestPayload, JobStatus, new_job_id
from service.app.jobs.queue import InProcessJobQueue, queue_stats, run_durable_job
from service.app.main import create_app
from service.app.store.jobstore import (
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobTable,
    LeaseLost,
    QueueStats,
    lease_holder,
)
from service.app.store.registry import DocumentRegistry
from tests.service.support import CountingEmbedder, create_database, make_settings, services_of


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentRegistry]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = create_database(request.getfixturevalue("postgres_url"), f"lease_{uuid.uuid4().hex[:8]}")
    registry = DocumentRegistry(url)
    registry.migrate()
    yield registry
    registry.close()


@pytest.fixture
def table(registry: DocumentRegistry) -> JobTable:
    return JobTable(registry)


def queued_job(table: JobTable, document_id: str = "doc", text: str = "hello") -> IngestPayload:
    job = IngestPayload(job_id=new_job_id(), tenant_id="t", document_id=document_id, text=text)
    table.insert(job.job_id, job.tenant_id, job.document_id, job.model_dump_json())
    return job


def expire(table: JobTable, job_id: str, token: str) -> None:
    """The time passing: the lease's expiry moved into the past (what a dead worker's lease comes to)."""
    assert table.renew(job_id, token, -1)


def test_a_claim_takes_a_queued_job_or_an_expired_lease_never_a_live_one(table: JobTable) -> None:
    job = queued_job(table)
    first = table.claim(job.job_id, 60)
    assert first is not None
    assert (first.status, first.attempts, first.reclaimed) == (RUNNING, 1, False)
    assert first.lease_token
    assert first.lease_holder == lease_holder()
    assert table.claim(job.job_id, 60) is None  # a live lease is nobody else's
    assert table.renew(job.job_id, first.lease_token, 60)
    assert table.claim(job.job_id, 60) is None

    expire(table, job.job_id, first.lease_token)
    second = table.claim(job.job_id, 60)
    assert second is not None
    assert (second.status, second.attempts, second.reclaimed) == (RUNNING, 2, True)
    assert second.lease_token != first.lease_token

    # The first worker, back: every write it tries is refused and changes nothing.
    old = table.lease(first, 60)
    assert not old.renew()
    assert old.lost
    with pytest.raises(LeaseLost):
        old.finish(SUCCEEDED, error=None, result={"status": "created"})
    with pytest.raises(LeaseLost):
        old.retry_later(1, "service_unavailable: late")
    assert not old.release()
    row = table.get(job.job_id)
    assert (row.status, row.lease_token, row.attempts, row.error) == (RUNNING, second.lease_token, 2, None)

    table.lease(second, 60).finish(SUCCEEDED, error=None, result={"status": "created"})
    done = table.get(job.job_id)
    assert (done.status, done.result, done.lease_token) == (SUCCEEDED, {"status": "created"}, None)
    assert table.claim(job.job_id, 60) is None


def test_of_workers_racing_for_a_job_exactly_one_claims_it(table: JobTable) -> None:
    for round_ in ("queued", "expired"):
        job = queued_job(table, f"race-{round_}")
        if round_ == "expired":
            held = table.claim(job.job_id, 60)
            expire(table, job.job_id, held.lease_token)
        barrier = threading.Barrier(6)
        won: list[str] = []
        errors: list[BaseException] = []

        def contend() -> None:
            try:
                barrier.wait()
                row = table.claim(job.job_id, 60)
                if row is not None:
                    won.append(row.lease_token)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=contend) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(won) == 1, round_
        assert table.get(job.job_id).lease_token == won[0]


def test_a_commit_under_a_lease_taken_over_changes_nothing(
    registry: DocumentRegistry, table: JobTable
) -> None:
    """The lost update fencing prevents: worker A stalls after claiming a job for a document; B takes the job
    over and commits, then a newer write commits; A, back, read that newer version and tries to commit over it."""
    registry.activate(
        "t",
        "doc",
        expected_version=None,
        version=1,
        content_hash="h1",
        metadata={},
        content_type="text/plain",
        chunk_count=1,
    )
    job = queued_job(table)
    a = table.claim(job.job_id, 60)
    expire(table, job.job_id, a.lease_token)
    b = table.claim(job.job_id, 60)
    stale, owner = table.lease(a, 60), table.lease(b, 60)
    registry.activate(
        "t",
        "doc",
        expected_version=1,
        version=2,
        content_hash="h2",
        metadata={},
        content_type="text/plain",
        chunk_count=1,
        fence=owner,
    )
    with pytest.raises(LeaseLost):
        registry.activate(
            "t",
            "doc",
            expected_version=2,
            version=3,
            content_hash="stale",
            metadata={},
            content_type="text/plain",
            chunk_count=1,
            fence=stale,
        )
    assert registry.get("t", "doc").version == 2
    with pytest.raises(LeaseLost):
        stale.check()  # and the stale worker knows it now: its next step stops
    # The commit held the owner's lease, extending it: nobody can take the job over from a worker committing.
    assert table.claim(job.job_id, 60) is None
    assert table.get(job.job_id).lease_until > table.get(job.job_id).created_at


def test_the_sweep_wakes_expired_leases_once_and_fails_a_job_whose_worker_always_dies(
    table: JobTable,
) -> None:
    job = queued_job(table)
    assert table.due_for_wakeup(stale_seconds=60, max_attempts=3) == ([], [])  # woken at insert
    claimed = table.claim(job.job_id, 60)
    assert table.due_for_wakeup(stale_seconds=60, max_attempts=3) == ([], [])  # live lease
    expire(table, job.job_id, claimed.lease_token)
    assert table.due_for_wakeup(stale_seconds=60, max_attempts=3) == ([job.job_id], [])
    assert table.due_for_wakeup(stale_seconds=60, max_attempts=3) == ([], [])  # woken once per stale period
    for attempt in (2, 3):
        row = table.claim(job.job_id, 60, max_attempts=3)
        assert (row.attempts, row.reclaimed) == (attempt, True)
        expire(table, job.job_id, row.lease_token)
    # Its worker died three times: not reclaimed a fourth time, failed by the sweep with the reason.
    assert table.claim(job.job_id, 60, max_attempts=3) is None
    ids, failed = table.due_for_wakeup(stale_seconds=60, max_attempts=3)
    assert ids == []
    assert [row.job_id for row in failed] == [job.job_id]
    row = table.get(job.job_id)
    assert row.status == FAILED
    assert row.error.startswith("internal: the worker stopped 3 times while running this job")
    assert table.payload_size(job.job_id) == 0


def test_stats_count_a_job_whose_worker_died_as_waiting_not_running(table: JobTable) -> None:
    assert table.stats() == QueueStats()
    first, second, _third = queued_job(table, "a"), queued_job(table, "b"), queued_job(table, "c")
    held = table.claim(first.job_id, 60)
    dead = table.claim(second.job_id, 60)
    stats = table.stats()
    assert (stats.queued, stats.running) == (1, 2)
    assert stats.oldest_running_seconds > 0
    assert table.queue_stats()[0] == stats.queued
    # The second one's worker died: its lease expired, nobody runs it; it waits (and the depth alerts see it).
    expire(table, second.job_id, dead.lease_token)
    stats = table.stats()
    assert (stats.queued, stats.running) == (2, 1)
    expire(table, first.job_id, held.lease_token)
    assert table.stats().running == 0


# --- the heartbeat and a lost lease, through run_durable_job --------------------------------------------------


@dataclass
class GatedIngest:
    """An ingestion that runs until ``gate`` is set, checking its fence the way the real one does between
    embedding batches; records every call."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def ingest(
        self, tenant_id: str, document_id: str, *, fence: Any = None, **_: Any
    ) -> dict[str, Any]:
        self.calls.append(document_id)
        self.started.set()
        while not self.gate.is_set():
            fence.check()
            await asyncio.sleep(0.01)
        return {"document_id": document_id, "status": "created", "chunks": 1, "version": 1}


def lease_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"job_lease_seconds": 0.6, "jobs_sweep_seconds": 0.05, "jobs_max_attempts": 3}
    return Settings(_env_file=None, **{**values, **overrides})


async def renewals(table: JobTable, job_id: str, count: int) -> str:
    """Wait until the lease's expiry moved ``count`` times under one token; returns the token."""
    seen: list[Any] = []
    token = None
    for _ in range(20_000):
        row = table.get(job_id)
        assert row.status == RUNNING, row
        token = token or row.lease_token
        assert row.lease_token == token, "the lease changed hands"
        if not seen or row.lease_until != seen[-1]:
            seen.append(row.lease_until)
        if len(seen) > count:
            return token
        await asyncio.sleep(0.02)
    raise AssertionError(f"the lease was renewed {len(seen) - 1} times")


async def test_the_heartbeat_keeps_a_job_longer_than_its_lease_while_another_replica_sweeps(
    table: JobTable,
) -> None:
    settings = lease_settings()
    mine, other = GatedIngest(), GatedIngest()
    # Two replicas on one database (not exclusive): the other sweeps every 50 ms and would take over an
    # expired lease.
    here = InProcessJobQueue(mine, table, settings, exclusive=False)
    there = InProcessJobQueue(other, table, settings, exclusive=False)
    await here.start()
    await there.start()
    reclaimed = JOBS_RECLAIMED._value.get()
    try:
        job = IngestPayload(job_id=new_job_id(), tenant_id="t", document_id="long", text="x")
        await here.submit(job)
        await mine.started.wait()
        await renewals(table, job.job_id, 4)  # more than a lease (4 x 0.2 s > 0.6 s) and still this worker's
        await queue_stats(table)
        mine.gate.set()
        await here.wait_idle()
        row = table.get(job.job_id)
        assert (row.status, row.attempts) == (SUCCEEDED, 1)
        assert other.calls == []
        assert JOBS_RECLAIMED._value.get() == reclaimed
    finally:
        await here.close()
        await there.close()


async def test_a_job_whose_lease_was_taken_over_stops_and_writes_nothing(table: JobTable) -> None:
    settings = lease_settings()
    ingest = GatedIngest()
    job = queued_job(table, "stalled")
    lost = JOBS_LEASE_LOST._value.get()
    run = asyncio.create_task(run_durable_job(ingest, table, None, settings, job.job_id))
    await ingest.started.wait()
    # What a stall past the lease comes to: the lease expired and another worker took the job over.
    held = table.get(job.job_id)
    expire(table, job.job_id, held.lease_token)
    taken = table.claim(job.job_id, 60)
    assert taken.reclaimed
    assert await asyncio.wait_for(run, 60) == "lease lost"  # the deadline only bounds a hang
    row = table.get(job.job_id)
    assert (row.status, row.lease_token, row.result) == (RUNNING, taken.lease_token, None)
    assert JOBS_LEASE_LOST._value.get() == lost + 1


async def test_a_job_cancelled_by_a_shutdown_is_released_and_its_ingestion_stops(table: JobTable) -> None:
    ingest = GatedIngest()
    job = queued_job(table, "cut")
    run = asyncio.create_task(run_durable_job(ingest, table, None, lease_settings(), job.job_id))
    await ingest.started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    row = table.get(job.job_id)
    assert (row.status, row.attempts, row.lease_token) == (QUEUED, 0, None)
    assert JobStatus(row.status) is JobStatus.queued


# --- a shutdown stops the ingestion thread it cancels ------------------------------------------------------------


class GatedEmbedder(CountingEmbedder):
    """Counts embedding calls; the first blocks until ``go`` is set (a job mid-embedding at shutdown). Returns
    constant vectors: nothing it embeds should ever be written."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls = 0
        self.texts = 0
        self.entered = threading.Event()
        self.go = threading.Event()

    def embed_documents(self, texts: Any) -> list[list[float]]:
        self.calls += 1
        self.texts += len(texts)
        self.entered.set()
        assert self.go.wait(120), "the test never let the embedding go on"
        return [[0.1] * self.dimension for _ in texts]


def test_a_shutdown_stops_the_cancelled_jobs_ingestion_thread_at_its_next_batch(
    tmp_path: Path, embedder: Any
) -> None:
    """Before: the cancelled job's thread embedded the whole document and committed it after the process had
    given the job back (wasted work, and a write nobody waited for). Now it stops after the batch it is in."""
    gated = GatedEmbedder(embedder)
    settings = make_settings(tmp_path, chunk_size=16, chunk_overlap=0, jobs_shutdown_grace_seconds=0)
    text = " ".join(f"word{i} river ecology notes." for i in range(3 * FENCE_CHECK_CHUNKS * 4))
    with TestClient(create_app(settings, embedder=gated)) as client:
        services = services_of(client)
        ended = threading.Event()
        publish = services.ingest._publish

        def watched(*args: Any) -> int:
            try:
                return publish(*args)
            finally:
                ended.set()

        services.ingest._publish = watched  # type: ignore[method-assign]
        accepted = client.put("/v1/documents/big?async=true", json={"text": text})
        assert accepted.status_code == 202
        assert gated.entered.wait(120)
        client.portal.call(services.jobs.close, 0)  # the shutdown, grace 0: the job is cancelled mid-batch
        gated.go.set()
        assert ended.wait(120)  # the thread ended...
        assert (gated.calls, gated.texts) == (1, FENCE_CHECK_CHUNKS)  # ...after its first batch of several
        job = JobTable(services.registry).get(accepted.json()["job_id"])
        assert (job.status, job.attempts) == (QUEUED, 0)  # for the next start
        assert services.registry.get(settings.default_tenant, "big") is None
