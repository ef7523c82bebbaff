"""What a metadata payload index costs in qdrant-edge, and what a write with new metadata keys costs a searcher.

    python bench/metadata_index.py --sizes 1000,10000,100000 --write docs/benchmarks.md

qdrant-edge-py 0.9.0 builds a payload index inside ``shard.update(create_field_index(...))``, holding the GIL
(no other Python thread runs meanwhile). Three measurements, each in this one process:

1. **Build cost by collection size**: a shard of N points (random unit vectors, 10 chunks per document, four
   metadata keys per point, unindexed, one unoptimized segment), then one keyword and one integer index built
   on keys every point has, and one on a key no point has yet (what a tenant's new key costs). A heartbeat thread
   that wakes every millisecond gives the longest time the process could not run Python during the build.
2. **Build cost by indexes already there**: 64 keyword indexes built one after the other on the smallest shard
   (the cost of the k-th build, which grows with k: what METADATA_INDEX_MAX_KEYS bounds).
3. **A write with new keys, beside a searcher**: a searcher thread runs tenant-filtered top-5 searches back to
   back on the smallest shard while one document (10 chunks) arrives carrying ``--new-keys`` new metadata keys:
   "inline" builds every index inside the write before its points (the store's behaviour before the fix, what
   the reporter measured); "background" is the store as it is (the write admits the keys and returns; the
   ``edge-metadata-index`` thread builds them, paced). Reported: the write's own time, the searches done while
   the write (inline) or the index builds (background) ran, and the slowest of them.

Results replace the section between the markers in docs/benchmarks.md (``--write``).
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
from importlib.metadata import version
from pathlib import Path

import numpy as np
import qdrant_edge as qe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sections import replace_section  # noqa: E402

from service.app.store.edge import EdgeVectorStore  # noqa: E402
from service.app.store.sparse import SparseVector  # noqa: E402
from service.app.store.vectors import ChunkPoint  # noqa: E402

START = "<!-- metadata-index:start -->"
END = "<!-- metadata-index:end -->"
DIM = 384
BATCH = 2048
SPARSE = SparseVector([1, 2, 3], [1.0, 0.5, 0.25])


class Heartbeat:
    """Wakes every millisecond; ``gap()`` is the longest time between two beats since ``reset()``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._longest = 0.0
        self._last = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            now = time.perf_counter()
            self._longest = max(self._longest, now - self._last)
            self._last = now

    def reset(self) -> None:
        self._last = time.perf_counter()
        self._longest = 0.0

    def gap(self) -> float:
        time.sleep(0.005)  # let the beat after the measured call land
        return self._longest

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def points(
    n: int, rng: np.random.Generator, *, offset: int = 0, metadata: dict | None = None
) -> list[ChunkPoint]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        ChunkPoint(
            tenant_id=f"t{(offset + i) % 10}",
            document_id=f"d{(offset + i) // 10}",
            version=1,
            chunk_index=(offset + i) % 10,
            text="x",
            vector=vectors[i],
            metadata=metadata
            if metadata is not None
            else {"team": f"team{i % 7}", "year": 2000 + i % 25, "lang": "en", "rank": i},
            content_hash="h",
            model="m",
            sparse=SPARSE,
        )
        for i in range(n)
    ]


def shard(work: Path, name: str, n: int, rng: np.random.Generator, **options) -> EdgeVectorStore:
    store = EdgeVectorStore(
        work / name, collection=name, dimension=DIM, optimize_idle_seconds=None, **options
    )
    store.ensure_collection()
    assert store.metadata_budget is not None
    store.metadata_budget.limit = 0  # the bench builds the indexes itself
    for start in range(0, n, BATCH):
        store.upsert(points(min(BATCH, n - start), rng, offset=start))
    store.metadata_budget.limit = store.metadata_index_max_keys
    return store


def timed_build(
    store: EdgeVectorStore, key: str, schema: qe.PayloadSchemaType, beat: Heartbeat
) -> tuple[float, float]:
    beat.reset()
    started = time.perf_counter()
    store.shard.update(qe.UpdateOperation.create_field_index(f"metadata.{key}", schema))
    took = time.perf_counter() - started
    return took, beat.gap()


