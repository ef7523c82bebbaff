"""How long the edge store freezes the process while it builds indexes, before and after bounded optimisation.

    python bench/optimize_stall.py --points 20000 --write docs/benchmarks.md

qdrant-edge-py 0.9.0 holds the GIL for the whole of ``EdgeShard.optimize()``: while an index builds, no other
Python thread runs (the service's event loop included). This script ingests N points through the service's
``EdgeVectorStore`` with its background optimizer on, as a steady ingest would (batches of 256, no pauses),
while two other threads run:

- a **heartbeat** that wakes every 5 ms: the longest gap between two beats is the longest time the process
  could not run Python (what an HTTP request arriving then waits);
- a **searcher** doing tenant-filtered top-5 queries back to back: how many completed, and the slowest.

Both policies run in one process on the same vectors, one after the other:

- **before**: the engine's optimizer defaults (index a segment past ~10 MB, merge towards a few large
  segments) and one optimisation pass once writes pause (``EDGE_OPTIMIZE_IDLE_SECONDS``), the adapter's
  behaviour before this change;
- **after**: the adapter's defaults (a pass per ``EDGE_OPTIMIZE_CHUNK_POINTS`` written points, segments capped
  at ``EDGE_SEGMENT_POINTS``).

Vectors: the same real-embedding corpus as bench/scale.py when ``--vectors`` points to a saved .npy of
embeddings, otherwise random unit vectors (harder for HNSW than real text: conservative). The run ends when
every pass has finished; it reports the time to a fully indexed store and search latency on the result.
Results replace the section between the stall markers in docs/benchmarks.md (``--write``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sections import replace_section  # noqa: E402

from service.app.store.edge import EdgeVectorStore  # noqa: E402
from service.app.store.vectors import ChunkPoint  # noqa: E402

START = "<!-- stall:start -->"
END = "<!-- stall:end -->"
BATCH = 256


def corpus(n: int, source: Path | None, rng: np.random.Generator) -> np.ndarray:
    if source is not None:
        base = np.load(source).astype(np.float32)
        picks = rng.integers(0, len(base), size=max(0, n - len(base)))
        noisy = base[picks] + rng.normal(0, 0.02, size=(len(picks), base.shape[1])).astype(np.float32)
        vectors = np.vstack([base, noisy])[:n]
    else:
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def run(policy: str, vectors: np.ndarray, work: Path, idle: float) -> dict:
    n, dim = vectors.shape
    store = EdgeVectorStore(work / policy / "c", collection="c", dimension=dim, optimize_idle_seconds=idle)
    if policy == "before":
        # The engine's defaults, and a pass only once writes pause: what the adapter did before.
        store._indexing_threshold_kb = store._max_segment_kb = store._merge_segment_number = None
        store._optimize_chunk = 10**12
    store.ensure_collection()
    optimizer = store._optimizer
    assert optimizer is not None
    optimizer.finished.wait()  # the start-up pass on the empty shard
    tenants = np.where(np.arange(n) % 10 == 0, "other", "t")
    stop = threading.Event()
    gaps: list[float] = []
    search_latencies: list[float] = []

    def heartbeat() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    def searcher() -> None:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            store.search("t", vectors[(i * 7919) % n].tolist(), limit=5)
            search_latencies.append(time.perf_counter() - started)
            i += 1

    threads = [threading.Thread(target=heartbeat), threading.Thread(target=searcher)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for start in range(0, n, BATCH):
        store.upsert(
            [
                ChunkPoint(
                    tenant_id=str(tenants[i]),
                    document_id=f"doc-{i // 10}",
                    version=1,
                    chunk_index=i % 10,
                    text="x",
                    vector=vectors[i].tolist(),
                    metadata={},
                    content_hash="h",
                    model="m",
                )
                for i in range(start, min(n, start + BATCH))
            ]
        )
    ingested = time.perf_counter() - started
    while not optimizer.idle:  # until the pass after the last write (the idle pass) has finished
        time.sleep(0.05)
    indexed = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    during = len(search_latencies)
    after = []
    for i in range(200):
        t0 = time.perf_counter()
        store.search("t", vectors[(i * 104729) % n].tolist(), limit=5)
        after.append(time.perf_counter() - t0)
    info = store.shard.info()
    store.close()
    return {
        "policy": policy,
        "max_stall": max(gaps),
        "stalls_over_1s": sum(1 for g in gaps if g > 1.0),
        "searches": during,
        "slowest_search": max(search_latencies),
        "ingest": ingested,
        "indexed": indexed,
        "passes": optimizer.runs,
        "backlog": optimizer.largest_backlog,
        "segments": info.segments_count,
        "p50_after": statistics.median(after) * 1000,
    }


def render(rows: list[dict], setup: str) -> str:
    lines = [
        START,
        "",
        setup,
        "",
        "| policy | longest stall (s) | stalls > 1 s | searches done during the run | slowest search (s) "
        "| ingest / fully indexed (s) | passes | largest backlog (points) | segments | search p50 after (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['max_stall']:.2f} | {r['stalls_over_1s']} | {r['searches']:,} "
            f"| {r['slowest_search']:.2f} | {r['ingest']:.1f} / {r['indexed']:.1f} | {r['passes']} "
            f"| {r['backlog']:,} | {r['segments']} | {r['p50_after']:.2f} |"
        )
    if len(rows) == 2:
        before, after = rows
        lines += [
            "",
            f"Longest stall after / before: {after['max_stall'] / before['max_stall']:.2f}x; searches completed "
            f"during the run: {after['searches'] / max(1, before['searches']):.2f}x; search p50 on the "
            f"indexed store: {after['p50_after'] / before['p50_after']:.2f}x.",
        ]
    return "\n".join([*lines, "", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument(
        "--vectors", type=Path, help=".npy of real embeddings to replicate (bench/scale.py corpus)"
    )
    parser.add_argument(
        "--idle", type=float, default=1.0, help="EDGE_OPTIMIZE_IDLE_SECONDS for both policies"
    )
    parser.add_argument("--policies", default="before,after")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    vectors = corpus(args.points, args.vectors, np.random.default_rng(13))
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-stall-") as work:
        for policy in args.policies.split(","):
            rows.append(run(policy, vectors, Path(work), args.idle))
            print(rows[-1], flush=True)
    load = os.getloadavg()
    setup = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, load average "
        f"{load[0]:.1f} at the end (shared machine: compare the rows, not the absolute seconds). "
        f"{args.points:,} points of {vectors.shape[1]} dimensions "
        f"({'real embeddings replicated with noise' if args.vectors else 'random unit vectors'}), 90 % in the "
        f"searched tenant, ingested in batches of {BATCH} with no pause; EDGE_OPTIMIZE_IDLE_SECONDS={args.idle}."
    )
    table = render(rows, setup)
    print(table)
    if args.write:
        replace_section(args.write, table, START, END, heading="")


if __name__ == "__main__":
    main()
