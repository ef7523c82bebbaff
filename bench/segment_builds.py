"""Recall over independent builds at 100k: a layout's recall is its worst build's, not one build's.

    python bench/segment_builds.py --cache DIR --work DIR --builds 3 --draws 13,14 \\
        --layout tenant:0:102400 --layout global:64:102400 --ef 250,400,600 --acorn 0,1

(``m`` 0: one graph per tenant of ``HNSW_PAYLOAD_M`` links, the store's layout since stop 20; ``m`` > 0: one
global graph of ``m`` links, the layout of stops 17-19.)

bench/segment_levers.py consolidates copies of ONE base shard; an HNSW build is random (each point's level, the
parallel insertion order), and on bench/scale.py's corpus (2,000 real chunks replicated 50x with noise; the exact
top 5 is decided by the noise) recall@5 moved by up to 0.09 between builds of one layout on the same vectors
(docs/benchmarks.md, "One-segment recall at 100k: the tenant filter, stop 19"). So here every build is
independent: per vector draw (``--draws``: the replication's seed) and layout (``--layout name:m:cap``: links
per point and the consolidation cap), ``--builds`` times, a fresh process builds the 100k shard through
``EdgeVectorStore``'s bounded indexing (int8, the layout's links) and another fresh process consolidates it with
``EdgeVectorStore.consolidate()`` (its merge seconds, the child's CPU seconds and peak RSS from
``RUSAGE_CHILDREN``).

Then, per draw, every build of every layout is searched with the service's dense request (the tenant filter,
``limit`` 9 as service.app.search asks for top_k 5, the hit payload fields, int8 rescored with oversampling 2,
a search pool of one), interleaved query by query over every (build, ef, ACORN on/off) variant in a rotating
order; ``--no-filter`` adds the same without the tenant filter (truth over every point). Reported per layout and
variant: recall@5 of every build, its minimum and median, and CPU ms per query (``query_cpu_seconds``: the CPU
of the thread that calls the engine, ``time.thread_time()``, plus that of the engine's search pool threads,
``edge-search-*`` in /proc/self/task, should it use them; median over the builds' medians). Until stop 21 it was
``time.process_time()``, every thread of the process, and the exact top 5 was computed just before each
query: the BLAS pool spinning after that 100k x 384 product was charged to the query, and the product's
cache eviction doubled the query's own CPU (docs/benchmarks.md, "Reading the numbers"). The truths are now
computed before the timed loop. Builds are kept in ``--work`` (a build directory with ``build.json`` is reused).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import qdrant_edge as qe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402
import segments as segments_bench  # noqa: E402

from service.app.store import edge  # noqa: E402
from service.app.store.edge import (  # noqa: E402
    ACORN_MAX_SELECTIVITY,
    DENSE_VECTOR,
    HIT_PAYLOAD,
    QUANTIZATION_OVERSAMPLING,
    EdgeVectorStore,
)
from service.app.store.vectors import point_id  # noqa: E402

LIMIT = 9  # what service.app.search's _visible_hits asks the store for, for top_k 5
TOP_K = 5
T = TypeVar("T")


def pool_cpu_seconds(prefix: str = "edge-search") -> float:
    """CPU seconds so far of this process's threads whose name starts with ``prefix`` (/proc/self/task/*/comm;
    qdrant-edge names its search pool's threads edge-search-N), from their schedstat (nanoseconds on the CPU)."""
    total = 0
    for task in os.scandir("/proc/self/task"):
        with contextlib.suppress(OSError):
            with open(f"{task.path}/comm", encoding="utf-8", errors="replace") as comm:
                if not comm.read().startswith(prefix):
                    continue
            with open(f"{task.path}/schedstat", "rb") as stat:
                total += int(stat.read().split()[0])
    return total / 1e9


def query_cpu_seconds(call: Callable[[], T]) -> tuple[T, float]:
    """``call()``'s result and the CPU seconds it cost: the calling thread's own CPU (``time.thread_time()``) plus
    what the engine's search pool threads spent meanwhile. Not ``time.process_time()``: that adds every other
    thread of the process (a BLAS pool still spinning after the truth's matrix product, a background optimizer),
    which on a loaded machine lands in whichever query runs next."""
    pool = pool_cpu_seconds()
    started = time.thread_time()
    result = call()
    spent = time.thread_time() - started
    return result, spent + pool_cpu_seconds() - pool


