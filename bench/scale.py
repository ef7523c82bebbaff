"""Scale benchmark: HTTP search, start-up and memory at N chunks, against the raw engines on the same vectors.

    make bench SCALE=100000                    # sizes 1000, 10000 and 100000
    python bench/scale.py --sizes 1000,10000 --queries 200

Corpus: the docstrings of Python's standard library (real technical prose), split with the service's own
Chunker and embedded with the service's model (all-MiniLM-L6-v2, ONNX). At most ``--real`` chunks are embedded;
larger sizes replicate them with Gaussian noise (sigma 0.02 per dimension, re-normalised), so neighbourhoods
keep the shape of real text without embedding 100k chunks on 2 CPUs. Queries are other docstrings' first
sentences, embedded with the same model. 90 % of the points belong to the searched tenant, 10 % to others, so
every search carries a real tenant filter.

Per size:
- **edge (raw)**: qdrant-edge-py used directly: build + index time, load time and RSS of a fresh process,
  search p50/p95/p99 with the tenant filter and the search parameters the adapter sends for that shard
  (EDGE_HNSW_EF; a quantized shard's rescoring: the store is created with the default EDGE_QUANTIZATION),
  recall@5 against exact search. The store is built ``--builds`` times (default 3) from the same points, each
  from scratch by the service's own indexing and consolidation, and recall@5 is reported per build and as the
  lowest: an HNSW build is random, and on this near-duplicate corpus one build's recall is not the layout's.
- **numpy exact**: a float32 matrix product over the tenant's vectors (the ground truth).
- **local (raw)**: qdrant-client local mode; skipped above ``--local-max`` points (1.7 s per search and 42 s to
  load at 100k, issue 13's measurement), so the run stays bounded.
- **HTTP service**: `python -m service` started on a store holding the same points (edge shard copied, registry
  rows for every document; the search RESULT cache off, so every request searches), start-up time to the first
  healthy /healthz, RSS after the searches, and search p50/p95/p99 over HTTP interleaved query by query with the
  raw edge path, three times: **distinct** texts (each new to the service, so its query-vector cache misses and
  the model runs; raw = query embedding + dense engine query) and **repeated** (the same texts again, vectors
  cached in the service; raw = the dense engine query alone), both in ``mode: dense``, then the repeated texts in
  the default mode, **hybrid** (raw = the same fused dense + BM25 engine query the adapter sends). For each, from
  the service's own /metrics histograms and /proc: the mean time per search spent embedding, in the engine +
  registry check and in the whole request, and the server's CPU per search (all threads). Every HTTP
  measurement starts once the service's start-up orphan-collection pass has ended (``wait_for_startup_collection``):
  at 100k chunks that pass runs for tens of seconds after start-up and slowed the searches measured during it.
- **Throughput** (sizes listed in ``--concurrency-at``): searches/s, p50 and server CPU per search with 1, 4
  and 16 client threads, for distinct texts (each request a new text) and repeated ones (50 cached texts);
  ``--threads-sweep`` (default ``default,1``) restarts the service with each EMBEDDING_THREADS value and measures
  each. At 4 clients the server's CPU per search is split by thread (event loop, search workers, ONNX Runtime's and
  the tokenizer's native pools, the engine's search pool; Python threads named with ``py-spy dump`` when it is
  installed) next to the benchmark client's own CPU per search, since both share the machine's CPUs.

Results replace the section between the scale markers in docs/benchmarks.md (``--write``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import qdrant_edge as qe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from httpclient import KeepAliveClient  # noqa: E402
from ingest_search import ServiceProcess, histogram_values, percentile  # noqa: E402
from priority import conditions  # noqa: E402
from sections import replace_section  # noqa: E402
from startup import measure_startup, phases  # noqa: E402

from service.app.core.config import Settings  # noqa: E402
from service.app.ingest.chunking import Chunker  # noqa: E402
from service.app.search.service import OVERFETCH_MIN  # noqa: E402
from service.app.store import edge as edge_store  # noqa: E402
from service.app.store.edge import DENSE_VECTOR, HIT_PAYLOAD, EdgeVectorStore  # noqa: E402
from service.app.store.embedder import FastEmbedEmbedder  # noqa: E402
from service.app.store.hugepages import huge_pages_for_new_memory  # noqa: E402
from service.app.store.registry import DocumentRegistry  # noqa: E402
from service.app.store.sparse import SPARSE_VECTOR, default_encoder  # noqa: E402
from service.app.store.vectors import PREFETCH_MIN, RRF_K, ChunkPoint, collection_name  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_DIR = REPO / ".models" / "all-MiniLM-L6-v2"
# The graph the service's queries run (and the raw path's distinct queries, for a like-for-like ratio).
QUERY_PRECISION = Settings(_env_file=None).embedding_query_precision
TENANT = "default"
CHUNKS_PER_DOCUMENT = 10
TOP_K = 5
# What the service asks the engine for a top_k of TOP_K: a few hits more, for the visibility check
# (service.app.search.service), with the hit payload (the adapter's HIT_PAYLOAD), so the raw query is the same request.
SERVICE_LIMIT = TOP_K + max(OVERFETCH_MIN, TOP_K // 4)
START = "<!-- scale:start -->"
END = "<!-- scale:end -->"


def stdlib_docstrings(limit: int, rng: random.Random) -> list[str]:
    """Module, class and function docstrings of the standard library, long enough to be prose."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    texts.append(doc)
    rng.shuffle(texts)
    return texts[:limit]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(call, *args):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - started


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(latencies) * 1000,
        "p95": percentile(latencies, 0.95) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
    }


LOAD_PROBE = """
import json, sys, time, os
started = time.perf_counter()
kind, path, vector = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kind == "edge":
    import qdrant_edge as qe
    shard = qe.EdgeShard.load(path)
    loaded = time.perf_counter() - started
    shard.query(qe.QueryRequest(limit=5, query=qe.Query.Nearest(vector, using="dense")))
else:
    from qdrant_client import QdrantClient
    client = QdrantClient(path=path)
    loaded = time.perf_counter() - started
    client.query_points("raw", query=vector, limit=5)
rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")][0] / 1024
print(json.dumps({"load": loaded, "first_query": time.perf_counter() - started, "rss": rss}))
"""


