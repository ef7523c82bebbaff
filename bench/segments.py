"""Segments against search cost and recall at N chunks: what consolidation buys (docs/benchmarks.md).

    python bench/segments.py --points 100000 --cache DIR --write docs/benchmarks.md

Builds one edge shard the way the service indexes a steady ingest (``EdgeVectorStore``, a pass per
``EDGE_OPTIMIZE_CHUNK_POINTS``, segments capped at ``EDGE_SEGMENT_POINTS``), then, per consolidation cap in
``--caps``, a copy of it merged by the store's own ``consolidate()`` (child process, swap). Then, interleaved query
by query over every layout, it measures:

- **CPU ms per query** (``time.process_time()`` around the engine call: all of the engine's threads), which a
  loaded machine barely moves, and the wall p50/p99 (which it does);
- dense top-5 with the tenant filter (and with ``hnsw_ef`` 64), and the service's hybrid request (dense + BM25
  prefetches, RRF);
- recall@5 of the dense search against exact search (numpy).

Corpus: bench/scale.py's (real chunks of standard-library docstrings embedded with the service's model,
replicated with noise; ``--cache`` reuses its embeddings). Results replace the section between the segments
markers in ``--write``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import qdrant_edge as qe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402
from sections import replace_section  # noqa: E402

from service.app.core.config import Settings  # noqa: E402
from service.app.ingest.chunking import Chunker  # noqa: E402
from service.app.store.edge import DENSE_VECTOR, EdgeVectorStore, _copy_sparse  # noqa: E402
from service.app.store.embedder import FastEmbedEmbedder  # noqa: E402
from service.app.store.sparse import SPARSE_VECTOR, default_encoder  # noqa: E402
from service.app.store.vectors import ChunkPoint, point_id  # noqa: E402

START = "<!-- segments:start -->"
END = "<!-- segments:end -->"
TOP_K = 5


def corpus(args: argparse.Namespace, work: Path) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(base vectors, base texts, query vectors, query texts): bench/scale.py's split, embeddings cached."""
    rng = random.Random(args.seed)
    embedder = FastEmbedEmbedder(scale.MODEL, model_path=scale.MODEL_DIR, cache_dir=work / "fastembed")
    settings = Settings(_env_file=None)
    chunker = Chunker(
        embedder.tokenizer,
        max_tokens=embedder.max_tokens,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
    )
    docs = scale.stdlib_docstrings(args.real + args.queries + 10, rng)
    texts: list[str] = []
    for doc in docs[args.queries + 10 :]:
        texts.extend(chunk.text for chunk in chunker.split(doc))
        if len(texts) >= args.real:
            break
    texts = texts[: args.real]
    query_texts = [doc.split(".")[0][:200] for doc in docs[: args.queries + 10]]
    if args.cache and (args.cache / "base.npy").is_file():
        base, queries = np.load(args.cache / "base.npy"), np.load(args.cache / "queries.npy")
    else:
        base = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
        queries = np.asarray([embedder.embed_query(t) for t in query_texts], dtype=np.float32)
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)
            np.save(args.cache / "base.npy", base)
            np.save(args.cache / "queries.npy", queries)
    return base, texts, queries[: args.queries], query_texts[: args.queries]


def build(path: Path, vectors: np.ndarray, tenants: np.ndarray, texts: list[str]) -> dict:
    store = EdgeVectorStore(path, collection="c", dimension=vectors.shape[1], optimize_idle_seconds=None)
    store.ensure_collection()
    points = [
        ChunkPoint(
            tenant_id=str(tenants[i]),
            document_id=f"doc-{i // 10}",
            version=1,
            chunk_index=i % 10,
            text=texts[i % len(texts)],
            vector=vectors[i].tolist(),
            metadata={"source": "stdlib"},
            content_hash="bench",
            model=scale.MODEL,
        )
        for i in range(len(vectors))
    ]
    longest = 0.0
    for start in range(0, len(points), store.optimize_chunk_points):
        store.upsert(points[start : start + store.optimize_chunk_points])
        started = time.perf_counter()
        store.optimize()
        longest = max(longest, time.perf_counter() - started)
    segments = store.shard.info().segments_count
    store.close()
    return {"cap": "service (no consolidation)", "segments": segments, "longest_pass": longest}


def consolidate(source: Path, path: Path, cap: int, dimension: int) -> dict:
    shutil.copytree(source, path, copy_function=_copy_sparse)
    store = EdgeVectorStore(
        path,
        collection="c",
        dimension=dimension,
        optimize_idle_seconds=None,
        consolidate_idle_seconds=3600,  # on (so the serving config is the consolidating one), never by itself
        consolidate_segment_points=cap,
    )
    store.ensure_collection()
    started = time.perf_counter()
    store.consolidate()
    seconds = time.perf_counter() - started
    result = store.last_consolidation or {}
    segments = store.shard.info().segments_count
    store.close()
    return {"cap": f"{cap:,}", "segments": segments, "seconds": seconds, "swap": result.get("swap_seconds")}


