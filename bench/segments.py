"""Segments against search cost and recall at N chunks: what consolidation buys (docs/benchmarks.md).

    python bench/segments.py --points 100000 --cache DIR --write docs/benchmarks.md

Builds one edge shard the way the service indexes a steady ingest (``EdgeVectorStore``, a pass per
``EDGE_OPTIMIZE_CHUNK_POINTS``, segments capped at ``EDGE_SEGMENT_POINTS``), then, per consolidation cap in
``--caps``, a copy of it merged by the store's own ``consolidate()`` (child process, swap). Then, interleaved query
by query over every layout, it measures:

- **CPU ms per query** (``time.process_time()`` around the engine call: all of the engine's threads), which a
  loaded machine barely moves, and the wall p50/p99 (which it does);
- dense top-5 with the tenant filter (and with ``hnsw_ef`` 64), the sparse (BM25) top-10, and the service's hybrid
  request (dense + BM25 prefetches, RRF), with the payload fields the service reads and, for hybrid, without any
  payload (what reading payloads costs);
- recall@5 of the dense search against exact search (numpy).

``--quantized`` adds the same ingest into a store created with int8 scalar quantization (``EDGE_QUANTIZATION``),
consolidated at the default cap, searched as the adapter searches a quantized shard (wider ``hnsw_ef``, the best
candidates rescored with the float vectors). The order of the query kinds rotates from query to query: the
first engine call for a new query vector pays the cache misses of its graph walk, so a fixed order would bias
whichever kind ran first.

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
from service.app.store.edge import (  # noqa: E402
    CONSOLIDATE_SEGMENT_POINTS,
    DENSE_VECTOR,
    HIT_PAYLOAD,
    HNSW_EF,
    QUANTIZATION_OVERSAMPLING,
    EdgeVectorStore,
    copy_sparse,
)
from service.app.store.embedder import FastEmbedEmbedder  # noqa: E402
from service.app.store.sparse import SPARSE_VECTOR, default_encoder  # noqa: E402
from service.app.store.vectors import ChunkPoint, point_id  # noqa: E402

START = "<!-- segments:start -->"
END = "<!-- segments:end -->"
# ``--noise`` other than bench/scale.py's writes a second, separately marked table (the corpus-shape check).
NOISE_START = "<!-- segments-noise:start -->"
NOISE_END = "<!-- segments-noise:end -->"
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


def build(
    path: Path, vectors: np.ndarray, tenants: np.ndarray, texts: list[str], *, quantization: bool = False
) -> dict:
    store = EdgeVectorStore(
        path,
        collection="c",
        dimension=vectors.shape[1],
        optimize_idle_seconds=None,
        quantization=quantization,
    )
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
    name = "service (no consolidation)" + (", int8" if quantization else "")
    return {"cap": name, "segments": segments, "longest_pass": longest}


def consolidate(source: Path, path: Path, cap: int, dimension: int, *, label: str = "") -> dict:
    shutil.copytree(source, path, copy_function=copy_sparse)
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
    params = store._search_params  # what the adapter searches this shard with (None: the engine's defaults)
    store.close()
    return {
        "cap": f"{cap:,}{label}",
        "segments": segments,
        "seconds": seconds,
        "swap": result.get("swap_seconds"),
        "params": params,
    }


def measure(
    layouts: dict[str, tuple[Path, qe.SearchParams | None]],
    vectors: np.ndarray,
    tenants: np.ndarray,
    queries: np.ndarray,
    query_texts: list[str],
) -> dict:
    shards = {name: qe.EdgeShard.load(str(path)) for name, (path, _) in layouts.items()}
    params = {name: layout_params for name, (_, layout_params) in layouts.items()}
    tenant_filter = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue(scale.TENANT))])
    encoder = default_encoder()
    sparse = [encoder.query(t) for t in query_texts]
    mask = tenants == scale.TENANT
    rows, matrix = np.flatnonzero(mask), vectors[mask]
    ids = {point_id(str(tenants[i]), f"doc-{i // 10}", 1, i % 10): i for i in range(len(vectors))}

    def search_params(layout: str, ef: int | None) -> qe.SearchParams | None:
        base = params[layout]
        if ef is None:
            return base
        return qe.SearchParams(hnsw_ef=ef, quantization=base.quantization if base else None)

    def dense(layout: str, i: int, ef: int | None) -> qe.QueryRequest:
        return qe.QueryRequest(
            limit=TOP_K,
            query=qe.Query.Nearest(queries[i].tolist(), using=DENSE_VECTOR),
            filter=tenant_filter,
            with_payload=HIT_PAYLOAD,
            params=search_params(layout, ef),
        )

    def bm25(i: int) -> qe.SparseVector:
        return qe.SparseVector(list(sparse[i].indices), list(sparse[i].values))

    def sparse_only(layout: str, i: int) -> qe.QueryRequest:
        return qe.QueryRequest(
            limit=10,
            query=qe.Query.Nearest(bm25(i), using=SPARSE_VECTOR),
            filter=tenant_filter,
            with_payload=HIT_PAYLOAD,
        )

    def hybrid(layout: str, i: int, limit: int, payload: bool = True) -> qe.QueryRequest:
        return qe.QueryRequest(
            limit=limit,
            prefetches=[
                qe.Prefetch(
                    50,
                    query=qe.Query.Nearest(queries[i].tolist(), using=DENSE_VECTOR),
                    filter=tenant_filter,
                    params=search_params(layout, None),
                ),
                qe.Prefetch(50, query=qe.Query.Nearest(bm25(i), using=SPARSE_VECTOR), filter=tenant_filter),
            ],
            query=qe.Fusion.Rrf(k=2),
            filter=tenant_filter,
            with_payload=HIT_PAYLOAD if payload else False,
        )

    kinds = {
        "dense": lambda layout, i: dense(layout, i, None),
        "dense_ef64": lambda layout, i: dense(layout, i, 64),
        "sparse": sparse_only,
        "hybrid50": lambda layout, i: hybrid(layout, i, 50),
        "hybrid10": lambda layout, i: hybrid(layout, i, 10),
        "hybrid10_bare": lambda layout, i: hybrid(layout, i, 10, payload=False),
    }
    cpu: dict[tuple[str, str], list[float]] = {(n, k): [] for n in shards for k in kinds}
    wall: dict[tuple[str, str], list[float]] = {(n, k): [] for n in shards for k in kinds}
    hits: dict[tuple[str, str], int] = {(n, k): 0 for n in shards for k in kinds}
    for name, shard in shards.items():
        shard.query(dense(name, 0, None))
    order = list(kinds)
    for i in range(len(queries)):
        scores = matrix @ queries[i]
        top = np.argpartition(-scores, TOP_K)[:TOP_K]
        truth = set(rows[top].tolist())
        for kind in order[i % len(order) :] + order[: i % len(order)]:
            for name, shard in shards.items():
                request = kinds[kind](name, i)
                c0, w0 = time.process_time(), time.perf_counter()
                found = shard.query(request)
                for point in found:
                    point.payload  # noqa: B018 (the conversion to Python is part of the cost)
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


def render(rows: list[dict], measured: dict, setup: str, start: str = START, end: str = END) -> str:
    lines = [
        start,
        "",
        setup,
        "",
        "| segment cap | segments | dense CPU ms (wall p50 / p99) | dense, hnsw_ef 64 | sparse, 10 hits "
        "| hybrid, 50 hits | hybrid, 10 hits | hybrid, 10 hits, no payload | recall@5 dense (ef 64) "
        "| merged in (s) / swap (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = measured[row["cap"]]
        merged = f"{row['seconds']:.0f} / {row['swap']:.2f}" if "seconds" in row and row["swap"] else "-"
        lines.append(
            f"| {row['cap']} | {row['segments']} | {m['dense']['cpu']:.2f} ({m['dense']['wall_p50']:.2f} / "
            f"{m['dense']['wall_p99']:.2f}) | {m['dense_ef64']['cpu']:.2f} | {m['sparse']['cpu']:.2f} "
            f"| {m['hybrid50']['cpu']:.2f} | {m['hybrid10']['cpu']:.2f} | {m['hybrid10_bare']['cpu']:.2f} "
            f"| {m['dense']['recall']:.3f} ({m['dense_ef64']['recall']:.3f}) | {merged} |"
        )
    return "\n".join([*lines, "", end])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--caps", default="20480,30720,40960", help="consolidation caps to compare")
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--cache", type=Path, help="bench/scale.py's embedding cache directory")
    parser.add_argument("--write", type=Path)
    parser.add_argument(
        "--noise",
        type=float,
        default=scale.NOISE,
        help="per-dimension noise of the replicas; a value other than bench/scale.py's writes a separate table",
    )
    parser.add_argument(
        "--quantized",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also build an int8-quantized store and consolidate it at the default cap",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rag-segments-"))
    int8_build: dict | None = None
    try:
        base, texts, queries, query_texts = corpus(args, work)
        nprng = np.random.default_rng(args.seed)
        vectors = scale.replicate(base, args.points, nprng, args.noise)
        tenants = np.where(nprng.random(args.points) < 0.9, scale.TENANT, "other")
        load_before = os.getloadavg()[0]
        base_path = work / "edge" / "base"
        rows = [build(base_path, vectors, tenants, texts)]
        layouts: dict[str, tuple[Path, qe.SearchParams | None]] = {rows[0]["cap"]: (base_path, None)}
        print(rows[-1], flush=True)
        for cap in (int(c) for c in args.caps.split(",") if c):
            path = work / f"edge-{cap}" / "c"
            rows.append(consolidate(base_path, path, cap, vectors.shape[1]))
            layouts[rows[-1]["cap"]] = (path, rows[-1]["params"])
            print(rows[-1], flush=True)
        if args.quantized:
            quantized = work / "edge-int8" / "base"
            int8_build = build(quantized, vectors, tenants, texts, quantization=True)
            print(int8_build, flush=True)
            path = work / "edge-int8-merged" / "c"
            cap = CONSOLIDATE_SEGMENT_POINTS
            rows.append(consolidate(quantized, path, cap, vectors.shape[1], label=", int8"))
            layouts[rows[-1]["cap"]] = (path, rows[-1]["params"])
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
        "the engine call (all its threads), layouts interleaved query by query, the order of the query kinds "
        "rotating from query to query. Payloads: the fields the service reads."
    )
    if int8_build is not None:
        setup += (
            f" The int8 row: the same ingest into a store created with `EDGE_QUANTIZATION=int8` ({int8_build['segments']} "
            f"segments, longest indexing pass {int8_build['longest_pass']:.1f} s), consolidated at the default cap and "
            f"searched as the adapter searches a quantized shard (hnsw_ef {HNSW_EF}, the best "
            f"{QUANTIZATION_OVERSAMPLING:g} x limit rescored with the float vectors; its ef 64 column keeps the rescoring)."
        )
    start, end = (START, END) if args.noise == scale.NOISE else (NOISE_START, NOISE_END)
    if args.noise != scale.NOISE:
        sibling = 1 / (1 + base.shape[1] * args.noise**2)
        setup += (
            f" **Second corpus, not the benchmark's**: replicas with noise {args.noise:g} per dimension instead of "
            f"{scale.NOISE:g}, so copies of one chunk have cosine ~{sibling:.2f} to each other (the benchmark's: "
            f"~{1 / (1 + base.shape[1] * scale.NOISE**2):.2f})."
        )
    table = render(rows, measured, setup, start, end)
    print(table)
    if args.write:
        replace_section(args.write, table, start, end, heading="")


if __name__ == "__main__":
    main()