def probe_load(kind: str, path: Path, vector: list[float]) -> dict[str, float]:
    """Open the store in a fresh process: load time, load + first query, RSS."""
    out = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE, kind, str(path), json.dumps(vector)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


NOISE = 0.02  # per dimension: each copy has cosine ~0.93 to its original and ~0.87 to the other copies


def replicate(base: np.ndarray, n: int, rng: np.random.Generator, noise: float = NOISE) -> np.ndarray:
    if n <= len(base):
        return base[:n].copy()
    picks = rng.integers(0, len(base), size=n - len(base))
    noisy = base[picks] + rng.normal(0, noise, size=(len(picks), base.shape[1])).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return np.vstack([base, noisy])


def register_documents(data_dir: Path, documents: set[tuple[str, str]]) -> None:
    """Version 1 of each (tenant, document) active in DATA_DIR's SQLite registry, as the bench stores hold them."""
    registry = DocumentRegistry(f"sqlite:///{(data_dir / 'registry.db').as_posix()}")
    registry.migrate()
    for tenant, document in sorted(documents):
        registry.activate(
            tenant,
            document,
            expected_version=None,
            version=1,
            content_hash="bench",
            metadata={"source": "stdlib"},
            content_type="text/plain",
            chunk_count=CHUNKS_PER_DOCUMENT,
        )
    registry.close()


def build_store(path: Path, name: str, points: list[ChunkPoint]) -> tuple[EdgeVectorStore, dict]:
    """An edge store at ``path`` holding ``points``, laid out as the service lays out a steady ingest: a bounded
    optimisation pass per EDGE_OPTIMIZE_CHUNK_POINTS written, then the consolidation the service runs once writes
    pause (EDGE_CONSOLIDATE_IDLE_SECONDS), so it holds the layout the service would settle on. Left open."""
    defaults = Settings(_env_file=None)
    store = EdgeVectorStore(
        path,
        collection=name,
        dimension=len(points[0].vector),
        optimize_idle_seconds=None,
        consolidate_idle_seconds=defaults.edge_consolidate_idle_seconds,
        consolidate_segment_points=defaults.edge_consolidate_segment_points,
        quantization=defaults.edge_quantization == "int8",
        hnsw_ef=defaults.edge_hnsw_ef,
    )
    store.ensure_collection()
    upsert_seconds = optimize_seconds = longest_pass = 0.0
    chunk = store._optimize_chunk
    for start in range(0, len(points), chunk):
        _, seconds = timed(store.upsert, points[start : start + chunk])
        upsert_seconds += seconds
        _, seconds = timed(store.optimize)
        optimize_seconds += seconds
        longest_pass = max(longest_pass, seconds)
    segments_built = store.shard.info().segments_count
    consolidated, consolidate_seconds = timed(store.consolidate)
    return store, {
        "upsert": upsert_seconds,
        "optimize": optimize_seconds,
        "longest_pass": longest_pass,
        "segments_built": segments_built,
        "consolidated": consolidated,
        "consolidate": consolidate_seconds,
        "segments": store.shard.info().segments_count,
    }


