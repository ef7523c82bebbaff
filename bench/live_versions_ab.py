"""CPU per search of the registry part of search: the live-version copy (REGISTRY_OUTAGE_SEARCH_SECONDS > 0) against
main's path (the copy off: one snapshot and one active-version query per search), interleaved in one process.

Each "search" judges 9 hits (the service's first page at top_k 5) drawn from a hot set of ``--hot`` documents of a
tenant of ``--documents`` documents, as `SearchService._visible_hits` does: open the view, look the ids up. Every
round pair draws FRESH id sets (the same ones for A and B), so the copy arm meets ids it does not hold yet as a real
tenant's new queries do; the copy's hit rate (ids answered from the copy / ids looked up) is printed with the ratio:
B/A means little without it. Rounds alternate A (off) and B (on); the figure is process CPU per search
(time.process_time around each search), median of rounds, and the B/A ratio. ``--writes`` bumps the tenant's
data_version every that many searches (a tenant under ingest: the copy restarts empty after each).

    python bench/live_versions_ab.py                      # SQLite file under a temp dir
    python bench/live_versions_ab.py --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from service.app.store.live_versions import LiveVersions
from service.app.store.registry import DocumentRegistry

TENANT = f"bench-{os.getpid()}"  # a fresh tenant per run (a reused database keeps older runs)


def fill(registry: DocumentRegistry, documents: int) -> None:
    for index in range(documents):
        registry.activate(
            TENANT,
            f"doc-{index}",
            expected_version=None,
            version=1,
            content_hash="h",
            metadata={},
            content_type="text/plain",
            chunk_count=1,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--hot", type=int, default=200, help="documents the searches hit")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--searches", type=int, default=500, help="searches per round")
    parser.add_argument("--writes", type=int, default=0, help="a write every N searches (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'registry.db'}"
        registry = DocumentRegistry(url, durable=False)
        registry.migrate()
        fill(registry, args.documents)
        rng = random.Random(7)
        hot = [f"doc-{i}" for i in rng.sample(range(args.documents), args.hot)]
        off = LiveVersions(registry, outage_seconds=0)
        on = LiveVersions(registry, outage_seconds=120)
        version = [1]

        def writer(n: int) -> None:
            if args.writes and n % args.writes == 0:
                current = version[0]
                version[0] += 1
                registry.activate(
                    TENANT,
                    "doc-0",
                    expected_version=current,
                    version=version[0],
                    content_hash="h",
                    metadata={},
                    content_type="text/plain",
                    chunk_count=1,
                )

        hits = [0, 0]  # ids the copy arm found in its copy, ids it looked up

        def timed(live: LiveVersions, searches: list[list[str]]) -> float:
            total = 0.0
            for n, ids in enumerate(searches):
                writer(n)
                if live is on:  # outside the timed window
                    copy = on._copies.get(TENANT)
                    held = copy.versions if copy is not None else {}
                    hits[0] += sum(1 for d in ids if d in held)
                    hits[1] += len(ids)
                started = time.process_time()
                with live.view(TENANT) as view:
                    view.active_versions(ids)
                total += time.process_time() - started
            return total / len(searches)

        def draw() -> list[list[str]]:
            return [rng.sample(hot, 9) for _ in range(args.searches)]

        warm = draw()
        timed(off, warm), timed(on, warm)  # warm both (the connections, the code paths) ...
        on.forget(TENANT)  # ... but the measured rounds start with an empty copy
        hits[:] = [0, 0]
        a, b = [], []
        for round_ in range(args.rounds):
            searches = draw()  # fresh ids every round: the copy holds only what earlier rounds looked up
            first, second = (off, on) if round_ % 2 == 0 else (on, off)
            x, y = timed(first, searches), timed(second, searches)
            (a if first is off else b).append(x)
            (b if second is on else a).append(y)
        ma, mb = statistics.median(a), statistics.median(b)
        print(
            f"{registry.dialect}: off (main's path) {ma * 1e6:.1f} us CPU/search, copy on {mb * 1e6:.1f} us, "
            f"B/A {mb / ma:.2f}, copy hit rate {hits[0] / max(hits[1], 1):.2f} (median of {args.rounds} interleaved "
            f"rounds of {args.searches} searches, hot set {args.hot} of {args.documents}"
            f"{f', a write every {args.writes}' if args.writes else ''})"
        )
        registry.close()


if __name__ == "__main__":
    main()