def measure(
    layouts: dict[str, Path],
    vectors: np.ndarray,
    tenants: np.ndarray,
    queries: np.ndarray,
    query_texts: list[str],
) -> dict:
    shards = {name: qe.EdgeShard.load(str(path)) for name, path in layouts.items()}
    tenant_filter = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue(scale.TENANT))])
    encoder = default_encoder()
    sparse = [encoder.query(t) for t in query_texts]
    mask = tenants == scale.TENANT
    rows, matrix = np.flatnonzero(mask), vectors[mask]
    ids = {point_id(str(tenants[i]), f"doc-{i // 10}", 1, i % 10): i for i in range(len(vectors))}

    def dense(i: int, ef: int | None) -> qe.QueryRequest:
        return qe.QueryRequest(
            limit=TOP_K,
            query=qe.Query.Nearest(queries[i].tolist(), using=DENSE_VECTOR),
            filter=tenant_filter,
            with_payload=True,
            params=qe.SearchParams(hnsw_ef=ef) if ef else None,
        )

    def hybrid(i: int, limit: int) -> qe.QueryRequest:
        bm25 = qe.SparseVector(list(sparse[i].indices), list(sparse[i].values))
        return qe.QueryRequest(
            limit=limit,
            prefetches=[
                qe.Prefetch(
                    50, query=qe.Query.Nearest(queries[i].tolist(), using=DENSE_VECTOR), filter=tenant_filter
                ),
                qe.Prefetch(50, query=qe.Query.Nearest(bm25, using=SPARSE_VECTOR), filter=tenant_filter),
            ],
            query=qe.Fusion.Rrf(k=2),
            filter=tenant_filter,
            with_payload=True,
        )

    kinds = {
        "dense": lambda i: dense(i, None),
        "dense_ef64": lambda i: dense(i, 64),
        "hybrid50": lambda i: hybrid(i, 50),
        "hybrid10": lambda i: hybrid(i, 10),
    }
    cpu: dict[tuple[str, str], list[float]] = {(n, k): [] for n in shards for k in kinds}
    wall: dict[tuple[str, str], list[float]] = {(n, k): [] for n in shards for k in kinds}
    hits: dict[tuple[str, str], int] = {(n, k): 0 for n in shards for k in kinds}
    for shard in shards.values():
        shard.query(dense(0, None))
    for i in range(len(queries)):
        scores = matrix @ queries[i]
        top = np.argpartition(-scores, TOP_K)[:TOP_K]
        truth = set(rows[top].tolist())
        for kind, request in kinds.items():
            for name, shard in shards.items():
                c0, w0 = time.process_time(), time.perf_counter()
                found = shard.query(request(i))
                wall[(name, kind)].append(time.perf_counter() - w0)
                cpu[(name, kind)].append(time.process_time() - c0)
                if kind.startswith("dense"):
                    hits[(name, kind)] += len({ids[str(p.id)] for p in found} & truth)
    for shard in shards.values():
        shard.close()
    out: dict = {}
    for (name, kind), values in cpu.items():
        out.setdefault(name, {})[kind] = {
            "cpu": float(np.median(values)) * 1000,
            "wall_p50": float(np.median(wall[(name, kind)])) * 1000,
            "wall_p99": float(np.percentile(wall[(name, kind)], 99)) * 1000,
            "recall": hits[(name, kind)] / (TOP_K * len(queries)),
        }
    return out


def render(rows: list[dict], measured: dict, setup: str) -> str:
    lines = [
        START,
        "",
        setup,
        "",
        "| segment cap | segments | dense CPU ms (wall p50 / p99) | dense, hnsw_ef 64 | hybrid, 50 hits | hybrid, 10 hits "
        "| recall@5 dense (ef 64) | merged in (s) / swap (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = measured[row["cap"]]
        merged = f"{row['seconds']:.0f} / {row['swap']:.2f}" if "seconds" in row and row["swap"] else "-"
        lines.append(
            f"| {row['cap']} | {row['segments']} | {m['dense']['cpu']:.2f} ({m['dense']['wall_p50']:.2f} / "
            f"{m['dense']['wall_p99']:.2f}) | {m['dense_ef64']['cpu']:.2f} | {m['hybrid50']['cpu']:.2f} "
            f"| {m['hybrid10']['cpu']:.2f} | {m['dense']['recall']:.3f} ({m['dense_ef64']['recall']:.3f}) | {merged} |"
        )
    return "\n".join([*lines, "", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--caps", default="20480,30720,40960", help="consolidation caps to compare")
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--cache", type=Path, help="bench/scale.py's embedding cache directory")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rag-segments-"))
    try:
        base, texts, queries, query_texts = corpus(args, work)
        nprng = np.random.default_rng(args.seed)
        vectors = scale.replicate(base, args.points, nprng)
        tenants = np.where(nprng.random(args.points) < 0.9, scale.TENANT, "other")
        load_before = os.getloadavg()[0]
        layouts = {"service (no consolidation)": work / "edge" / "base"}
        rows = [build(layouts["service (no consolidation)"], vectors, tenants, texts)]
        print(rows[-1], flush=True)
        for cap in (int(c) for c in args.caps.split(",") if c):
            path = work / f"edge-{cap}" / "c"
            rows.append(consolidate(layouts["service (no consolidation)"], path, cap, vectors.shape[1]))
            layouts[rows[-1]["cap"]] = path
            print(rows[-1], flush=True)
        measured = measure(layouts, vectors, tenants, queries, query_texts)
        print(json.dumps(measured), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    setup = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, load average "
        f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after. {args.points:,} points ({args.real:,} real "
        f"chunks replicated with noise), {args.queries} queries, top_k {TOP_K}, tenant filter on 90 %; the "
        f"service's layout (longest indexing pass {rows[0]['longest_pass']:.1f} s) and copies of it consolidated "
        "by `EdgeVectorStore.consolidate()` at each cap. CPU ms per query: p50 of `time.process_time()` around "
        "the engine call (all its threads), layouts interleaved query by query."
    )
    table = render(rows, measured, setup)
    print(table)
    if args.write:
        replace_section(args.write, table, START, END, heading="")


if __name__ == "__main__":
    main()
