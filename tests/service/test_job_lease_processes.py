"""Job leases across real processes: Postgres, Redis, the API (`python -m service`, lending its embedded store) and
`python -m service.worker` processes, with a short lease (JOB_LEASE_SECONDS=5) set through the setting.

- A worker that stalls right after claiming a job (it SIGSTOPs itself: RAG_FAULT_STOP_AT=job_claimed) loses the
  job to another worker once its lease expires; the document is then changed by a later job; the stalled worker,
  continued (SIGCONT), cannot commit its stale text over it, nor touch the job's record (fencing).
- The heartbeat keeps a job that runs longer than several leases (held mid-write by SIGSTOPping the API whose
  store it writes to) with its worker while another worker sweeps for expired leases.
- A worker killed with SIGKILL mid-job: another worker takes the job over one lease later, and the document is
  stored exactly once.

Waits poll a condition until a deadline that only bounds a process that never gets there (no timing asserts).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app.store.jobstore import JobRow, JobTable
from service.app.store.registry import DocumentRegistry
from tests.service.service_process import wait_for
from tests.service.support import create_database
from tests.support.processes import service_env
from tests.support.servers import _stop, free_port

# Short, to keep the waits for an expiry short, but long against a stall: the heartbeat renews every third of it,
# so a worker loses a live job only when its loop stalls for two thirds of a lease. At 2 s (1.3 s of stall) a
# loaded machine could take the long job from its live worker, which the heartbeat part then reports as a bug.
LEASE_SECONDS = 5.0


def sentences(marker: str, count: int) -> str:
    return " ".join(f"{marker} notes on glacier number {i} and the valley it carved." for i in range(count))


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def metric(self, name: str, default: float | None = None) -> float:
        """A series' value; ``default`` for one not exposed (a label value never used), else an error."""
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        if default is None:
            raise AssertionError(f"{name} not exposed by the worker")
        return default

    def stopped(self) -> bool:
        """The process is stopped (SIGSTOP): state T in /proc."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "T"


@dataclass
class Api:
    proc: subprocess.Popen[bytes]
    url: str


@dataclass
class Cluster:
    workdir: Path
    settings: dict[str, str]
    api: Api
    table: JobTable
    workers: list[Worker] = field(default_factory=list)

    def start_worker(self, **extra: str) -> Worker:
        port = free_port()
        env = {**self.settings, "vector_store_url": self.api.url, "worker_metrics_port": str(port), **extra}
        proc, log = spawn("service.worker", self.workdir, f"worker-{port}", env)
        worker = Worker(proc, f"http://127.0.0.1:{port}", log)
        self.workers.append(worker)
        wait_ready(proc, log, f"{worker.url}/readyz")
        return worker

    def submit(self, document_id: str, text: str) -> str:
        response = httpx.put(
            f"{self.api.url}/v1/documents/{document_id}?async=true", json={"text": text}, timeout=60
        )
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def job(self, job_id: str) -> JobRow:
        row = self.table.get(job_id)
        assert row is not None
        return row

    def finished(self, job_id: str) -> JobRow:
        row = wait_for(
            lambda: (r := self.job(job_id)).status in ("succeeded", "failed") and r, f"job {job_id}"
        )
        assert row.status == "succeeded", (row, self.logs())
        return row

    def document(self, document_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.api.url}/v1/documents/{document_id}", timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def hits(self, query: str) -> list[dict[str, Any]]:
        response = httpx.post(f"{self.api.url}/v1/search", json={"query": query, "top_k": 100}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    def logs(self) -> str:
        return "\n".join(w.log.read_text(errors="replace")[-1500:] for w in self.workers)


def spawn(
    module: str, workdir: Path, name: str, settings: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=workdir,
            env=service_env(**settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def wait_ready(proc: subprocess.Popen[bytes], log: Path, url: str) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"{url}: the process exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, f"{url} to answer 200")


def holder_pid(row: JobRow) -> int:
    assert row.lease_holder is not None
    return int(row.lease_holder.rsplit(":", 1)[1])


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Cluster]:
    database_url = create_database(postgres_url, f"lease_{uuid.uuid4().hex[:8]}")
    settings = {
        "environment": "test",
        "database_url": database_url,
        "redis_url": redis_url,
        "jobs_queue_name": f"lease-{uuid.uuid4().hex[:8]}",
        "internal_token": secrets.token_urlsafe(32),
        "data_dir": str(tmp_path / "data"),
        "auth_disabled": "true",
        "rate_limit_enabled": "false",
        "cache_enabled": "false",
        "gc_enabled": "false",
        "log_json": "true",
        "job_lease_seconds": str(LEASE_SECONDS),
        "jobs_sweep_seconds": "0.2",
    }
    port = free_port()
    proc, log = spawn("service", tmp_path, "api", {**settings, "host": "127.0.0.1", "port": str(port)})
    api = Api(proc, f"http://127.0.0.1:{port}")
    registry = DocumentRegistry(database_url)
    cluster = Cluster(tmp_path, settings, api, JobTable(registry))
    try:
        wait_ready(proc, log, f"{api.url}/readyz")
        yield cluster
    finally:
        for process in [api.proc, *(w.proc for w in cluster.workers)]:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a stopped process handles no SIGTERM
        for worker in cluster.workers:
            _stop(worker.proc)
        _stop(api.proc)
        registry.close()


def test_a_stalled_worker_loses_its_job_and_cannot_commit_over_the_new_owner(cluster: Cluster) -> None:
    stalling = cluster.start_worker(rag_fault_stop_at="job_claimed")
    first = cluster.submit("fenced", sentences("ALPHA", 3))
    wait_for(stalling.stopped, "the worker to stop itself after claiming the job")
    claimed = cluster.job(first)
    assert (claimed.status, claimed.attempts, holder_pid(claimed)) == ("running", 1, stalling.proc.pid)

    owner = cluster.start_worker()
    taken = cluster.finished(first)  # reclaimed once the stalled worker's lease expired
    assert (taken.attempts, holder_pid(taken)) == (2, owner.proc.pid)
    assert owner.metric("rag_jobs_reclaimed_total") == 1
    second = cluster.finished(cluster.submit("fenced", sentences("BRAVO", 3)))
    current = cluster.document("fenced")
    assert current["version"] == second.result["version"]

    # The stalled worker runs again: it read nothing before it stopped, so it would now write ALPHA over BRAVO.
    os.kill(stalling.proc.pid, signal.SIGCONT)

    def attempt_ended() -> bool:
        return (
            stalling.metric("rag_jobs_lease_lost_total")
            + stalling.metric('rag_jobs_total{status="succeeded"}', 0)
            + stalling.metric('rag_jobs_total{status="failed"}', 0)
        ) > 0

    wait_for(attempt_ended, "the stalled worker's attempt to end")
    assert stalling.metric("rag_jobs_lease_lost_total") == 1
    assert cluster.document("fenced") == current
    assert cluster.job(first) == taken  # its record untouched: still the new owner's result
    shown = {
        word
        for hit in cluster.hits("glacier valley notes")
        if hit["document_id"] == "fenced"
        for word in hit["text"].split()
        if word in ("ALPHA", "BRAVO")
    }
    assert shown == {"BRAVO"}
    assert stalling.metric('rag_jobs_total{status="succeeded"}', 0) == 0
    assert "stopped, nothing more written for it" in stalling.log.read_text()
    assert httpx.get(f"{stalling.url}/readyz", timeout=10).status_code == 200  # and it goes on serving

    # --- the heartbeat keeps a job longer than its lease with its worker --------------------------------------
    long_job = cluster.submit("long", sentences("CHARLIE", 40))
    running = wait_for(
        lambda: (r := cluster.job(long_job)).status == "running" and r, "the long job to start"
    )
    os.kill(cluster.api.proc.pid, signal.SIGSTOP)  # its write to the API's store waits: the job runs on
    try:
        expiries = {running.lease_until}

        def renewed_three_times() -> bool:
            row = cluster.job(long_job)
            assert (row.status, row.lease_token, row.attempts) == ("running", running.lease_token, 1), row
            expiries.add(row.lease_until)
            return len(expiries) > 3

        wait_for(renewed_three_times, "three renewals of the long job's lease")
        assert datetime.now(UTC) - running.started_at > timedelta(
            seconds=LEASE_SECONDS
        )  # longer than a lease
    finally:
        os.kill(cluster.api.proc.pid, signal.SIGCONT)
    done = cluster.finished(long_job)
    assert (done.attempts, done.lease_token) == (1, None)
    assert owner.metric("rag_jobs_reclaimed_total") + stalling.metric("rag_jobs_reclaimed_total") == 1

    # --- kill -9 of the worker running a job --------------------------------------------------------------------
    doomed_job = cluster.submit("killed", sentences("DELTA", 40))
    running = wait_for(lambda: (r := cluster.job(doomed_job)).status == "running" and r, "the job to start")
    os.kill(cluster.api.proc.pid, signal.SIGSTOP)  # holds the job mid-way, so the kill lands mid-job
    try:
        doomed = next(w for w in cluster.workers if w.proc.pid == holder_pid(running))
        survivor = next(w for w in cluster.workers if w is not doomed)
        reclaimed_before = survivor.metric("rag_jobs_reclaimed_total")
        doomed.proc.kill()
        killed_at = time.time()
        assert doomed.proc.wait(60) == -9
    finally:
        os.kill(cluster.api.proc.pid, signal.SIGCONT)
    done = cluster.finished(doomed_job)
    assert (done.attempts, holder_pid(done)) == (2, survivor.proc.pid)
    assert survivor.metric("rag_jobs_reclaimed_total") == reclaimed_before + 1
    print(f"kill -9 to reclaim: {done.started_at.timestamp() - killed_at:.2f} s (lease {LEASE_SECONDS} s)")
    document = cluster.document("killed")
    chunks = sorted(
        h["chunk_index"] for h in cluster.hits("DELTA glacier valley notes") if h["document_id"] == "killed"
    )
    assert chunks == list(range(document["chunk_count"]))  # stored once: every chunk, none twice