def run_size(
    n: int,
    base_vectors: np.ndarray,
    base_texts: list[str],
    query_texts: list[str],
    query_vectors: np.ndarray,
    embedder: FastEmbedEmbedder,
    args: argparse.Namespace,
    work: Path,
    rng: np.random.Generator,
) -> dict:
    print(f"--- {n} points", flush=True)
    vectors = replicate(base_vectors, n, rng)
    tenants = np.where(rng.random(n) < 0.9, TENANT, "other")
    name = collection_name("documents", MODEL, vectors.shape[1])
    data_dir = work / f"data-{n}"
    points = [
        ChunkPoint(
            tenant_id=str(tenants[i]),
            document_id=f"doc-{i // CHUNKS_PER_DOCUMENT}",
            version=1,
            chunk_index=i % CHUNKS_PER_DOCUMENT,
            text=base_texts[i % len(base_texts)],
            vector=vectors[i].tolist(),
            metadata={"source": "stdlib"},
            content_hash="bench",
            model=MODEL,
        )
        for i in range(n)
    ]
    store, built = build_store(data_dir / "edge" / name, name, points)
    upsert_seconds, optimize_seconds = built["upsert"], built["optimize"]
    longest_pass, segments_built = built["longest_pass"], built["segments_built"]
    consolidated, consolidate_seconds, segments = (
        built["consolidated"],
        built["consolidate"],
        built["segments"],
    )
    modes = engine_modes(store, query_texts[: args.queries], query_vectors[: args.queries])
    # The raw path searches with what the adapter sends for this shard (EDGE_HNSW_EF; a quantized shard's rescoring),
    # so raw latency and recall@5 are those of the service's engine work.
    params = store._search_params
    store.close()

    # Registry rows so the service's visibility check keeps the hits (a document is active in its tenants).
    register_documents(data_dir, {(p.tenant_id, p.document_id) for p in points})

    # Raw edge works on a copy: the service owns (locks) the original while it runs.
    raw_path = work / f"raw-edge-{n}"
    shutil.copytree(store.path, raw_path, ignore=shutil.ignore_patterns(".lock"))
    edge_load = probe_load("edge", raw_path, query_vectors[0].tolist())
    # Its RAM-resident memory on huge pages, as the service's shard (service.app.store.edge SHARD_HUGE_PAGES; here
    # at once, the service's on a thread after the load), so the raw engine query stays the service's engine work.
    with huge_pages_for_new_memory() if edge_store.SHARD_HUGE_PAGES else contextlib.nullcontext():
        shard = qe.EdgeShard.load(str(raw_path))
    tenant_filter = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue(TENANT))])

    def edge_query(vector: list[float]) -> list:
        return shard.query(
            qe.QueryRequest(
                limit=SERVICE_LIMIT,
                query=qe.Query.Nearest(vector, using=DENSE_VECTOR),
                filter=tenant_filter,
                with_payload=HIT_PAYLOAD,
                params=params,
            )
        )

    def edge_hybrid(vector: list[float], sparse: qe.SparseVector) -> list:
        """The default mode's engine work, as the adapter asks it: dense and BM25 candidates (PREFETCH_MIN each,
        tenant filter), fused by reciprocal rank, the top_k with their payloads."""
        return shard.query(
            qe.QueryRequest(
                limit=TOP_K,
                prefetches=[
                    qe.Prefetch(
                        PREFETCH_MIN,
                        query=qe.Query.Nearest(vector, using=DENSE_VECTOR),
                        filter=tenant_filter,
                        params=params,
                    ),
                    qe.Prefetch(
                        PREFETCH_MIN,
                        query=qe.Query.Nearest(sparse, using=SPARSE_VECTOR),
                        filter=tenant_filter,
                    ),
                ],
                query=qe.Fusion.Rrf(k=RRF_K),
                filter=tenant_filter,
                with_payload=True,
            )
        )

    mask = tenants == TENANT
    tenant_rows = np.flatnonzero(mask)
    tenant_matrix = vectors[mask]

    def exact(vector: np.ndarray) -> np.ndarray:
        scores = tenant_matrix @ vector
        top = np.argpartition(-scores, TOP_K)[:TOP_K]
        return tenant_rows[top[np.argsort(-scores[top])]]

    from service.app.store.vectors import point_id

    id_to_row = {point_id(p.tenant_id, p.document_id, 1, p.chunk_index): i for i, p in enumerate(points)}
    queries = query_vectors[: args.queries]
    recall_hits = 0
    edge_lat, numpy_lat = [], []
    for q in queries:
        truth, seconds = timed(exact, q)
        numpy_lat.append(seconds)
        found, seconds = timed(edge_query, q.tolist())
        edge_lat.append(seconds)
        recall_hits += len({id_to_row[str(p.id)] for p in found[:TOP_K]} & set(truth.tolist()))
    recall = recall_hits / (TOP_K * len(queries))
    # The same points built again (the service's indexing and consolidation, from scratch), each build's recall
    # with the adapter's parameters for its shard: HNSW builds are random (levels, parallel insertion), and on this
    # corpus one build's recall is not the layout's (docs/benchmarks.md, "One-segment recall at 100k: the tenant
    # filter, stop 19").
    build_recalls = [recall]
    for build in range(2, args.builds + 1):
        other, _ = build_store(work / f"build-{n}-{build}" / name, name, points)
        try:
            hits = 0
            for q in queries:
                found = other.shard.query(
                    qe.QueryRequest(
                        limit=TOP_K,
                        query=qe.Query.Nearest(q.tolist(), using=DENSE_VECTOR),
                        filter=tenant_filter,
                        params=other._search_params,
                    )
                )
                hits += len({id_to_row[str(p.id)] for p in found} & set(exact(q).tolist()))
            build_recalls.append(hits / (TOP_K * len(queries)))
        finally:
            other.close()
            shutil.rmtree(work / f"build-{n}-{build}", ignore_errors=True)
        print(f"build {build}: recall@5 {build_recalls[-1]:.3f}", flush=True)

    local = None
    if n <= args.local_max:
        from qdrant_client import QdrantClient, models

        local_path = work / f"raw-local-{n}"
        client = QdrantClient(path=str(local_path))
        client.create_collection(
            "raw", vectors_config=models.VectorParams(size=vectors.shape[1], distance=models.Distance.COSINE)
        )
        started = time.perf_counter()
        for start in range(0, n, 1024):
            client.upsert(
                "raw",
                points=[
                    models.PointStruct(
                        id=i, vector=vectors[i].tolist(), payload={"tenant_id": str(tenants[i])}
                    )
                    for i in range(start, min(n, start + 1024))
                ],
            )
        local_upsert = time.perf_counter() - started
        local_filter = models.Filter(
            must=[models.FieldCondition(key="tenant_id", match=models.MatchValue(value=TENANT))]
        )
        local_lat = []
        for q in queries[: args.local_queries]:
            _, seconds = timed(
                lambda v: client.query_points("raw", query=v, query_filter=local_filter, limit=TOP_K),
                q.tolist(),
            )
            local_lat.append(seconds)
        client.close()
        local = {
            "upsert": local_upsert,
            **summary(local_lat),
            **probe_load("local", local_path, queries[0].tolist()),
        }

    # Start-up on this store (spawn to /readyz 200, then the first search) and its steps one by one.
    boot = {
        **measure_startup(REPO, data_dir, extra_env=args.service_env),
        "phases": phases(REPO, data_dir, extra_env=args.service_env),
    }
    baseline_dir = work / f"baseline-{n}" / "data"
    if args.compare_with and n in args.concurrency_at and not args.threads_sweep:
        # The other checkout's service gets its own copy of the store (one process owns a store).
        shutil.copytree(data_dir, baseline_dir, ignore=shutil.ignore_patterns(".lock"))
    # The service on the same store: start-up to healthy, then HTTP searches interleaved with raw edge.
    started = time.perf_counter()
    service = ServiceProcess(data_dir, env=args.service_env)
    startup = time.perf_counter() - started
    # The search pool the service chose for this shard when it opened it (EDGE_SEARCH_THREADS; 1: the calling thread).
    pool = json.loads((data_dir / "edge" / name / "edge_config.json").read_text()).get("max_search_threads")
    sweep: dict[str, dict] = {}
    try:
        texts = query_texts[: args.queries]
        vectors_by_text = dict(zip(query_texts, (v.tolist() for v in query_vectors), strict=True))
        encoder = default_encoder()
        sparse_by_text = {
            text: qe.SparseVector(list(vec.indices), list(vec.values))
            for text, vec in ((text, encoder.query(text)) for text in texts)
        }
        with httpx.Client(base_url=service.url, timeout=60) as client:
            warm_up(client)
            # The start-up orphan pass scans every point in paced slices that hold the GIL (tens of seconds at
            # 100k): measure the steady state after it, as a service serves for the rest of the hour.
            gc_wait = wait_for_startup_collection(client)
            # Distinct texts, each new to the service: its query-vector cache misses, as the raw path embeds.
            cold = interleaved(client, service, texts, lambda text: edge_query(embedder.embed_query(text)))
            # The same texts again: the service has their vectors cached; the raw side skips embedding too.
            warm = interleaved(client, service, texts, lambda text: edge_query(vectors_by_text[text]))
            # And in the default mode (hybrid), against the same fused engine query.
            warm_hybrid = interleaved(
                client,
                service,
                texts,
                lambda text: edge_hybrid(vectors_by_text[text], sparse_by_text[text]),
                mode="hybrid",
            )
            hits_seen = len(
                client.post("/v1/search", json={"query": texts[0], "top_k": TOP_K}).json()["results"]
            )
        service_rss = rss_mb(service.proc.pid)
        if n in args.concurrency_at and not args.threads_sweep:
            services = {"service default": service}
            if args.compare_with:
                services[f"baseline: {args.compare_with}"] = baseline_service(
                    args.compare_with, baseline_dir, args
                )
            try:
                sweep.update(throughput(services, query_texts, args))
            finally:
                for other in services.values():
                    if other is not service:
                        other.stop()
    finally:
        service.stop()
    if n in args.concurrency_at:
        for threads in args.threads_sweep:
            env = (
                {**args.service_env, "EMBEDDING_THREADS": threads}
                if threads != "default"
                else args.service_env
            )
            label = f"EMBEDDING_THREADS={threads}" if threads != "default" else "EMBEDDING_THREADS unset"
            swept = ServiceProcess(data_dir, env=env)
            try:
                sweep[label] = throughput({label: swept}, query_texts, args)[label]
            finally:
                swept.stop()
    shard.close()
    return {
        "n": n,
        "upsert": upsert_seconds,
        "optimize": optimize_seconds,
        "longest_pass": longest_pass,
        "segments": segments,
        "segments_built": segments_built,
        "consolidate": consolidate_seconds if consolidated else None,
        "pool": pool,
        "modes": modes,
        "edge": {**summary(edge_lat), **edge_load},
        "numpy": summary(numpy_lat),
        "recall": recall,
        "build_recalls": build_recalls,
        "local": local,
        "http": {
            "startup": startup,
            "rss": service_rss,
            "hits": hits_seen,
            "gc_wait": gc_wait,
            "cold": cold,
            "warm": warm,
            "warm_hybrid": warm_hybrid,
        },
        "concurrency": sweep,
        "boot": boot,
    }


