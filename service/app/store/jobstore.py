"""Durable job records in the registry database (table ``jobs``, migration 0002_jobs).

A job is a row holding its payload (the extracted text) and its state; the API inserts it before answering 202,
so an acknowledged job survives any Redis or process crash. Workers *claim* a job with a compare-and-set
(queued -> running, with a lease), so a job delivered twice (a sweeper re-enqueue, a Redis replay) runs once at a
time; a job whose worker died is reclaimed when its lease expires. Retries are rows put back to ``queued`` with
a later ``next_attempt_at``. Backend failures surface as ServiceUnavailable, like the registry's.

The embedded set-up (no Redis) keeps its jobs in this same table (SQLite by default) and runs them in the API
process (service.app.jobs.queue.InProcessJobQueue); at start-up, holding the embedded store's exclusive lock,
it knows that no other process can be running a job, so ``resume_after_restart`` puts every running row back
to queued at once instead of waiting for its lease to expire.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from service.app.store.registry import DocumentRegistry, _guarded, _utc, jobs_table

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobRow:
    """One job as stored."""

    job_id: str
    tenant_id: str
    document_id: str
    status: str
    payload: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    result: dict[str, Any] | None


def _row(row: sa.Row[Any]) -> JobRow:
    m = row._mapping
    return JobRow(
        job_id=m["job_id"],
        tenant_id=m["tenant_id"],
        document_id=m["document_id"],
        status=m["status"],
        payload=m["payload"],
        attempts=int(m["attempts"]),
        created_at=_utc(m["created_at"]),
        started_at=_utc(m["started_at"]) if m["started_at"] else None,
        finished_at=_utc(m["finished_at"]) if m["finished_at"] else None,
        error=m["error"],
        result=m["result"],
    )


class JobTable:
    """The ``jobs`` table of a registry database (same engine, same outage behaviour)."""

    def __init__(self, registry: DocumentRegistry) -> None:
        self.engine = registry.engine

    @_guarded
    def insert(self, job_id: str, tenant_id: str, document_id: str, payload: str) -> JobRow:
        now = _now()
        with self.engine.begin() as connection:
            connection.execute(
                jobs_table.insert().values(
                    job_id=job_id,
                    tenant_id=tenant_id,
                    document_id=document_id,
                    status=QUEUED,
                    payload=payload,
                    attempts=0,
                    created_at=now,
                    next_attempt_at=now,
                    woken_at=now,
                )
            )
        return JobRow(job_id, tenant_id, document_id, QUEUED, payload, 0, now, None, None, None, None)

    @_guarded
    def get(self, job_id: str) -> JobRow | None:
        """The job's state for a poller, without its payload (``payload`` is ""): the payload is the document's
        whole text (up to MAX_DOCUMENT_BYTES), which a client polling every second would otherwise read each
        time."""
        columns = [column for column in jobs_table.c if column.name != "payload"]
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(*columns, sa.literal("").label("payload")).where(jobs_table.c.job_id == job_id)
            ).first()
        return None if row is None else _row(row)

    @_guarded
    def payload_size(self, job_id: str) -> int | None:
        """Bytes of the stored payload (None: no such job); "" once the job finished."""
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.length(jobs_table.c.payload)).where(jobs_table.c.job_id == job_id)
            ).scalar()

    @_guarded
    def claim(self, job_id: str, lease_seconds: float) -> JobRow | None:
        """queued (and due) -> running with a lease; None when another worker has it or it is not due/done."""
        now = _now()
        with self.engine.begin() as connection:
            result = connection.execute(
                jobs_table.update()
                .where(
                    jobs_table.c.job_id == job_id,
                    jobs_table.c.status == QUEUED,
                    jobs_table.c.next_attempt_at <= now,
                )
                .values(
                    status=RUNNING,
                    started_at=now,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    attempts=jobs_table.c.attempts + 1,
                )
            )
            if result.rowcount != 1:
                return None
            row = connection.execute(sa.select(jobs_table).where(jobs_table.c.job_id == job_id)).one()
        return _row(row)

    @_guarded
    def finish(self, job_id: str, status: str, *, error: str | None, result: dict[str, Any] | None) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                jobs_table.update()
                .where(jobs_table.c.job_id == job_id)
                # The payload (the document's whole text) is not needed once the job is done; the row stays
                # for the result TTL, which would otherwise keep every document's text twice that long.
                .values(
                    status=status,
                    error=error,
                    result=result,
                    finished_at=_now(),
                    lease_until=None,
                    payload="",
                )
            )

    @_guarded
    def retry_later(self, job_id: str, delay_seconds: float, error: str) -> None:
        """Back to queued, due after ``delay_seconds`` (a dependency outage; the error is kept for the poller)."""
        now = _now()
        with self.engine.begin() as connection:
            connection.execute(
                jobs_table.update()
                .where(jobs_table.c.job_id == job_id)
                .values(
                    status=QUEUED,
                    error=error,
                    started_at=None,
                    lease_until=None,
                    next_attempt_at=now + timedelta(seconds=delay_seconds),
                    woken_at=now,
                )
            )

    @_guarded
    def release(self, job_id: str) -> None:
        """A running job cut short by a shutdown: queued again at once (its attempt is not counted)."""
        with self.engine.begin() as connection:
            connection.execute(
                jobs_table.update()
                .where(jobs_table.c.job_id == job_id, jobs_table.c.status == RUNNING)
                .values(
                    status=QUEUED,
                    started_at=None,
                    lease_until=None,
                    attempts=jobs_table.c.attempts - 1,
                    next_attempt_at=_now(),
                )
            )

    @_guarded
    def resume_after_restart(self, max_attempts: int) -> tuple[list[str], list[JobRow]]:
        """Only for a process that holds the store exclusively (its lock proves the previous process is gone):
        every ``running`` row is a job the dead process was running, so it goes back to queued now rather
        than when its lease expires. A job that was running when the process died ``max_attempts`` times (a
        document that crashes the process, say by exhausting its memory) is failed instead of resumed forever.
        Returns (the queued job ids, oldest first; the rows failed here)."""
        now = _now()
        error = f"internal: the service stopped {max_attempts} times while running this job; it is not resumed again"
        with self.engine.begin() as connection:
            exhausted = [
                _row(row)
                for row in connection.execute(
                    sa.select(jobs_table).where(
                        jobs_table.c.status == RUNNING, jobs_table.c.attempts >= max_attempts
                    )
                )
            ]
            if exhausted:
                connection.execute(
                    jobs_table.update()
                    .where(jobs_table.c.job_id.in_([row.job_id for row in exhausted]))
                    .values(status=FAILED, error=error, finished_at=now, lease_until=None)
                )
            connection.execute(
                jobs_table.update()
                .where(jobs_table.c.status == RUNNING)
                .values(status=QUEUED, started_at=None, lease_until=None, next_attempt_at=now, woken_at=now)
            )
            ids = list(
                connection.execute(
                    sa.select(jobs_table.c.job_id)
                    .where(jobs_table.c.status == QUEUED)
                    .order_by(jobs_table.c.created_at)
                ).scalars()
            )
        failed = [dataclasses.replace(row, status=FAILED, error=error, finished_at=now) for row in exhausted]
        return ids, failed

    @_guarded
    def due_for_wakeup(self, *, stale_seconds: float, limit: int = 500) -> list[str]:
        """Jobs that should be running but may have no wake-up in Redis (lost in a Redis crash, or never sent):
        queued and due with no wake-up for ``stale_seconds``, and running ones whose lease expired (their worker
        died), which are put back to queued. Marks them woken now; returns their ids."""
        now = _now()
        stale = now - timedelta(seconds=stale_seconds)
        with self.engine.begin() as connection:
            connection.execute(
                jobs_table.update()
                .where(jobs_table.c.status == RUNNING, jobs_table.c.lease_until < now)
                .values(status=QUEUED, started_at=None, lease_until=None, woken_at=None)
            )
            ids = list(
                connection.execute(
                    sa.select(jobs_table.c.job_id)
                    .where(
                        jobs_table.c.status == QUEUED,
                        jobs_table.c.next_attempt_at <= now,
                        sa.or_(jobs_table.c.woken_at.is_(None), jobs_table.c.woken_at < stale),
                    )
                    .order_by(jobs_table.c.next_attempt_at)
                    .limit(limit)
                ).scalars()
            )
            if ids:
                connection.execute(
                    jobs_table.update().where(jobs_table.c.job_id.in_(ids)).values(woken_at=now)
                )
        return ids

    @_guarded
    def queue_stats(self) -> tuple[int, float]:
        """(queued jobs, age in seconds of the oldest of them; 0.0 when none) in one query."""
        with self.engine.connect() as connection:
            count, oldest = connection.execute(
                sa.select(sa.func.count(), sa.func.min(jobs_table.c.created_at))
                .select_from(jobs_table)
                .where(jobs_table.c.status == QUEUED)
            ).one()
        if not count or oldest is None:
            return 0, 0.0
        return int(count), max(0.0, (_now() - _utc(oldest)).total_seconds())

    @_guarded
    def queued_count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count()).select_from(jobs_table).where(jobs_table.c.status == QUEUED)
                ).scalar()
                or 0
            )

    @_guarded
    def purge_finished(self, older_than_seconds: float) -> int:
        cutoff = _now() - timedelta(seconds=older_than_seconds)
        with self.engine.begin() as connection:
            return int(
                connection.execute(jobs_table.delete().where(jobs_table.c.finished_at < cutoff)).rowcount or 0
            )