def corpus(cache: Path, seed: int, points: int, queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = np.load(cache / "base.npy")
    rng = np.random.default_rng(seed)
    vectors = scale.replicate(base, points, rng)
    tenants = np.where(rng.random(points) < 0.9, scale.TENANT, "other")
    return vectors, tenants, np.load(cache / "queries.npy")[:queries]


def build(args: argparse.Namespace) -> None:
    """(Fresh process) the base shard through the service's bounded indexing, with ``--m`` links."""
    vectors, tenants, _ = corpus(args.cache, args.seed, args.points, 0)
    edge.HNSW_M = args.m
    started = time.perf_counter()
    built = segments_bench.build(Path(args.dest), vectors, tenants, ["stdlib text " * 20], quantization=True)
    print(json.dumps({**built, "build_seconds": time.perf_counter() - started}), flush=True)


def merge(args: argparse.Namespace) -> None:
    """(Fresh process) consolidate the base shard in place at ``--cap`` with ``--m`` links; report its costs."""
    edge.HNSW_M = args.m
    store = EdgeVectorStore(
        Path(args.dest),
        collection="c",
        dimension=384,
        optimize_idle_seconds=None,
        consolidate_idle_seconds=3600,
        consolidate_segment_points=args.cap,
        quantization=True,
    )
    store.ensure_collection()
    started = time.perf_counter()
    store.consolidate()
    seconds = time.perf_counter() - started
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    segments = store.shard.info().segments_count
    store.close()
    print(
        json.dumps(
            {
                "merge_seconds": seconds,
                "merge_cpu_seconds": child.ru_utime + child.ru_stime,
                "child_peak_rss_mb": child.ru_maxrss / 1024,
                "segments": segments,
            }
        ),
        flush=True,
    )


def make(args: argparse.Namespace, seed: int, name: str, m: int, cap: int, number: int) -> Path:
    """Build ``number`` of layout ``name`` on draw ``seed`` (kept: reused when ``build.json`` is there)."""
    where = args.work / f"s{seed}-{name}-{number}"
    if (where / "build.json").is_file():
        return where
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    common = ["--cache", str(args.cache), "--work", str(args.work), "--points", str(args.points)]
    report: dict = {"load_before": os.getloadavg()[0]}
    for step in ("--build-one", "--merge-one"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                step,
                *common,
                *("--dest", str(where / "c"), "--seed", str(seed), "--m", str(m), "--cap", str(cap)),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        report.update(json.loads(out.strip().splitlines()[-1]))
    (where / "build.json").write_text(json.dumps(report))
    return where


def fetched(shard: qe.EdgeShard, request: qe.QueryRequest) -> list:
    """The query and its hits' payloads (the conversion to Python is part of the cost)."""
    found = shard.query(request)
    for point in found:
        point.payload  # noqa: B018
    return found


def measure(
    builds: dict[tuple[str, int], Path],
    efs: list[int],
    acorns: list[bool],
    filtered: list[bool],
    vectors: np.ndarray,
    tenants: np.ndarray,
    queries: np.ndarray,
) -> dict:
    shards = {
        key: qe.EdgeShard.load(
            str(path / "c"),
            qe.EdgeConfig(
                vectors={
                    DENSE_VECTOR: qe.EdgeVectorParams(size=vectors.shape[1], distance=qe.Distance.Cosine)
                },
                max_search_threads=1,
            ),
        )
        for key, path in builds.items()
    }
    tenant_filter = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue(scale.TENANT))])
    mask = tenants == scale.TENANT
    ids = {point_id(str(tenants[i]), f"doc-{i // 10}", 1, i % 10): i for i in range(len(vectors))}
    variants = [(key, ef, acorn, f) for key in shards for ef in efs for acorn in acorns for f in filtered]
    cpu: dict = {v: [] for v in variants}
    hits: dict = dict.fromkeys(variants, 0)
    for shard in shards.values():
        shard.query(qe.QueryRequest(limit=5, query=qe.Query.Nearest(queries[0].tolist(), using=DENSE_VECTOR)))
    # The exact top 5 of every query first: computed between the queries (a 100k x 384 product streams ~150 MB
    # through the caches, and the BLAS pool spins on after it), it doubled the CPU of the query timed next in
    # a 20k-point check (docs/benchmarks.md, "Reading the numbers").
    truths = []
    for query in queries:
        scores = vectors @ query
        truths.append(
            {
                True: set(np.flatnonzero(mask)[np.argsort(-scores[mask])[:TOP_K]].tolist()),
                False: set(np.argsort(-scores)[:TOP_K].tolist()),
            }
        )
    for i, (query, truth) in enumerate(zip(queries, truths, strict=True)):
        shift = i % len(variants)
        for key, ef, acorn, f in variants[shift:] + variants[:shift]:
            request = qe.QueryRequest(
                limit=LIMIT,
                query=qe.Query.Nearest(query.tolist(), using=DENSE_VECTOR),
                filter=tenant_filter if f else None,
                with_payload=HIT_PAYLOAD,
                params=qe.SearchParams(
                    hnsw_ef=ef,
                    quantization=qe.QuantizationSearchParams(
                        rescore=True, oversampling=QUANTIZATION_OVERSAMPLING
                    ),
                    acorn=qe.AcornSearchParams(enable=True, max_selectivity=ACORN_MAX_SELECTIVITY)
                    if acorn
                    else None,
                ),
            )
            found, seconds = query_cpu_seconds(partial(fetched, shards[key], request))
            cpu[(key, ef, acorn, f)].append(seconds)
            hits[(key, ef, acorn, f)] += len({ids[str(p.id)] for p in found[:TOP_K]} & truth[f])
    for shard in shards.values():
        shard.close()
    return {v: (hits[v] / (TOP_K * len(queries)), float(np.median(cpu[v])) * 1000) for v in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, required=True, help="base.npy and queries.npy (bench/scale.py's)"
    )
    parser.add_argument("--work", type=Path, required=True, help="where the builds are kept")
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--draws", default="13,14", help="seeds of the replication (one vector draw each)")
    parser.add_argument(
        "--layout",
        action="append",
        default=[],
        help=f"name:m:cap (default: one:{edge.HNSW_M}:{edge.CONSOLIDATE_SEGMENT_POINTS}, the service's)",
    )
    parser.add_argument("--ef", default=str(edge.HNSW_EF))
    parser.add_argument("--acorn", default="0,1", help="ACORN off (0) and/or on (1)")
    parser.add_argument("--no-filter", action="store_true", help="also search without the tenant filter")
    parser.add_argument("--build-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--merge-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--m", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_one:
        build(args)
        return
    if args.merge_one:
        merge(args)
        return
    layouts = [
        (name, int(m), int(cap))
        for name, m, cap in (
            spec.split(":")
            for spec in args.layout or [f"one:{edge.HNSW_M}:{edge.CONSOLIDATE_SEGMENT_POINTS}"]
        )
    ]
    efs = [int(e) for e in args.ef.split(",")]
    acorns = [bool(int(a)) for a in args.acorn.split(",")]
    filtered = [True, False] if args.no_filter else [True]
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f}; {args.points:,} points, {args.queries} queries, limit {LIMIT}",
        flush=True,
    )
    rows = []
    for seed in (int(s) for s in args.draws.split(",")):
        builds: dict[tuple[str, int], Path] = {}
        for name, m, cap in layouts:
            for number in range(1, args.builds + 1):
                builds[(name, number)] = make(args, seed, name, m, cap, number)
                print(seed, name, number, (builds[(name, number)] / "build.json").read_text(), flush=True)
        vectors, tenants, queries = corpus(args.cache, seed, args.points, args.queries)
        measured = measure(builds, efs, acorns, filtered, vectors, tenants, queries)
        for name, _, _ in layouts:
            for ef in efs:
                for acorn in acorns:
                    for f in filtered:
                        got = [measured[((name, b), ef, acorn, f)] for b in range(1, args.builds + 1)]
                        recalls = [r for r, _ in got]
                        rows.append(
                            f"| {seed} | {name} | {ef} | {'on' if acorn else 'off'} | {'tenant' if f else 'none'} "
                            f"| {', '.join(f'{r:.3f}' for r in recalls)} | **{min(recalls):.3f}** "
                            f"| {float(np.median(recalls)):.3f} | {float(np.median([c for _, c in got])):.2f} |"
                        )
        print(f"load average {os.getloadavg()[0]:.1f} after draw {seed}", flush=True)
    print(
        "| draw | layout | ef | ACORN | filter | recall@5 per build | min | median | CPU ms p50 (query thread + engine pool) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
