"""The engine's levers at 100k, on layouts the service's own code builds: consolidation cap x beam x oversampling.

    python bench/segment_levers.py --cache DIR --work DIR --caps 30720,61440,102400 --ef 100,160,250

Builds bench/scale.py's 100k corpus (2,000 real chunks replicated with noise, tenant filter on 90 %; embeddings
cached in ``--cache``) through ``EdgeVectorStore``'s bounded indexing (13 segments at the defaults, int8), then
consolidates a copy of it at each cap with ``EdgeVectorStore.consolidate()``, each in a fresh process so its
figures are its own: the merge's wall time, the consolidation child's peak RSS (``RUSAGE_CHILDREN``), the swap,
the segments left, and the RSS of that process after loading the merged shard and running the queries once (what
the shard adds to a serving process). ``--m`` also merges with another graph (links per point) for comparison.

Then every layout is loaded with a search pool of one (``--threads``: also with a pool of that many) and searched
with the service's dense request (the tenant filter, ``limit`` 9 as service.app.search reads for top_k 5, the
payload fields a hit is built from), interleaved query by query over every (layout, pool, ef, oversampling)
variant in a rotating order (the first engine call with a new vector pays its cache misses):

- **CPU ms per query**: ``time.process_time()`` around the call (every thread of the process: the pool's too);
- **wall ms**: ``time.perf_counter()`` around the same call;
- **recall@5**: the first 5 hits against a numpy exact scan over the tenant's points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import qdrant_edge as qe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402
import segments as segments_bench  # noqa: E402

from service.app.store.edge import (  # noqa: E402
    DENSE_VECTOR,
    HIT_PAYLOAD,
    QUANTIZATION_OVERSAMPLING,
    EdgeVectorStore,
    copy_sparse,
)
from service.app.store.vectors import point_id  # noqa: E402

LIMIT = 9  # what service.app.search's _visible_hits asks the store for, for top_k 5
TOP_K = 5


def corpus(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = np.load(args.cache / "base.npy")
    queries = np.load(args.cache / "queries.npy")[: args.queries]
    rng = np.random.default_rng(args.seed)
    vectors = scale.replicate(base, args.points, rng)
    tenants = np.where(rng.random(args.points) < 0.9, scale.TENANT, "other")
    return vectors, tenants, queries


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def consolidate_one(args: argparse.Namespace) -> None:
    """(Fresh process) consolidate a copy of the base shard at ``--cap`` and report its costs as JSON."""
    dest = Path(args.dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.source, dest, copy_function=copy_sparse)
    store = EdgeVectorStore(
        dest,
        collection="c",
        dimension=384,
        optimize_idle_seconds=None,
        consolidate_idle_seconds=3600,
        consolidate_segment_points=args.cap,
    )
    if args.m:
        hnsw = store._consolidation_hnsw
        store._consolidation_hnsw = lambda: {**hnsw(), "m": args.m}  # type: ignore[method-assign]
    store.ensure_collection()
    started = time.perf_counter()
    store.consolidate()
    seconds = time.perf_counter() - started
    result = store.last_consolidation or {}
    segments = store.shard.info().segments_count
    store.close()
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    vectors, tenants, queries = corpus(args)
    del vectors, tenants
    before = rss_mb()
    shard = qe.EdgeShard.load(str(dest))
    tenant_filter = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue(scale.TENANT))])
    for q in queries:
        shard.query(
            qe.QueryRequest(
                limit=LIMIT,
                query=qe.Query.Nearest(q.tolist(), using=DENSE_VECTOR),
                filter=tenant_filter,
                with_payload=HIT_PAYLOAD,
            )
        )
    loaded = rss_mb()
    shard.close()
    print(
        json.dumps(
            {
                "cap": args.cap,
                "m": args.m or 32,
                "segments": segments,
                "seconds": seconds,
                "swap": result.get("swap_seconds"),
                "child_peak_rss_mb": child_rss,
                "shard_rss_mb": loaded - before,
            }
        ),
        flush=True,
    )


def layout_name(cap: int, m: int) -> str:
    return f"cap{cap}" + (f"-m{m}" if m else "")


def measure(
    layouts: dict[str, Path],
    threads: list[int],
    efs: list[int],
    oversamplings: list[float],
    vectors: np.ndarray,
    tenants: np.ndarray,
    queries: np.ndarray,
    pairs: dict[str, int] | None = None,
) -> dict:
    shards = {
        (name, t): qe.EdgeShard.load(
            str(path),
            qe.EdgeConfig(
                vectors={
                    DENSE_VECTOR: qe.EdgeVectorParams(size=vectors.shape[1], distance=qe.Distance.Cosine)
                },
                max_search_threads=t,
            ),
        )
        for name, path in layouts.items()
        for t in threads
    }
    tenant_filter = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue(scale.TENANT))])
    mask = tenants == scale.TENANT
    rows, matrix = np.flatnonzero(mask), vectors[mask]
    ids = {point_id(str(tenants[i]), f"doc-{i // 10}", 1, i % 10): i for i in range(len(vectors))}
    variants = [(key, ef, os_) for key in shards for ef in efs for os_ in oversamplings]
    if pairs:  # one beam per layout: each query is then new to every shard it is timed on
        variants = [(key, pairs[key[0]], oversamplings[0]) for key in shards]
    cpu: dict = {v: [] for v in variants}
    wall: dict = {v: [] for v in variants}
    hits: dict = dict.fromkeys(variants, 0)
    for shard in shards.values():
        shard.query(qe.QueryRequest(limit=5, query=qe.Query.Nearest(queries[0].tolist(), using=DENSE_VECTOR)))
    for i in range(len(queries)):
        order = np.argsort(-(matrix @ queries[i]))[:TOP_K]
        truth = set(rows[order].tolist())
        vector = queries[i].tolist()
        shift = i % len(variants)
        for key, ef, os_ in variants[shift:] + variants[:shift]:
            request = qe.QueryRequest(
                limit=LIMIT,
                query=qe.Query.Nearest(vector, using=DENSE_VECTOR),
                filter=tenant_filter,
                with_payload=HIT_PAYLOAD,
                params=qe.SearchParams(
                    hnsw_ef=ef, quantization=qe.QuantizationSearchParams(rescore=True, oversampling=os_)
                ),
            )
            c0, w0 = time.process_time(), time.perf_counter()
            found = shards[key].query(request)
            for point in found:
                point.payload  # noqa: B018 (the conversion to Python is part of the cost)
            wall[(key, ef, os_)].append(time.perf_counter() - w0)
            cpu[(key, ef, os_)].append(time.process_time() - c0)
            hits[(key, ef, os_)] += len({ids[str(p.id)] for p in found[:TOP_K]} & truth)
    for shard in shards.values():
        shard.close()
    return {
        f"{key[0]}|t{key[1]}|ef{ef}|os{os_:g}": {
            "cpu_p50": float(np.median(cpu[(key, ef, os_)])) * 1000,
            "cpu_mean": float(np.mean(cpu[(key, ef, os_)])) * 1000,
            "wall_p50": float(np.median(wall[(key, ef, os_)])) * 1000,
            "recall5": hits[(key, ef, os_)] / (TOP_K * len(queries)),
        }
        for key, ef, os_ in variants
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--cache", type=Path, required=True, help="base.npy and queries.npy (bench/segments.py's)"
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="where the shards are built (kept between runs)"
    )
    parser.add_argument("--caps", default="30720,61440,102400")
    parser.add_argument(
        "--m",
        default="",
        help="also merge at these caps with this many links: cap:m or cap:m:tag (another build)",
    )
    parser.add_argument("--ef", default="100,160,250")
    parser.add_argument("--oversampling", default=f"{QUANTIZATION_OVERSAMPLING:g}")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--layouts", default="", help="measure only these layouts (names as printed)")
    parser.add_argument(
        "--pairs", default="", help="layout:ef,...: each layout at one beam only (the --ef grid is ignored)"
    )
    parser.add_argument("--consolidate-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--merge-m", dest="merge_m", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consolidate_one:
        args.m = args.merge_m
        consolidate_one(args)
        return
    vectors, tenants, queries = corpus(args)
    base = args.work / "base" / "c"
    if not (args.work / "base" / "built.json").is_file():
        shutil.rmtree(args.work / "base", ignore_errors=True)
        built = segments_bench.build(base, vectors, tenants, ["stdlib text " * 20], quantization=True)
        (args.work / "base" / "built.json").write_text(json.dumps(built))
    print("base", (args.work / "base" / "built.json").read_text(), flush=True)
    # cap, or cap:m, or cap:m:tag (another build of the same layout, for the build-to-build spread)
    plan = [(int(c), 0, "") for c in args.caps.split(",") if c]
    plan += [
        (int(p.split(":")[0]), int(p.split(":")[1]), ":".join(p.split(":")[2:]))
        for p in args.m.split(",")
        if p
    ]
    layouts: dict[str, Path] = {}
    for cap, m, tag in plan:
        name = layout_name(cap, m) + (f"-{tag}" if tag else "")
        dest = args.work / name / "c"
        done = args.work / name / "consolidated.json"
        if not done.is_file():
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--consolidate-one",
                    "--cache",
                    str(args.cache),
                    "--work",
                    str(args.work),
                    "--source",
                    str(base),
                    "--dest",
                    str(dest),
                    "--cap",
                    str(cap),
                    "--merge-m",
                    str(m),
                    "--points",
                    str(args.points),
                    "--queries",
                    str(args.queries),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            done.write_text(out.strip().splitlines()[-1])
        print(name, done.read_text(), flush=True)
        wanted = (
            args.layouts.split(",") if args.layouts else [p.split(":")[0] for p in args.pairs.split(",") if p]
        )
        if not wanted or name in wanted:
            layouts[name] = dest
    load_before = os.getloadavg()[0]
    measured = measure(
        layouts,
        [int(t) for t in args.threads.split(",")],
        [int(e) for e in args.ef.split(",")],
        [float(o) for o in args.oversampling.split(",")],
        vectors,
        tenants,
        queries,
        {p.split(":")[0]: int(p.split(":")[1]) for p in args.pairs.split(",") if p} or None,
    )
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after; {args.points:,} points, "
        f"{len(queries)} queries, limit {LIMIT}"
    )
    print(json.dumps(measured), flush=True)
    print("| variant | CPU ms p50 | CPU ms mean | wall ms p50 | recall@5 |")
    for name, r in measured.items():
        print(
            f"| {name} | {r['cpu_p50']:.2f} | {r['cpu_mean']:.2f} | {r['wall_p50']:.2f} | {r['recall5']:.3f} |"
        )


if __name__ == "__main__":
    main()
