"""Segment count x HNSW settings x int8 quantization at N chunks: engine CPU per query and recall (docs/benchmarks.md).

    python bench/segment_matrix.py --points 100000 --segments 1,2,3,7 --m 16,32 --cache DIR

Builds, per (segments, m, quantization) cell, one shard of the scale benchmark's corpus (bench/scale.py: real
chunks embedded with the service's model, replicated with noise 0.02 per dimension, tenant filter on 90 %) laid
out as ``segments`` HNSW segments of equal size, each built directly (the points written in ``segments`` batches,
each batch indexed before the next, segment size capped so no two merge): the layout a consolidation targeting
that many segments leaves. Then, interleaved query by query over every cell and ``hnsw_ef`` in ``--ef`` (the
order rotating from query to query, since the first engine call with a new vector pays its cache misses), the
dense top-k query with the tenant filter and the payload fields the service reads, searched on the calling
thread (a search pool of one: the CPU figure is the engine's work whatever the pool):

- **CPU ms per query**: ``time.process_time()`` around ``EdgeShard.query`` (p50 and mean), which a loaded machine
  barely moves;
- **recall@5 and recall@10** against a numpy exact scan over the tenant's points (limit 5 and limit 10 queries).

Quantized cells store int8 scalar-quantized copies (quantile 0.99, in RAM; the graph is built on them) and are
searched with rescoring (the best ``--oversampling`` x limit rescored with the float vectors).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
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

from service.app.store.edge import DENSE_VECTOR, HIT_PAYLOAD  # noqa: E402
from service.app.store.vectors import point_id  # noqa: E402

BATCH = 1024


def cell_name(segments: int, m: int, quantized: bool) -> str:
    return f"{segments}seg-m{m}{'-int8' if quantized else ''}"


def build_cell(
    path: Path,
    vectors: np.ndarray,
    tenants: np.ndarray,
    *,
    segments: int,
    m: int,
    ef_construct: int,
    quantized: bool,
) -> dict:
    """A shard of ``segments`` equal HNSW segments (see the module docstring); reused when already built."""
    done = path / "built.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(path, ignore_errors=True)
    n, dim = vectors.shape
    per = math.ceil(n / segments)
    kb = lambda points: max(1, points * dim * 4 // 1024)  # noqa: E731
    config = qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
        hnsw_config=qe.HnswIndexConfig(
            m=m, ef_construct=ef_construct, full_scan_threshold=10_000, max_indexing_threads=0
        ),
        quantization_config=(
            qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True)
            if quantized
            else None
        ),
        optimizers=qe.EdgeOptimizersConfig(
            indexing_threshold=kb(min(per, 1000)),
            max_segment_size=kb(per) + 16,
            default_segment_number=segments + 1,
        ),
        max_search_threads=1,
    )
    shard = qe.EdgeShard.create(str(path), config)
    shard.update(qe.UpdateOperation.create_field_index("tenant_id", qe.KeywordIndexParams(is_tenant=True)))
    started = time.perf_counter()
    cpu0 = time.process_time()
    for first in range(0, n, per):
        for start in range(first, min(first + per, n), BATCH):
            stop = min(start + BATCH, first + per, n)
            shard.update(
                qe.UpdateOperation.upsert_points(
                    [
                        qe.Point(
                            point_id(str(tenants[i]), f"doc-{i // 10}", 1, i % 10),
                            {DENSE_VECTOR: vectors[i].tolist()},
                            {
                                "tenant_id": str(tenants[i]),
                                "document_id": f"doc-{i // 10}",
                                "version": 1,
                                "chunk_index": i % 10,
                                "text": "x" * 800,
                                "metadata": {"source": "stdlib"},
                            },
                        )
                        for i in range(start, stop)
                    ]
                )
            )
        while shard.optimize():
            pass
    info = shard.info()
    result = {
        "segments": info.segments_count,
        "indexed": info.indexed_vectors_count,
        "build_s": time.perf_counter() - started,
        "build_cpu_s": time.process_time() - cpu0,
    }
    shard.close()
    done.write_text(json.dumps(result))
    return result


def measure(
    cells: dict[str, Path],
    quantized: dict[str, bool],
    efs: list[int],
    vectors: np.ndarray,
    tenants: np.ndarray,
    queries: np.ndarray,
    oversampling: float,
) -> dict:
    shards = {
        name: qe.EdgeShard.load(
            str(path),
            qe.EdgeConfig(
                vectors={
                    DENSE_VECTOR: qe.EdgeVectorParams(size=vectors.shape[1], distance=qe.Distance.Cosine)
                },
                max_search_threads=1,
            ),
        )
        for name, path in cells.items()
    }
    tenant_filter = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue(scale.TENANT))])
    mask = tenants == scale.TENANT
    rows, matrix = np.flatnonzero(mask), vectors[mask]
    ids = {point_id(str(tenants[i]), f"doc-{i // 10}", 1, i % 10): i for i in range(len(vectors))}

    def params(name: str, ef: int) -> qe.SearchParams:
        q = qe.QuantizationSearchParams(rescore=True, oversampling=oversampling) if quantized[name] else None
        return qe.SearchParams(hnsw_ef=ef, quantization=q)

    variants = [(name, ef) for name in shards for ef in efs]
    cpu: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    hits5: dict[tuple[str, int], int] = dict.fromkeys(variants, 0)
    hits10: dict[tuple[str, int], int] = dict.fromkeys(variants, 0)
    for shard in shards.values():  # first-call costs out of the way
        shard.query(qe.QueryRequest(limit=5, query=qe.Query.Nearest(queries[0].tolist(), using=DENSE_VECTOR)))
    for i in range(len(queries)):
        scores = matrix @ queries[i]
        order = np.argsort(-scores)[:10]
        truth5, truth10 = set(rows[order[:5]].tolist()), set(rows[order].tolist())
        vector = queries[i].tolist()
        shift = i % len(variants)
        for name, ef in variants[shift:] + variants[:shift]:
            shard = shards[name]
            request = qe.QueryRequest(
                limit=5,
                query=qe.Query.Nearest(vector, using=DENSE_VECTOR),
                filter=tenant_filter,
                with_payload=HIT_PAYLOAD,
                params=params(name, ef),
            )
            c0 = time.process_time()
            found = shard.query(request)
            for point in found:
                point.payload  # noqa: B018 (the conversion to Python is part of the cost)
            cpu[(name, ef)].append(time.process_time() - c0)
            hits5[(name, ef)] += len({ids[str(p.id)] for p in found} & truth5)
            wide = shard.query(
                qe.QueryRequest(
                    limit=10,
                    query=qe.Query.Nearest(vector, using=DENSE_VECTOR),
                    filter=tenant_filter,
                    with_payload=False,
                    params=params(name, ef),
                )
            )
            hits10[(name, ef)] += len({ids[str(p.id)] for p in wide} & truth10)
    for shard in shards.values():
        shard.close()
    q = len(queries)
    return {
        f"{name}|{ef}": {
            "cpu_p50": float(np.median(cpu[(name, ef)])) * 1000,
            "cpu_mean": float(np.mean(cpu[(name, ef)])) * 1000,
            "recall5": hits5[(name, ef)] / (5 * q),
            "recall10": hits10[(name, ef)] / (10 * q),
        }
        for name, ef in variants
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--segments", default="1,2,3,7")
    parser.add_argument("--m", default="16")
    parser.add_argument("--ef-construct", type=int, default=100)
    parser.add_argument("--quantized", default="0", help="comma list of 0/1: float and/or int8 cells")
    parser.add_argument("--ef", default="64,100,128,200,300")
    parser.add_argument("--oversampling", type=float, default=2.0)
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--noise", type=float, default=scale.NOISE)
    parser.add_argument("--cache", type=Path, required=True, help="embeddings and built shards are kept here")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--cells", default="", help="measure only these cells (names as printed)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    base, _texts, queries, _query_texts = segments_bench.corpus(args, args.cache)
    nprng = np.random.default_rng(args.seed)
    vectors = scale.replicate(base, args.points, nprng, args.noise)
    tenants = np.where(nprng.random(args.points) < 0.9, scale.TENANT, "other")
    load_before = os.getloadavg()[0]
    cells: dict[str, Path] = {}
    quantized: dict[str, bool] = {}
    builds: dict[str, dict] = {}
    for q in (bool(int(x)) for x in args.quantized.split(",")):
        for m in (int(x) for x in args.m.split(",")):
            for count in (int(x) for x in args.segments.split(",")):
                name = cell_name(count, m, q)
                if args.cells and name not in args.cells.split(","):
                    continue
                path = args.cache / f"p{args.points}-n{args.noise:g}-efc{args.ef_construct}" / name
                builds[name] = build_cell(
                    path, vectors, tenants, segments=count, m=m, ef_construct=args.ef_construct, quantized=q
                )
                print(name, builds[name], flush=True)
                cells[name], quantized[name] = path, q
    if args.build_only:
        return
    efs = [int(x) for x in args.ef.split(",")]
    measured = measure(cells, quantized, efs, vectors, tenants, queries, args.oversampling)
    setup = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after; {args.points:,} points, "
        f"{len(queries)} queries, noise {args.noise:g}, ef_construct {args.ef_construct}"
    )
    print(setup)
    print(json.dumps({"builds": builds, "measured": measured}), flush=True)
    print(
        "| cell | segments | build s (CPU s) | "
        + " | ".join(f"ef {ef}: CPU ms / r@5 / r@10" for ef in efs)
        + " |"
    )
    for name in cells:
        b = builds[name]
        cols = []
        for ef in efs:
            r = measured[f"{name}|{ef}"]
            cols.append(f"{r['cpu_p50']:.2f} / {r['recall5']:.3f} / {r['recall10']:.3f}")
        print(
            f"| {name} | {b['segments']} | {b['build_s']:.0f} ({b['build_cpu_s']:.0f}) | "
            + " | ".join(cols)
            + " |"
        )


if __name__ == "__main__":
    main()
