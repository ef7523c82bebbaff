"""Job leases run on the database's clock, not the workers': two real processes, one clock skewed.

A holder process claims a job and renews its lease whenever the contender (this test process) asks; right after
each renewal the contender tries to claim the same job. Each side's clock, as the service's code sees it, is
skewed: ``datetime.now``/``datetime.utcnow`` in service.app.store.jobstore and ``time.time`` run ``offset``
seconds off. With leases computed on the workers' clocks (before 2026-11-26):

- holder 60 s behind, contender 60 s ahead: every lease the holder wrote had expired for the contender, which
  took the live job over (run twice);
- holder an hour ahead, then killed -9: its last lease stayed valid for an hour on everyone else's clock, so
  its job waited an hour instead of one lease.

On the database's clock neither happens: the contender never gets the live job, and gets the dead holder's one
lease after its last renewal. On SQLite and Postgres. Waits poll until a deadline that only bounds a process that
never gets there.

Renewals come on request, not from the holder's own timer, and the lease (10 s) is long against the moment
between a renewal and the claim that follows it: with a 2 s lease renewed every 0.5 s by a timer, a holder that a
loaded machine did not schedule for 1.5 s (or whose commit waited on a busy disk) really lost its lease, and the
test failed ("a live job was taken over") on the correct behaviour. The skews (60 s, an hour) stay far beyond the
lease, so leases on the workers' clocks still fail it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from service.app.store import jobstore
from service.app.store.jobstore import JobTable
from service.app.store.registry import open_registry
from tests.service.service_process import wait_for
from tests.service.support import create_database
from tests.support.processes import service_env

LEASE_SECONDS = 10.0
RENEWALS_WATCHED = 8  # each followed by a claim attempt
REINDEX_LEASE_SECONDS = 2.0  # renewed and contended within one process, statement after statement

SKEW = """
import datetime as _dt, time as _time
from service.app.store import jobstore as _jobstore

def skew(offset):
    real_time = _time.time

    class Skewed(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _dt.datetime.now(tz) + _dt.timedelta(seconds=offset)

        @classmethod
        def utcnow(cls):
            return _dt.datetime.utcnow() + _dt.timedelta(seconds=offset)

    _jobstore.datetime = Skewed
    _time.time = lambda: real_time() + offset
"""

HOLDER = (
    SKEW
    + """
import sys
from service.app.store.jobstore import JobTable
from service.app.store.registry import DocumentRegistry

url, job_id, offset, lease = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
skew(offset)
table = JobTable(DocumentRegistry(url))
row = table.claim(job_id, lease)
if row is None:
    print("not claimed", flush=True)
    sys.exit(3)
claimed = table.lease(row, lease)
print("claimed", flush=True)
renewals = 0
for _request in sys.stdin:  # one renewal per line the contender writes
    if not claimed.renew():
        print("lost", flush=True)
        sys.exit(4)
    renewals += 1
    print(f"renewed {renewals}", flush=True)
"""
)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{(tmp_path / 'registry.db').as_posix()}"
    server = request.getfixturevalue("postgres_url")
    return create_database(server, f"lease_clock_{uuid.uuid4().hex[:8]}")


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def skew_here(monkeypatch: pytest.MonkeyPatch, offset: float) -> None:
    """This process's clock, as the jobs code sees it, ``offset`` seconds off (as SKEW does in the holder)."""
    real_time = time.time

    class Skewed(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
            from datetime import timedelta

            return datetime.now(tz) + timedelta(seconds=offset)

    monkeypatch.setattr(jobstore, "datetime", Skewed)
    monkeypatch.setattr(time, "time", lambda: real_time() + offset)


@pytest.mark.parametrize(
    ("holder_offset", "contender_offset"),
    [(-60.0, 60.0), (3600.0, 0.0)],
    ids=["holder-behind-contender-ahead", "holder-an-hour-ahead"],
)
def test_a_skewed_clock_neither_steals_a_live_job_nor_keeps_a_dead_workers_job(
    database_url: str,
    holders: list[subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
    holder_offset: float,
    contender_offset: float,
) -> None:
    registry = open_registry(database_url)
    try:
        table = JobTable(registry)
        job_id = uuid.uuid4().hex
        table.insert(job_id, "t", "doc", "payload")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, database_url, job_id, str(holder_offset), str(LEASE_SECONDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=service_env(),
        )
        holders.append(holder)
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "claimed"
        skew_here(monkeypatch, contender_offset)

        # The holder is alive and renewing: after each renewal, the contender's claim must fail (no double run).
        for expected in range(1, RENEWALS_WATCHED + 1):
            holder.stdin.write("renew\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == f"renewed {expected}", "the holder lost its live lease"
            assert table.claim(job_id, LEASE_SECONDS) is None, "a live job was taken over"

        # The holder dies: its job is taken over once its last lease runs out on the database's clock (one
        # lease); an hour-ahead holder's lease would have kept it for an hour.
        holder.kill()
        holder.wait()
        row = wait_for(
            lambda: table.claim(job_id, LEASE_SECONDS),
            "the dead holder's job to be taken over",
            6 * LEASE_SECONDS,
        )
        assert row.reclaimed
        assert row.attempts == 2
        # And the new holder's lease is live for everyone: a second contender cannot take it.
        assert table.claim(job_id, LEASE_SECONDS) is None
    finally:
        registry.close()


def test_the_reindex_lease_is_on_the_database_clock_too(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas racing for the re-index lease (REINDEX_REINDEX_LEASE_SECONDS), the holder's clock 60 s behind and the
    other's 60 s ahead: the other neither takes the live lease nor reads it as expired; once the holder stops
    renewing, the other takes it one lease later."""
    from service.app.store import registry as registry_module

    registry = open_registry(database_url)
    try:

        def skew(offset: float) -> None:
            class Skewed(datetime):
                @classmethod
                def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
                    from datetime import timedelta

                    return datetime.now(tz) + timedelta(seconds=offset)

            monkeypatch.setattr(registry_module, "datetime", Skewed)

        skew(-60.0)
        held = registry.acquire_index_lease("replica-a", "c2", {}, REINDEX_LEASE_SECONDS)
        assert held.holder == "replica-a"
        for _ in range(3):
            skew(-60.0)
            assert registry.renew_index_lease("replica-a", REINDEX_LEASE_SECONDS)
            skew(60.0)
            seen = registry.acquire_index_lease("replica-b", "c2", {}, REINDEX_LEASE_SECONDS)
            assert seen.holder == "replica-a", "a live re-index lease was taken over"
            assert seen.live()
        # replica-a stops renewing (it died): replica-b gets the lease once it runs out on the database's clock.
        taken = wait_for(
            lambda: (
                (lease := registry.acquire_index_lease("replica-b", "c2", {}, REINDEX_LEASE_SECONDS)).holder
                == "replica-b"
                and lease
            ),
            "replica-b to take the dead holder's lease",
            20,
        )
        assert taken.live()
    finally:
        registry.close()