def warm_up(client: httpx.Client) -> None:
    """Model session, engine and connection warm, with texts no measurement uses."""
    for index in range(10):
        client.post(
            "/v1/search", json={"query": f"warm-up question {index}", "top_k": TOP_K}
        ).raise_for_status()


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads: event loop, workers, ONNX and engine pools)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def histogram_totals(metrics: str, name: str, labels: str = "") -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in the text exposition, over every series ``labels`` selects
    (bench/ingest_search.py's ``histogram_values``; 0 before the first observation)."""
    values = histogram_values(metrics, name, labels)
    return values.get("sum", 0.0), values.get("count", 0.0)


COLLECTIONS = re.compile(r"^rag_orphan_collections_total ([0-9.eE+-]+)$", re.MULTILINE)


def wait_for_startup_collection(
    client: httpx.Client, timeout: float = 900.0, poll: float = 0.5
) -> float | None:
    """Wait until the service's start-up orphan-collection pass has ended (``rag_orphan_collections_total`` >= 1):
    seconds waited, or None if this service never reports one (a checkout without the counter, GC_ENABLED=false).

    The pass reads every point in slices that each hold the GIL, paced to at most a tenth of the process: at 100k
    chunks it runs for tens of seconds after start-up (docs/benchmarks.md, "Orphan collector at start-up"), and
    searches measured during it pay for its slices (2026-11-26 13:40: dense p50 6.4-6.7 ms during the pass
    against 5.9 ms after it, CPU per search 9.4 against 7.8 ms). After it the collector sleeps for
    GC_INTERVAL_SECONDS (an hour by default): the state a service is in ~97 % of the time."""
    if os.environ.get("GC_ENABLED", "true").strip().lower() in ("false", "0", "no", "off"):
        return None  # the services inherit this environment: no pass will run
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        found = COLLECTIONS.search(client.get("/metrics").text)
        if found is None:
            return None
        if float(found.group(1)) >= 1:
            return time.monotonic() - started
        time.sleep(poll)
    raise SystemExit(f"the service's start-up orphan collection did not end within {timeout:.0f} s")


# Idle time before each timed search of the interleaved runs (see interleaved()).
GAP_SECONDS = 0.005

SERVER_PARTS = {
    "embedding": ("rag_embedding_duration_seconds", 'kind="query"'),
    "engine + registry": ("rag_search_duration_seconds", ""),
    "request": ("rag_http_request_duration_seconds", 'route="/v1/search"'),
}


def interleaved(  # type: ignore[no-untyped-def]
    client: httpx.Client, service: ServiceProcess, texts: list[str], raw, mode: str = "dense"
) -> dict:
    """HTTP searches interleaved query by query with ``raw(text)`` (alternating which goes first); latency
    percentiles of both, and from the service's own /metrics and /proc: the mean server-side time per search
    spent embedding, in the engine + registry check, and in the whole request, and its CPU per search.

    Each text goes over HTTP through ONE of two clients, alternately: a minimal keep-alive client
    (one socket, httptools' parser: ``http``, bench/httpclient.py) and httpx (``httpx``), so the client's own cost per request is
    measured side by side (a text sent twice would hit the service's query-vector cache the second time). Before
    each timed call the process idles for GAP_SECONDS, so work one path leaves running after it returns (the
    server's post-response bookkeeping) does not land in the other path's timing.
    """
    before = client.get("/metrics").text
    cpu_before = server_cpu_seconds(service.proc.pid)
    latencies: dict[str, list[float]] = {"http": [], "httpx": []}
    raw_lat = []
    with KeepAliveClient(service.url) as fast:
        for index, text in enumerate(texts):
            via = "http" if (index // 2) % 2 == 0 else "httpx"
            for path in ("http", "raw") if index % 2 else ("raw", "http"):
                time.sleep(GAP_SECONDS)
                started = time.perf_counter()
                if path == "http":
                    # The mode the raw path's engine query runs, so both sides do the same work.
                    body = {"query": text, "top_k": TOP_K, "mode": mode}
                    if via == "httpx":
                        client.post("/v1/search", json=body).raise_for_status()
                    else:
                        fast.post_json("/v1/search", body)
                    latencies[via].append(time.perf_counter() - started)
                else:
                    raw(text)
                    raw_lat.append(time.perf_counter() - started)
    cpu = server_cpu_seconds(service.proc.pid) - cpu_before
    after = client.get("/metrics").text
    server = {}
    for part, (name, labels) in SERVER_PARTS.items():
        total_after, _ = histogram_totals(after, name, labels)
        total_before, _ = histogram_totals(before, name, labels)
        server[part] = (total_after - total_before) / len(texts) * 1000  # per search, misses and hits alike
    server["cpu"] = cpu / len(texts) * 1000
    return {
        "http": summary(latencies["http"]),
        "httpx": summary(latencies["httpx"]),
        "raw": summary(raw_lat),
        "server": server,
    }


def baseline_service(checkout: Path, data_dir: Path, args: argparse.Namespace) -> ServiceProcess:
    """`python -m service` of another checkout (e.g. main, for a before/after), on its own copy of the store.

    ``-P`` keeps the current directory (this checkout) off sys.path, so PYTHONPATH's checkout is imported."""
    env = {**args.service_env, "PYTHONPATH": str(checkout)}
    return ServiceProcess(data_dir, env=env, command=[sys.executable, "-P", "-m", "service"])


def throughput(services: dict[str, ServiceProcess], query_texts: list[str], args: argparse.Namespace) -> dict:
    """Searches/s and p50 at 1, 4 and 16 clients, for distinct texts (every query new: the model runs) and for
    repeated texts (a set of 50 whose vectors the service has cached), plus the server's CPU per search and the
    mean query-embedding batch. Several services (this checkout and a baseline) are measured cell by cell,
    alternating which goes first, so the load of a shared machine hits them alike."""
    repeated = query_texts[:50]
    for service in services.values():
        with httpx.Client(base_url=service.url, timeout=60) as client:
            warm_up(client)
            wait_for_startup_collection(client)  # a baseline or sweep service just started: steady state only
            for text in repeated:
                client.post("/v1/search", json={"query": text, "top_k": TOP_K}).raise_for_status()
    serial = iter(range(10**9))
    lock = threading.Lock()

    def distinct(i: int) -> str:
        with lock:
            number = next(serial)
        return f"{query_texts[i % len(query_texts)]} (variant {number})"

    def again(i: int) -> str:
        return repeated[i % len(repeated)]

    out: dict[str, dict[str, dict[int, dict[str, float]]]] = {
        label: {"distinct": {}, "repeated": {}} for label in services
    }
    cell = 0
    for clients in (1, 4, 16):
        for kind, text_of in (("distinct", distinct), ("repeated", again)):
            order = list(services.items())
            for label, service in order if cell % 2 == 0 else order[::-1]:
                out[label][kind][clients] = searches_per_second(
                    service, text_of, clients, args.concurrency_seconds
                )
            cell += 1
    return out


def engine_modes(
    store: EdgeVectorStore, texts: list[str], vectors: np.ndarray
) -> dict[str, dict[str, float]]:
    """The adapter's own search (what the service calls, payloads included) per mode: p50/p99 ms."""
    from service.app.store.sparse import default_encoder

    encoder = default_encoder()
    sparse = [encoder.query(text) for text in texts]
    latencies: dict[str, list[float]] = {"dense": [], "sparse": [], "hybrid": []}
    for i, vector in enumerate(vectors):
        for mode, seconds in latencies.items():
            _, took = timed(
                lambda: store.search(TENANT, vector.tolist(), limit=TOP_K, mode=mode, sparse=sparse[i])  # noqa: B023
            )
            seconds.append(took)
    return {mode: summary(values) for mode, values in latencies.items()}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of a process so far, with its kernel name (comm)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


PY_THREAD = re.compile(r'^Thread (?:0x[0-9A-Fa-f]+ )?\(?(\d+)\)? \((?:[^)]*)\): "([^"]*)"', re.MULTILINE)


def python_thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from ``py-spy dump`` (empty when py-spy is not installed): Python
    threads all carry the interpreter's kernel name, so only this tells the event loop from a search worker."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {}
    try:
        dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(tid): name for tid, name in PY_THREAD.findall(dump.stdout)}


THREAD_GROUPS = ("event loop", "search workers", "native pools", "engine pool", "other")


def thread_group(tid: int, comm: str, pid: int, names: dict[int, str]) -> str:
    """Which part of the service a thread is: the event loop (MainThread), the search path's workers (the query
    embedding's calling thread, engine call, registry), the native pools with no Python frames (ONNX Runtime's
    intra-op thread, the tokenizer's), the engine's search pool (``edge-search-N``), or anything else (the
    optimizer, collector, uvloop's resolver)."""
    name = names.get(tid)
    if tid == pid or name == "MainThread":
        return "event loop"
    if comm.startswith("edge-search"):
        return "engine pool"
    if name is not None:
        return "search workers" if name.startswith(("search-worker", "AnyIO worker")) else "other"
    if comm.startswith("libuv"):
        return "other"
    return "native pools" if names else "other"


def searches_per_second(service: ServiceProcess, text_of, clients: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(offset: int) -> None:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            i = offset
            while True:  # at least one search per client, however loaded the machine
                started = time.perf_counter()
                client.post("/v1/search", json={"query": text_of(i), "top_k": TOP_K}).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)
                i += clients
                if time.monotonic() >= deadline:
                    break

    batch = "rag_query_embedding_batch_size"  # absent from a baseline without query coalescing
    batch_before = histogram_totals(httpx.get(f"{service.url}/metrics", timeout=60).text, batch)
    cpu_before = server_cpu_seconds(service.proc.pid)
    threads_before = thread_cpu(service.proc.pid)
    client_before = time.process_time()
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    elapsed = time.monotonic() - started
    client_cpu = time.process_time() - client_before
    cpu = server_cpu_seconds(service.proc.pid) - cpu_before
    threads_after = thread_cpu(service.proc.pid)
    names = python_thread_names(service.proc.pid)  # after: search workers start on demand
    by_group = dict.fromkeys(THREAD_GROUPS, 0.0)
    for tid, (comm, total) in threads_after.items():
        spent = total - threads_before.get(tid, (comm, 0.0))[1]
        by_group[thread_group(tid, comm, service.proc.pid, names)] += spent / len(latencies) * 1000
    batch_after = histogram_totals(httpx.get(f"{service.url}/metrics", timeout=60).text, batch)
    runs = batch_after[1] - batch_before[1]
    return {
        "rate": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "cpu": cpu / len(latencies) * 1000,
        "batch": (batch_after[0] - batch_before[0]) / runs if runs else None,
        "threads": by_group,
        "client_cpu": client_cpu / len(latencies) * 1000,
    }


def recall_cell(r: dict) -> str:
    """The lowest recall@5 over the size's builds, then every build's (the first is the one served over HTTP)."""
    recalls = r.get("build_recalls") or [r["recall"]]
    if len(recalls) == 1:
        return f"{recalls[0]:.3f}"
    return f"**{min(recalls):.3f}** (builds: {', '.join(f'{x:.3f}' for x in recalls)})"


def render(results: list[dict], setup: str, empty_boot: dict | None = None) -> str:
    def f(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    def pct(s: dict) -> str:
        return f"{f(s['p50'])} / {f(s['p95'])} / {f(s['p99'])}"

    rows = [
        "Search over HTTP against the raw path, interleaved query by query, `mode: dense` on both sides (the "
        "raw path is a dense engine query with the tenant filter). **Distinct**: every query text new to the "
        "service (its query-vector cache misses; raw = embed + engine query, the query embedded by the service's "
        f"embedder class with the graph the service runs, EMBEDDING_QUERY_PRECISION={QUERY_PRECISION}). "
        "**Repeated**: the same texts "
        "again (vectors cached in the service; raw = engine query with the stored vector). HTTP is timed with two "
        "clients, each sending every other text: a minimal keep-alive client, one socket and httptools' parser (the p50 / p95 / "
        "p99 and ratio columns) and httpx (its p50 and ratio in the `httpx` columns); the difference is the "
        "client's own cost per request, not the service's (bench/httpclient.py). 5 ms idle before each timed call.",
        "",
        "| chunks | distinct: HTTP p50 / p95 / p99 (ms) | raw p50 | HTTP / raw | httpx p50 / ratio "
        "| repeated: HTTP p50 / p95 / p99 (ms) | raw p50 | HTTP / raw | httpx p50 / ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cold, warm = r["http"]["cold"], r["http"]["warm"]
        rows.append(
            f"| {r['n']:,} | {pct(cold['http'])} | {f(cold['raw']['p50'])} "
            f"| {cold['http']['p50'] / cold['raw']['p50']:.2f}x "
            f"| {f(cold['httpx']['p50'])} / {cold['httpx']['p50'] / cold['raw']['p50']:.2f}x "
            f"| {pct(warm['http'])} | {f(warm['raw']['p50'], 2)} "
            f"| {warm['http']['p50'] / warm['raw']['p50']:.2f}x "
            f"| {f(warm['httpx']['p50'])} / {warm['httpx']['p50'] / warm['raw']['p50']:.2f}x |"
        )
    rows += [
        "",
        "Repeated texts in the default mode (`hybrid`: dense + BM25, fused), interleaved query by query with the "
        "same fused engine query in process (dense and BM25 candidates, PREFETCH_MIN each, tenant filter, "
        "reciprocal rank fusion, top_k with payload):",
        "",
        "| chunks | hybrid repeated: HTTP p50 / p95 / p99 (ms) | raw fused query p50 | HTTP / raw "
        "| httpx p50 / ratio | dense repeated HTTP p50, for comparison |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        hybrid, warm = r["http"]["warm_hybrid"], r["http"]["warm"]
        rows.append(
            f"| {r['n']:,} | {pct(hybrid['http'])} | {f(hybrid['raw']['p50'], 2)} "
            f"| {hybrid['http']['p50'] / hybrid['raw']['p50']:.2f}x "
            f"| {f(hybrid['httpx']['p50'])} / {hybrid['httpx']['p50'] / hybrid['raw']['p50']:.2f}x "
            f"| {f(warm['http']['p50'])} |"
        )
    waits = ", ".join(
        f"{r['n']:,}: {r['http']['gc_wait']:.1f} s" if r["http"]["gc_wait"] is not None else f"{r['n']:,}: -"
        for r in results
    )
    rows += [
        "",
        "Every HTTP measurement starts after the service's start-up orphan-collection pass has ended (it reads "
        "every point in GIL-holding slices; searches during it are slower, see wait_for_startup_collection). "
        f"Waited after the warm-up: {waits}.",
    ]
    rows += [
        "",
        "Inside the service, per search (means from its /metrics histograms over the same runs; server CPU from "
        "/proc, all threads: event loop, workers, ONNX Runtime and engine pools):",
        "",
        "| chunks | queries | query embedding (ms) | engine + registry (ms) | rest of the request: HTTP, "
        "routing, threadpool (ms) | whole request in the server (ms) | server CPU per search (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"cold": "distinct", "warm": "repeated", "warm_hybrid": "repeated, hybrid"}
    for r in results:
        for kind, label in labels.items():
            sv = r["http"][kind]["server"]
            rest = sv["request"] - sv["embedding"] - sv["engine + registry"]
            rows.append(
                f"| {r['n']:,} | {label} | {f(sv['embedding'], 2)} "
                f"| {f(sv['engine + registry'], 2)} | {f(rest, 2)} | {f(sv['request'], 2)} | {f(sv['cpu'], 1)} |"
            )
    rows += [
        "",
        "| chunks | edge engine p50 / p99 (ms) | numpy exact p50 (ms) | local mode p50 (ms) | recall@5 edge vs exact (lowest of the builds) "
        "| adapter dense / sparse / hybrid p50 (ms) | segments built / after consolidation (s) "
        "| service's search pool (threads; 1: the calling thread) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        local = r["local"]
        modes = r["modes"]
        merged = (
            f"{r['segments']} ({r['consolidate']:.0f} s)" if r["consolidate"] is not None else "not needed"
        )
        rows.append(
            f"| {r['n']:,} | {f(r['edge']['p50'], 2)} / {f(r['edge']['p99'], 2)} | {f(r['numpy']['p50'], 2)} "
            f"| {f(local['p50']) if local else 'skipped'} | {recall_cell(r)} "
            f"| {f(modes['dense']['p50'], 2)} / {f(modes['sparse']['p50'], 2)} / {f(modes['hybrid']['p50'], 2)} "
            f"| {r['segments_built']} / {merged} | {r.get('pool') or '-'} |"
        )
    rows += [
        "",
        "| chunks | service start-up to healthy (s) | service RSS (MB) | edge load / +first query (s) | edge RSS (MB) "
        "| local load (s) | local RSS (MB) | edge upsert / index build (s) | longest build pass (s) / segments |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        local = r["local"]
        rows.append(
            f"| {r['n']:,} | {r['http']['startup']:.2f} | {r['http']['rss']:.0f} "
            f"| {r['edge']['load']:.2f} / {r['edge']['first_query']:.2f} | {r['edge']['rss']:.0f} "
            f"| {f(local['load'], 2) if local else 'skipped'} | {f(local['rss'], 0) if local else 'skipped'} "
            f"| {r['upsert']:.1f} / {r['optimize']:.1f} | {r['longest_pass']:.1f} / {r['segments']} |"
        )
    boots = ([("empty", empty_boot)] if empty_boot else []) + [(f"{r['n']:,}", r["boot"]) for r in results]
    rows += [
        "",
        "| chunks | start-up to /readyz 200 (s) | first search (ms) | imports (s) | model load (s) "
        "| registry migrate (s) | store open (s) | wiring + first query (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, boot in boots:
        steps = boot["phases"]
        imports = sum(v for k, v in steps.items() if k.startswith("imports"))
        rows.append(
            f"| {label} | {boot['ready']:.2f} | {boot['first_search'] * 1000:.0f} | {imports:.2f} "
            f"| {steps['model load']:.2f} | {steps['registry migrate']:.2f} | {steps['store open']:.2f} "
            f"| {steps['wiring'] + steps['first query']:.2f} |"
        )
    rows.append("")
    rows.append(
        "Start-up steps timed one after the other in a fresh process (bench/startup.py; medians of 3 such "
        "processes, the service's modules compiled to byte code beforehand); the service overlaps "
        "the model load with the imports and the migration, so the steps add up to more than the start-up."
    )
    with_concurrency = [r for r in results if r["concurrency"]]
    if with_concurrency:
        rows += [
            "",
            "Throughput over HTTP in the default mode (hybrid: dense + BM25, fused), client threads in this "
            "process on the same CPUs: searches/s, with p50 (ms), the server's CPU per search (ms) and the mean "
            "query-embedding batch (queries per ONNX run, where the service coalesces) in brackets. A baseline "
            "row (`--compare-with`) is another checkout's service on a copy of the store, measured cell by cell "
            "alternately with this one.",
            "",
            "| chunks | service | queries | 1 client | 4 clients | 16 clients |",
            "|---|---|---|---|---|---|",
        ]
        for r in with_concurrency:
            for label, kinds in r["concurrency"].items():
                for kind, by_clients in kinds.items():
                    cells = " | ".join(
                        f"{c['rate']:.0f} ({c['p50']:.1f} ms, {c['cpu']:.1f} ms CPU"
                        + (f", batch {c['batch']:.1f})" if c.get("batch") is not None else ")")
                        for c in by_clients.values()
                    )
                    rows.append(f"| {r['n']:,} | {label} | {kind} | {cells} |")
        rows += [
            "",
            "CPU per search by thread at 4 clients (ms; the service's threads from /proc/PID/task, Python ones "
            "named by `py-spy dump` after the cell: native pools = threads without Python frames, i.e. ONNX Runtime's "
            "intra-op thread and the tokenizer's; search workers = the query embedding's calling thread, the engine "
            "call and the registry), and the benchmark's own client threads (process CPU of this script, on the "
            "same 2 CPUs, including the creation of its httpx clients, a fixed cost per cell that only shows "
            "per search when a loaded machine gets few searches through):",
            "",
            "| chunks | service | queries | searches/s | server total | event loop | search workers | native pools "
            "| engine pool | other | client process | server + client |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in with_concurrency:
            for label, kinds in r["concurrency"].items():
                for kind, by_clients in kinds.items():
                    c = by_clients.get(4)
                    if not c or "threads" not in c:
                        continue
                    parts = " | ".join(f"{c['threads'][group]:.1f}" for group in THREAD_GROUPS)
                    rows.append(
                        f"| {r['n']:,} | {label} | {kind} | {c['rate']:.0f} | {c['cpu']:.1f} | {parts} "
                        f"| {c['client_cpu']:.1f} | {c['cpu'] + c['client_cpu']:.1f} |"
                    )
    return "\n".join([START, "", setup, "", *rows, "", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument(
        "--real", type=int, default=2000, help="chunks embedded for real; more are replicated"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--local-max", type=int, default=10_000)
    parser.add_argument("--local-queries", type=int, default=50)
    parser.add_argument("--concurrency-at", default="10000")
    parser.add_argument("--concurrency-seconds", type=float, default=10.0)
    parser.add_argument(
        "--threads-sweep",
        default=None,
        help="EMBEDDING_THREADS values to measure throughput with at --concurrency-at, e.g. 1,2,default "
        "(a service start per value; default: 'default,1', the service's default and one intra-op thread, whose "
        "CPU per query is ~0.7x at ~1.2x the lone query's embedding time, docs/benchmarks.md; with --compare-with "
        "the default is none); empty: the service's default only",
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        help="another checkout of this repo (e.g. main in a temporary worktree) whose service is measured in the "
        "throughput part side by side with this one, on a copy of the same store",
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--builds",
        type=int,
        default=3,
        help="build each size's store this many times from the same points (the service's indexing and "
        "consolidation, from scratch) and report recall@5 per build and the lowest: HNSW builds are random",
    )
    parser.add_argument("--write", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--cache", type=Path, help="directory keeping the corpus embeddings between runs")
    args = parser.parse_args()
    args.concurrency_at = {int(s) for s in args.concurrency_at.split(",") if s}
    if (
        args.threads_sweep is None
    ):  # a --compare-with run measures this checkout's default against the baseline
        args.threads_sweep = "" if args.compare_with else "default,1"
    args.threads_sweep = [t for t in args.threads_sweep.split(",") if t]
    # The result cache would answer repeated requests without searching: measure the search path itself.
    args.service_env = {"CACHE_ENABLED": "false"}
    sizes = [int(s) for s in args.sizes.split(",")]
    if not (MODEL_DIR / "model.onnx").exists():
        raise SystemExit("run `make model` first")

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rag-scale-"))
    settings = Settings(_env_file=None)
    # The raw path embeds distinct queries with the graph the service's queries run (EMBEDDING_QUERY_PRECISION:
    # int8 by default), so the distinct ratio compares like with like.
    embedder = FastEmbedEmbedder(
        MODEL,
        model_path=MODEL_DIR,
        cache_dir=work / "fastembed",
        query_precision=settings.embedding_query_precision,
    )
    chunker = Chunker(
        embedder.tokenizer,
        max_tokens=embedder.max_tokens,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
    )
    docs = stdlib_docstrings(args.real + args.queries + 10, rng)
    texts: list[str] = []
    for doc in docs[args.queries + 10 :]:
        texts.extend(chunk.text for chunk in chunker.split(doc))
        if len(texts) >= args.real:
            break
    texts = texts[: args.real]
    query_texts = [doc.split(".")[0][:200] for doc in docs[: args.queries + 10]]
    started = time.perf_counter()
    if args.cache and (args.cache / "base.npy").is_file():
        # Same corpus and split (same --real, --queries, --seed), embedded by an earlier run.
        base, query_vectors = np.load(args.cache / "base.npy"), np.load(args.cache / "queries.npy")
        if len(query_vectors) != len(query_texts):  # a cache from a run with another --queries (or version)
            query_vectors = np.asarray([embedder.embed_query(t) for t in query_texts], dtype=np.float32)
            np.save(args.cache / "queries.npy", query_vectors)
    else:
        print(f"embedding {len(texts)} real chunks and {len(query_texts)} queries", flush=True)
        base = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
        query_vectors = np.asarray([embedder.embed_query(t) for t in query_texts], dtype=np.float32)
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)
            np.save(args.cache / "base.npy", base)
            np.save(args.cache / "queries.npy", query_vectors)
    embed_seconds = time.perf_counter() - started
    load_before = os.getloadavg()[0]
    nprng = np.random.default_rng(args.seed)
    # Start-up of the same service on an empty data dir: what start-up costs before any data (imports, model).
    started = time.perf_counter()
    empty = ServiceProcess(work / "empty", env=args.service_env)
    empty_startup = time.perf_counter() - started
    empty_rss = rss_mb(empty.proc.pid)
    empty.stop()
    empty_dir = work / "empty-boot" / "data"
    empty_boot = {**measure_startup(REPO, empty_dir, extra_env=args.service_env)}
    empty_boot["phases"] = phases(REPO, work / "empty-phases" / "data", extra_env=args.service_env)
    results = []
    try:
        for n in sizes:
            results.append(run_size(n, base, texts, query_texts, query_vectors, embedder, args, work, nprng))
            print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    setup = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, load average "
        f"{load_before:.1f} before and {load[0]:.1f} after (the machine was shared with other jobs: compare within a row, not across runs); "
        f"{conditions()}. "
        f"{len(texts)} real chunks of standard-library docstrings embedded in {embed_seconds:.0f} s, replicated "
        f"with noise up to each size; {args.queries} queries (docstring first sentences), top_k {TOP_K}, tenant "
        f"filter on 90 % of the points; local mode measured on {args.local_queries} queries, skipped above "
        f"{args.local_max:,} points. The same service on an empty data dir started in {empty_startup:.2f} s "
        f"with {empty_rss:.0f} MB RSS (the baseline for the start-up and RSS columns)."
    )
    table = render(results, setup, empty_boot)
    print(table)
    if args.write:
        replace_section(
            args.write, table, START, END, heading="## Scale (`make bench SCALE=N`, bench/scale.py)"
        )
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
