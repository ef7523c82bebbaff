"""Durable job records in the registry database (table ``jobs``, migrations 0002_jobs and 0006_job_lease).

A job is a row holding its payload (the extracted text) and its state; the API inserts it before answering 202,
so an acknowledged job survives any Redis or process crash.

Leases. A worker *claims* a job with a compare-and-set: ``queued`` (and due) -> ``running``, or ``running`` whose
lease expired (its worker died, or stalled longer than the lease) -> ``running`` again, *reclaimed*. Each claim
writes a new random ``lease_token`` and ``lease_until = now + JOB_LEASE_SECONDS``; the worker's heartbeat
renews the lease every third of that (service.app.jobs.queue). Everything the holder writes afterwards is
conditional on its token: the renewal, the finish (succeeded/failed), the retry, the release at shutdown, and
the document's commit itself (``JobLease.hold`` runs inside the registry's activation transaction and locks the
job row until it commits). So a worker whose lease was taken over (a SIGSTOP, a long GC or CPU-throttling pause,
a network partition from the database) finds out at its next renewal or commit and stops: it can never overwrite
the result or the document of the worker that took the job over. A worker killed mid-job is replaced after
at most one lease plus one sweep (``due_for_wakeup`` re-sends wake-ups for expired leases), not after an hour.

One clock: every time this table writes or compares (lease expiry, due times, wake-ups, ages) is the
database's, read in the same transaction (Postgres ``clock_timestamp()``; SQLite's ``'now'``, the clock of the
one host whose processes share the file), never the worker's own. Until 2026-11-26 a worker computed
``lease_until`` from its own clock and another compared it with its own, so a node whose clock ran behind
wrote leases that looked expired to the others (its live jobs were taken over and run twice), and one running
ahead took live jobs over or kept a dead worker's job for as long as it was ahead
(tests/service/test_job_lease_clock.py runs two processes, one with a skewed clock).

Retries are rows put back to ``queued`` with a later ``next_attempt_at``; ``attempts`` counts claims, so a
job whose worker dies every time (a document that exhausts its memory) fails after JOBS_MAX_ATTEMPTS claims
instead of being reclaimed for ever. Backend failures surface as ServiceUnavailable, like the registry's.

The embedded set-up (no Redis) keeps its jobs in this same table (SQLite by default) and runs them in the API
process (service.app.jobs.queue.InProcessJobQueue), with the same leases; at start-up, holding the embedded
store's exclusive lock, it knows that no other process can be running a job, so ``resume_after_restart`` puts
every running row back to queued at once instead of waiting for its lease to expire.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.app.core.errors import Conflict
from service.app.store.registry import DocumentRegistry, _guarded, _utc, database_now, jobs_table

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


def lease_holder() -> str:
    """Who holds a lease: host (the pod's name in Kubernetes) and process id, for an operator reading the table."""
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


class LeaseLost(Conflict):
    """The job's lease is no longer this worker's (taken over after it expired, or given up at shutdown): the
    worker must stop and write nothing more for the job."""


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
    lease_token: str | None = None
    lease_until: datetime | None = None
    lease_holder: str | None = None
    reclaimed: bool = False  # this claim took the job over from a worker whose lease expired (not a column)


def _row(row: sa.Row[Any], *, reclaimed: bool = False) -> JobRow:
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
        lease_token=m["lease_token"],
        lease_until=_utc(m["lease_until"]) if m["lease_until"] else None,
        lease_holder=m["lease_holder"],
        reclaimed=reclaimed,
    )


@dataclass(frozen=True)
class QueueStats:
    """What the queue gauges show, from one query of the job table."""

    queued: int = 0  # waiting for a worker: queued, or running under an expired lease
    oldest_queued_seconds: float = 0.0  # since submission
    running: int = 0  # under a live lease
    oldest_running_seconds: float = 0.0  # since the running attempt was claimed