def by_size(sizes: list[int], work: Path, rng: np.random.Generator, beat: Heartbeat) -> list[str]:
    rows = [
        "| points | keyword index build | integer index build | a key no point has yet | longest stall (heartbeat) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        store = shard(work, f"size{n}", n, rng)
        keyword, gap1 = timed_build(store, "team", qe.PayloadSchemaType.Keyword, beat)
        integer, gap2 = timed_build(store, "rank", qe.PayloadSchemaType.Integer, beat)
        absent, gap3 = timed_build(store, "absent", qe.PayloadSchemaType.Keyword, beat)
        rows.append(
            f"| {n:,} | {keyword:.3f} s | {integer:.3f} s | {absent:.3f} s | {max(gap1, gap2, gap3):.3f} s |"
        )
        print(rows[-1], flush=True)
        store.close()
    return rows


def by_count(n: int, work: Path, rng: np.random.Generator, beat: Heartbeat, keys: int = 64) -> list[str]:
    store = shard(work, "count", n, rng, metadata_index_max_keys=keys)
    # Every point carries every key, so each build indexes all N points.
    store.upsert(points(n, rng, metadata={f"k{j}": f"v{j % 5}" for j in range(keys)}))
    took = [timed_build(store, f"k{j}", qe.PayloadSchemaType.Keyword, beat)[0] for j in range(keys)]
    store.close()
    rows = [
        "| indexes already there | build time (median of the 8) | cumulative build time |",
        "|---:|---:|---:|",
    ]
    for first in range(0, keys, 8):
        rows.append(
            f"| {first}-{first + 7} | {statistics.median(took[first : first + 8]):.3f} s | "
            f"{sum(took[: first + 8]):.1f} s |"
        )
    print("\n".join(rows), flush=True)
    return rows


def with_searcher(n: int, new_keys: int, work: Path, rng: np.random.Generator) -> list[str]:
    rows = [
        "| policy | the write | searches meanwhile | slowest search | median search | index work lasted |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    query = rng.standard_normal(DIM).astype(np.float32)
    for policy in ("inline", "background"):
        store = shard(work, f"searcher-{policy}", n, rng, metadata_index_max_keys=new_keys)
        assert store.indexer is not None
        stop = threading.Event()
        latencies: list[float] = []
        marks: list[float] = []

        def search(
            store: EdgeVectorStore = store,
            latencies: list[float] = latencies,
            marks: list[float] = marks,
            stop: threading.Event = stop,
        ) -> None:
            while not stop.is_set():
                started = time.perf_counter()
                store.search("t1", query, limit=5)
                latencies.append(time.perf_counter() - started)
                marks.append(started)

        searcher = threading.Thread(target=search, daemon=True)
        searcher.start()
        while not latencies:
            time.sleep(0.01)
        doc = points(10, rng, offset=n, metadata={f"new{j}": f"v{j}" for j in range(new_keys)})
        started = time.perf_counter()
        if policy == "inline":  # what upsert did before: each new key's index built in the request
            for j in range(new_keys):
                store.shard.update(
                    qe.UpdateOperation.create_field_index(f"metadata.new{j}", qe.PayloadSchemaType.Keyword)
                )
        store.upsert(doc)
        write = time.perf_counter() - started
        if policy == "background":
            while len(store.indexer.pending):
                store.indexer.built.wait(1)
                store.indexer.built.clear()
        finished = time.perf_counter()
        stop.set()
        searcher.join()
        during = [lat for lat, mark in zip(latencies, marks, strict=True) if started <= mark <= finished]
        rows.append(
            f"| {policy} | {write:.3f} s | {len(during)} | {max(during, default=0):.3f} s | "
            f"{statistics.median(during) if during else 0:.4f} s | {finished - started:.1f} s |"
        )
        print(rows[-1], flush=True)
        store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--new-keys", type=int, default=16)
    parser.add_argument("--write", type=Path, default=None, help="docs/benchmarks.md to update")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(7)
    load_before = os.getloadavg()
    beat = Heartbeat()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size_rows = by_size(sizes, work, rng, beat)
        count_rows = by_count(min(sizes), work, rng, beat)
        searcher_rows = with_searcher(min(sizes), args.new_keys, work, rng)
    beat.stop()
    load_after = os.getloadavg()
    section = "\n".join(
        [
            START,
            f"`python bench/metadata_index.py --sizes {args.sizes} --new-keys {args.new_keys}`, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"qdrant-edge-py {version('qdrant-edge-py')}, "
            f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after.",
            "",
            "One payload index build (`create_field_index`) on a shard of N points, 4 metadata keys per point:",
            "",
            *size_rows,
            "",
            f"Keyword index builds one after the other on {min(sizes):,} points that all carry the 64 keys:",
            "",
            *count_rows,
            "",
            f"One 10-chunk document with {args.new_keys} new metadata keys, while a searcher thread runs "
            f"tenant-filtered top-5 searches back to back ({min(sizes):,} points):",
            "",
            *searcher_rows,
            END,
        ]
    )
    print(section)
    if args.write:
        replace_section(args.write, section, START, END, heading="## Metadata payload indexes")


if __name__ == "__main__":
    main()
