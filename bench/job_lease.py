"""Job leases with the DEFAULT settings (JOB_LEASE_SECONDS=30, JOBS_SWEEP_SECONDS=5): how long a job whose worker
was killed (SIGKILL) mid-job waits before another worker takes it over, and what the heartbeat costs.

    .venv/bin/python bench/job_lease.py [--rounds 2] [--write docs/benchmarks.md]

Real processes: Postgres, Redis, the API (lending its embedded store) and two `python -m service.worker`. Each
round submits a job, holds it mid-write (the API SIGSTOPped, so the kill lands mid-job), SIGKILLs the worker
holding it, continues the API and measures kill -> the other worker's claim (`started_at` of attempt 2). The
expected range is (2/3 x lease, lease] + at most one sweep: the last renewal was up to a third of a lease before
the kill. The heartbeat's cost: the latency of one renewal (a single-row UPDATE) on this Postgres, and the
write rate it means (one renewal per running job every lease/3). The table replaces the section between the
job-lease markers in docs/benchmarks.md (``--write``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sections import replace_section  # noqa: E402

from service.app.core.config import Settings  # noqa: E402
from service.app.store.jobstore import JobTable  # noqa: E402
from service.app.store.registry import DocumentRegistry  # noqa: E402
from tests.service.service_process import wait_for  # noqa: E402
from tests.service.support import create_database  # noqa: E402
from tests.service.test_job_lease_processes import (  # noqa: E402
    Api,
    Cluster,
    holder_pid,
    sentences,
    spawn,
    wait_ready,
)
from tests.support.servers import _stop, free_port, postgres_server, redis_server  # noqa: E402

START, END = "<!-- job-lease:start -->", "<!-- job-lease:end -->"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def reclaim_round(cluster: Cluster, index: int) -> tuple[float, float]:
    """(kill -> claim by the other worker, kill -> job succeeded), in seconds."""
    job_id = cluster.submit(f"killed-{index}", sentences(f"ROUND{index}", 40))
    running = wait_for(lambda: (r := cluster.job(job_id)).status == "running" and r, "the job to start")
    os.kill(cluster.api.proc.pid, signal.SIGSTOP)
    try:
        doomed = next(w for w in cluster.workers if w.proc.pid == holder_pid(running))
        doomed.proc.kill()
        killed = time.time()
        doomed.proc.wait(60)
    finally:
        os.kill(cluster.api.proc.pid, signal.SIGCONT)
    cluster.workers.remove(doomed)
    done = cluster.finished(job_id)
    assert done.attempts == 2, done
    claim = done.started_at.timestamp() - killed
    finished = done.finished_at.timestamp() - killed if done.finished_at else float("nan")
    cluster.start_worker()  # back to two workers for the next round
    return claim, finished


def renew_latency(table: JobTable, lease: float, count: int = 300) -> list[float]:
    job_id = uuid.uuid4().hex
    table.insert(job_id, "t", "d", "{}")
    row = table.claim(job_id, lease)
    assert row is not None
    assert row.lease_token
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        assert table.renew(job_id, row.lease_token, lease)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path, default=None, help="docs/benchmarks.md to update")
    args = parser.parse_args()
    defaults = Settings(_env_file=None)
    lease, sweep = defaults.job_lease_seconds, defaults.jobs_sweep_seconds
    load_before = load()
    with ExitStack() as stack, TemporaryDirectory(prefix="job-lease-bench-") as tmp:
        workdir = Path(tmp)
        database_url = create_database(stack.enter_context(postgres_server("bench")), "lease_bench")
        settings = {
            "environment": "test",
            "database_url": database_url,
            "redis_url": stack.enter_context(redis_server()),
            "internal_token": secrets.token_urlsafe(32),
            "data_dir": str(workdir / "data"),
            "auth_disabled": "true",
            "rate_limit_enabled": "false",
            "log_json": "true",
        }
        port = free_port()
        proc, log = spawn("service", workdir, "api", {**settings, "host": "127.0.0.1", "port": str(port)})
        registry = DocumentRegistry(database_url)
        cluster = Cluster(workdir, settings, Api(proc, f"http://127.0.0.1:{port}"), JobTable(registry))
        try:
            wait_ready(proc, log, f"{cluster.api.url}/readyz")
            cluster.start_worker()
            cluster.start_worker()
            rounds = [reclaim_round(cluster, i) for i in range(args.rounds)]
            latency = renew_latency(cluster.table, lease)
        finally:
            for worker in cluster.workers:
                _stop(worker.proc)
            _stop(proc)
            registry.close()
    load_after = load()
    claims = [c for c, _ in rounds]
    p50 = statistics.median(latency)
    p95 = sorted(latency)[int(len(latency) * 0.95)]
    per_job = 3 / lease
    lines = [
        START,
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `bench/job_lease.py --rounds {args.rounds}` "
        f"(load {load_before} before, {load_after} after; shared machine, times indicative). Defaults: "
        f"JOB_LEASE_SECONDS={lease:g}, JOBS_SWEEP_SECONDS={sweep:g}, two workers, Postgres and Redis local.",
        "",
        "| What | Value |",
        "|---|---|",
        *(
            f"| round {i + 1}: SIGKILL -> other worker claims the job / job succeeded | {c:.1f} s / {f:.1f} s |"
            for i, (c, f) in enumerate(rounds)
        ),
        f"| expected kill -> claim | {lease * 2 / 3:.0f}-{lease + sweep:.0f} s (2/3 to 1 lease after the kill, plus at most one sweep, plus the wake-up's delivery and the claim) |",
        f"| before this change (lease = GC_GRACE_SECONDS) | up to {defaults.gc_grace_seconds:.0f} s + one sweep |",
        f"| one renewal (single-row UPDATE, Postgres, from this process) | p50 {p50:.2f} ms, p95 {p95:.2f} ms |",
        f"| heartbeat writes per running job | {per_job:.2f}/s (one every {lease / 3:g} s); "
        f"20 workers x 2 jobs: {40 * per_job:.1f}/s |",
        "",
        f"Mean kill -> claim over the rounds: {statistics.mean(claims):.1f} s.",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        replace_section(
            args.write, section, START, END, heading="## Job leases: kill -9 to reclaim, heartbeat cost"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