class JobTable:
    """The ``jobs`` table of a registry database (same engine, same outage behaviour)."""

    def __init__(self, registry: DocumentRegistry) -> None:
        self.engine = registry.engine

    @_guarded
    def insert(self, job_id: str, tenant_id: str, document_id: str, payload: str) -> JobRow:
        with self.engine.begin() as connection:
            now = database_now(connection)
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
    def claim(self, job_id: str, lease_seconds: float, *, max_attempts: int | None = None) -> JobRow | None:
        """Take the job with a new lease and token: queued (and due) -> running, or running with an expired lease
        (its worker died or stalled) -> running here, ``reclaimed``. None when another worker holds a live lease,
        or the job is not due, done, unknown, or was already claimed ``max_attempts`` times (the sweep fails
        it: ``due_for_wakeup``)."""
        mine = jobs_table.c.job_id == job_id
        with self.engine.begin() as connection:
            now = database_now(connection)
            values = {
                "status": RUNNING,
                "started_at": now,
                "lease_until": now + timedelta(seconds=lease_seconds),
                "lease_token": uuid.uuid4().hex,
                "lease_holder": lease_holder(),
                "attempts": jobs_table.c.attempts + 1,
                "woken_at": None,  # an expired lease is woken once by the sweep (due_for_wakeup)
            }
            reclaimed = False
            result = connection.execute(
                jobs_table.update()
                .where(mine, jobs_table.c.status == QUEUED, jobs_table.c.next_attempt_at <= now)
                .values(**values)
            )
            if result.rowcount != 1:
                expired = [mine, jobs_table.c.status == RUNNING, jobs_table.c.lease_until < now]
                if max_attempts is not None:
                    expired.append(jobs_table.c.attempts < max_attempts)
                result = connection.execute(jobs_table.update().where(*expired).values(**values))
                if result.rowcount != 1:
                    return None
                reclaimed = True
            row = connection.execute(sa.select(jobs_table).where(mine)).one()
        return _row(row, reclaimed=reclaimed)

    def lease(self, row: JobRow, lease_seconds: float) -> JobLease:
        """The lease of a row this worker claimed."""
        assert row.lease_token is not None, "a claimed row has a lease token"
        return JobLease(self, row.job_id, row.lease_token, lease_seconds)

    def _held(self, job_id: str, token: str) -> Any:
        return sa.and_(
            jobs_table.c.job_id == job_id, jobs_table.c.status == RUNNING, jobs_table.c.lease_token == token
        )

    def _extend(self, connection: Connection, job_id: str, token: str, lease_seconds: float) -> bool:
        result = connection.execute(
            jobs_table.update()
            .where(self._held(job_id, token))
            .values(lease_until=database_now(connection) + timedelta(seconds=lease_seconds))
        )
        return result.rowcount == 1

    @_guarded
    def renew(self, job_id: str, token: str, lease_seconds: float) -> bool:
        """Extend the lease by ``lease_seconds`` from now; False when it is no longer ``token``'s (taken over)."""
        with self.engine.begin() as connection:
            return self._extend(connection, job_id, token, lease_seconds)

    @_guarded
    def finish(
        self, job_id: str, token: str, status: str, *, error: str | None, result: dict[str, Any] | None
    ) -> bool:
        """Record the outcome of the attempt holding ``token``; False (nothing written) when it lost the lease."""
        with self.engine.begin() as connection:
            now = database_now(connection)
            done = connection.execute(
                jobs_table.update()
                .where(self._held(job_id, token))
                # The payload (the document's whole text) is not needed once the job is done; the row stays
                # for the result TTL, which would otherwise keep every document's text twice that long.
                .values(
                    status=status,
                    error=error,
                    result=result,
                    finished_at=now,
                    lease_until=None,
                    lease_token=None,
                    payload="",
                )
            )
        return done.rowcount == 1

    @_guarded
    def retry_later(
        self, job_id: str, token: str, delay_seconds: float, error: str, *, refund: bool = False
    ) -> bool:
        """Back to queued, due after ``delay_seconds`` (a dependency outage; the error is kept for the poller);
        ``refund``: this attempt is not counted (the job waits for disk space, service.app.jobs.queue). False when
        the attempt lost its lease."""
        with self.engine.begin() as connection:
            now = database_now(connection)
            done = connection.execute(
                jobs_table.update()
                .where(self._held(job_id, token))
                .values(
                    status=QUEUED,
                    error=error,
                    started_at=None,
                    lease_until=None,
                    lease_token=None,
                    next_attempt_at=now + timedelta(seconds=delay_seconds),
                    woken_at=now,
                    **({"attempts": jobs_table.c.attempts - 1} if refund else {}),
                )
            )
        return done.rowcount == 1

    @_guarded
    def wait_for_space(self, job_id: str, delay_seconds: float, error: str) -> bool:
        """A queued, due job left unclaimed because the disk is full (service.app.jobs.queue): due again after
        ``delay_seconds``, with ``error`` for the poller. ``woken_at`` is set to then too: the wake-up the caller
        sends for then is the one the job has, so the sweep (``due_for_wakeup``) wakes it only if that one is
        lost. False when the row is not queued and due (another look already put it off: that look's wake-up is
        the job's; or it is running or done): then the caller sends none, so a job has one chain of wake-ups."""
        with self.engine.begin() as connection:
            now = database_now(connection)
            then = now + timedelta(seconds=delay_seconds)
            done = connection.execute(
                jobs_table.update()
                .where(
                    jobs_table.c.job_id == job_id,
                    jobs_table.c.status == QUEUED,
                    jobs_table.c.next_attempt_at <= now,
                )
                .values(error=error, next_attempt_at=then, woken_at=then)
            )
        return done.rowcount == 1

    @_guarded
    def release(self, job_id: str, token: str) -> bool:
        """A running job cut short by a shutdown: queued again at once (its attempt is not counted); the token
        is void from now on, so the cut-short run cannot commit if it goes on for a while."""
        with self.engine.begin() as connection:
            done = connection.execute(
                jobs_table.update()
                .where(self._held(job_id, token))
                .values(
                    status=QUEUED,
                    started_at=None,
                    lease_until=None,
                    lease_token=None,
                    attempts=jobs_table.c.attempts - 1,
                    next_attempt_at=database_now(connection),
                )
            )
        return done.rowcount == 1

    @_guarded
    def resume_after_restart(self, max_attempts: int) -> tuple[list[str], list[JobRow], int]:
        """Only for a process that holds the store exclusively (its lock proves the previous process is gone):
        every ``running`` row is a job the dead process was running, so it goes back to queued now rather
        than when its lease expires. A job that was running when the process died ``max_attempts`` times (a
        document that crashes the process, say by exhausting its memory) is failed instead of resumed forever.
        Returns (the queued job ids, oldest first; the rows failed here; how many running rows were taken back)."""
        error = f"internal: the service stopped {max_attempts} times while running this job; it is not resumed again"
        with self.engine.begin() as connection:
            now = database_now(connection)
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
                    .values(status=FAILED, error=error, finished_at=now, lease_until=None, lease_token=None)
                )
            taken = connection.execute(
                jobs_table.update()
                .where(jobs_table.c.status == RUNNING)
                .values(
                    status=QUEUED,
                    started_at=None,
                    lease_until=None,
                    lease_token=None,
                    next_attempt_at=now,
                    woken_at=now,
                )
            ).rowcount
            ids = list(
                connection.execute(
                    sa.select(jobs_table.c.job_id)
                    .where(jobs_table.c.status == QUEUED)
                    .order_by(jobs_table.c.created_at)
                ).scalars()
            )
        failed = [dataclasses.replace(row, status=FAILED, error=error, finished_at=now) for row in exhausted]
        return ids, failed, int(taken or 0)

    @_guarded
    def due_for_wakeup(
        self, *, stale_seconds: float, max_attempts: int | None = None, limit: int = 500
    ) -> tuple[list[str], list[JobRow]]:
        """Jobs that should be running but may have no wake-up in Redis (lost in a Redis crash, or never sent):
        queued and due with no wake-up for ``stale_seconds``, and running ones whose lease expired (their worker
        died or stalled; a woken worker reclaims them with ``claim``). Marks them woken now.

        A job whose lease expired after ``max_attempts`` claims is failed here instead (its worker died every
        time: a document that kills the process). Returns (the ids to wake, oldest first; the rows failed)."""
        failed: list[JobRow] = []
        with self.engine.begin() as connection:
            now = database_now(connection)
            stale = now - timedelta(seconds=stale_seconds)
            expired = sa.and_(jobs_table.c.status == RUNNING, jobs_table.c.lease_until < now)
            if max_attempts is not None:
                error = (
                    f"internal: the worker stopped {max_attempts} times while running this job (its lease "
                    "expired each time); it is not retried again"
                )
                exhausted = [
                    _row(row)
                    for row in connection.execute(
                        sa.select(jobs_table)
                        .where(expired, jobs_table.c.attempts >= max_attempts)
                        .limit(limit)
                    )
                ]
                for row in exhausted:
                    # Conditional on the token read: a row renewed or reclaimed since is left alone.
                    done = connection.execute(
                        jobs_table.update()
                        .where(self._held(row.job_id, row.lease_token or ""), jobs_table.c.lease_until < now)
                        .values(
                            status=FAILED,
                            error=error,
                            finished_at=now,
                            lease_until=None,
                            lease_token=None,
                            payload="",
                        )
                    )
                    if done.rowcount == 1:
                        failed.append(dataclasses.replace(row, status=FAILED, error=error, finished_at=now))
            ids = list(
                connection.execute(
                    sa.select(jobs_table.c.job_id)
                    .where(
                        sa.or_(
                            sa.and_(jobs_table.c.status == QUEUED, jobs_table.c.next_attempt_at <= now),
                            expired,
                        ),
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
        return ids, failed

    @_guarded
    def stats(self) -> QueueStats:
        """Waiting and running jobs and the age of the oldest of each, in one query. A running job whose lease
        expired counts as waiting (since its submission, like a queued one): its worker is gone and it waits
        for another, so a queue whose every worker died shows jobs waiting, not running."""
        with self.engine.connect() as connection:
            now = database_now(connection)
            waiting = sa.or_(
                jobs_table.c.status == QUEUED,
                sa.and_(jobs_table.c.status == RUNNING, jobs_table.c.lease_until < now),
            )
            state = sa.case((waiting, QUEUED), else_=RUNNING)
            since = sa.case((waiting, jobs_table.c.created_at), else_=jobs_table.c.started_at)
            rows = connection.execute(
                sa.select(state.label("state"), sa.func.count(), sa.func.min(since))
                .where(jobs_table.c.status.in_([QUEUED, RUNNING]))
                .group_by(state)
            ).all()
        found = {
            name: (int(count), max(0.0, (now - _utc(oldest)).total_seconds()) if oldest is not None else 0.0)
            for name, count, oldest in rows
        }
        queued, running = found.get(QUEUED, (0, 0.0)), found.get(RUNNING, (0, 0.0))
        return QueueStats(queued[0], queued[1], running[0], running[1])

    def queue_stats(self) -> tuple[int, float]:
        """(queued jobs, age in seconds of the oldest of them; 0.0 when none)."""
        stats = self.stats()
        return stats.queued, stats.oldest_queued_seconds

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
        with self.engine.begin() as connection:
            cutoff = database_now(connection) - timedelta(seconds=older_than_seconds)
            return int(
                connection.execute(jobs_table.delete().where(jobs_table.c.finished_at < cutoff)).rowcount or 0
            )


class JobLease:
    """A claimed job's lease: its fencing token, the heartbeat's renewal, and the fence the document's commit
    holds (service.app.store.registry.CommitFence). ``lose`` marks it lost (the heartbeat found it taken over,
    or the job was cancelled by a shutdown); the ingest thread sees that at its next ``check`` and stops."""

    def __init__(self, table: JobTable, job_id: str, token: str, lease_seconds: float) -> None:
        self.table = table
        self.job_id = job_id
        self.token = token
        self.lease_seconds = lease_seconds
        self._lost = threading.Event()
        self.reason = ""

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def lose(self, reason: str) -> None:
        if not self._lost.is_set():
            self.reason = reason
            self._lost.set()

    def check(self) -> None:
        if self._lost.is_set():
            raise LeaseLost(f"job {self.job_id} stopped: {self.reason}", job_id=self.job_id)

    def hold(self, connection: Connection) -> None:
        self.check()
        # An UPDATE, not a SELECT: it takes the row's write lock (Postgres) or the database's (SQLite), so a
        # claim by another worker waits for this commit, and sees the lease extended.
        if not self.table._extend(connection, self.job_id, self.token, self.lease_seconds):
            self.lose("its lease was taken over by another worker")
            self.check()

    def renew(self) -> bool:
        """Extend the lease (False: it was taken over; marked lost). Raises ServiceUnavailable on an outage."""
        if self.table.renew(self.job_id, self.token, self.lease_seconds):
            return True
        self.lose("its lease was taken over by another worker")
        return False

    def finish(self, status: str, *, error: str | None, result: dict[str, Any] | None) -> None:
        """Record the attempt's outcome; LeaseLost (nothing written) when the lease is no longer ours."""
        self._written(self.table.finish(self.job_id, self.token, status, error=error, result=result))

    def retry_later(self, delay_seconds: float, error: str, *, refund: bool = False) -> None:
        """Queued again, due in ``delay_seconds`` (``refund``: the attempt not counted); LeaseLost (nothing
        written) when the lease is no longer ours."""
        self._written(self.table.retry_later(self.job_id, self.token, delay_seconds, error, refund=refund))

    def release(self) -> bool:
        """Queued again at once (a shutdown); False when the lease was no longer ours anyway."""
        return self.table.release(self.job_id, self.token)

    def _written(self, done: bool) -> None:
        if not done:
            self.lose("its lease was taken over by another worker")
            self.check()
