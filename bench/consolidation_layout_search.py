"""What a layout the consolidation now leaves alone costs a search at 100k, against the one stop 19 merged it into.

    python bench/consolidation_layout_search.py --cache DIR --work DIR [--points 100000] [--sealed 3]

Below the merge cap, `merge_worthwhile` (service/app/store/edge.py) leaves a merged segment alone while up to three
sealed segments of the serving process (4,096 points each) wait beside it; stop 19's decision merged each of them
into it. So on the same points (bench/scale.py's corpus, bench/segment_builds.py's draw ``--seed``), through
bench/consolidation_growth.py's fresh processes: ``--points`` minus ``--sealed`` x 4,096 written and merged (one
merged segment), then the sealed ones written (each sealed by its optimizer pass): layout **left** (merged +
sealed + the appendable one, as the new decision leaves it; its consolidation is asked for and must start no
child). A copy consolidated with stop 19's decision: layout **merged** (one merged segment + the appendable one).
``left`` is opened twice: with the search pool its 5 segments get at a start-up (``left, pool``) and with the
calling thread (``left, 1 thread``: what a running service keeps, since the pool is chosen at the last swap, when
the shard had 2 segments). Then the same tenant-filtered dense top-5 queries (the corpus's real query vectors)
go to each store in turn, query by query (interleaved), through ``EdgeVectorStore.search``: per layout the p50 /
p95 latency, the CPU per query, and recall@5 against an exact numpy scan of the tenant's points.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import consolidation_growth  # noqa: E402
import scale  # noqa: E402
import segment_builds  # noqa: E402

from service.app.store import edge  # noqa: E402
from service.app.store.edge import EdgeVectorStore  # noqa: E402

SEALED = edge.OPTIMIZE_CHUNK_POINTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, required=True, help="base.npy, queries.npy (bench/scale.py's --cache)"
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch (removed)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--sealed", type=int, default=3)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the shards (a second run skips the build)")
    args = parser.parse_args()
    args.m, args.cap = edge.HNSW_M, edge.CONSOLIDATE_SEGMENT_POINTS
    left, merged, single = (args.work / name / "c" for name in ("left", "merged", "single"))
    base = args.points - args.sealed * SEALED
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.points:,} points", flush=True)
    if not (left / "consolidation.json").is_file():
        shutil.rmtree(args.work, ignore_errors=True)
        left.parent.mkdir(parents=True)

        def step(what: str, dest: Path, start: int, count: int, always: bool = False) -> dict:
            return consolidation_growth.step(args, what, dest, args.m, args.cap, start, count, always=always)

        print("base", json.dumps(step("--write-one", left, 0, base)), flush=True)
        print("first merge", json.dumps(step("--merge-one", left, 0, 0)), flush=True)
        for n in range(args.sealed):
            step("--write-one", left, base + n * SEALED, SEALED)
        kept = step("--merge-one", left, 0, 0)
        print("new decision", json.dumps(kept), flush=True)
        if kept["swapped"] or kept["child_peak_rss_mb"]:
            raise SystemExit(f"the new decision started a child on this layout: {kept}")
        for copy in (merged, single):
            shutil.copytree(left.parent, copy.parent, copy_function=edge.copy_sparse)
        print("stop 19's decision", json.dumps(step("--merge-one", merged, 0, 0, always=True)), flush=True)
    vectors, tenants, queries = segment_builds.corpus(args.cache, args.seed, args.points, args.queries)
    mine = np.flatnonzero(tenants == scale.TENANT)
    unit = vectors[mine] / np.linalg.norm(vectors[mine], axis=1, keepdims=True)
    exact = []
    for query in queries:
        scores = unit @ (query / np.linalg.norm(query))
        exact.append({int(i) for i in mine[np.argsort(-scores)[:5]]})
    stores = {}
    for name, path, threads in (
        ("merged", merged, 0),
        ("left, pool", left, 0),
        ("left, 1 thread", single, 1),
    ):
        store = EdgeVectorStore(
            path, collection="c", dimension=384, optimize_idle_seconds=None, search_threads=threads
        )
        store.ensure_collection()
        info = store.shard.info()
        print(f"{name}: {info.segments_count} segments, {info.points_count:,} points", flush=True)
        stores[name] = store
    for store in stores.values():  # warm: every segment paged in
        for query in queries[:50]:
            store.search(scale.TENANT, query.tolist(), limit=5)
    seconds: dict[str, list[float]] = {name: [] for name in stores}
    cpu: dict[str, float] = dict.fromkeys(stores, 0.0)
    found: dict[str, int] = dict.fromkeys(stores, 0)
    for query, truth in zip(queries, exact, strict=True):
        for name, store in stores.items():
            started, used = time.perf_counter(), time.process_time()
            hits = store.search(scale.TENANT, query.tolist(), limit=5)
            seconds[name].append(time.perf_counter() - started)
            cpu[name] += time.process_time() - used
            found[name] += len(truth & {int(h.document_id[4:]) * 10 + h.chunk_index for h in hits})
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| layout | segments | p50 ms | p95 ms | process CPU ms per query | recall@5 |")
    print("|---|---|---|---|---|---|")
    for name, store in stores.items():
        times = np.array(seconds[name]) * 1000
        print(
            f"| {name} | {store.shard.info().segments_count} | {np.percentile(times, 50):.2f} "
            f"| {np.percentile(times, 95):.2f} | {cpu[name] / len(queries) * 1000:.2f} "
            f"| {found[name] / (5 * len(queries)):.3f} |"
        )
        store.close()
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
