"""Orphan collector at start-up: what its first pass costs the first searches, at N chunks.

    python bench/gc_startup.py --n 100000 --cache /work/benchcache        # builds the store once into --work

The service runs the orphan collector as soon as it is ready (service.app.store.gc). This measures, on a store
of ``--n`` points (the scale benchmark's corpus: real docstring chunks replicated with noise, 90 % in the searched
tenant, every document active in the registry, so the pass removes nothing and is pure overhead):

- **in process**: one collector pass over the store, paced as the service paces it: its work, its wall time
  with the pauses, and its slices (each one the time the pass holds the GIL at once);
- **over HTTP**: ``python -m service`` started ``--rounds`` times with the collector on (``GC_ENABLED=true``,
  the default) and off, alternately; from the moment /healthz first answers, one client sends searches with
  distinct texts for ``--seconds`` seconds; reported: p50/p95/max latency of the searches in the first second,
  in the whole window, and how many were answered.

The result replaces the section between the gc-startup markers in docs/benchmarks.md (``--write``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest_search import ServiceProcess, percentile  # noqa: E402
from scale import (  # noqa: E402
    CHUNKS_PER_DOCUMENT,
    MODEL,
    MODEL_DIR,
    TENANT,
    register_documents,
    replicate,
    stdlib_docstrings,
)
from sections import replace_section  # noqa: E402

from service.app.core.config import Settings  # noqa: E402
from service.app.ingest.chunking import Chunker  # noqa: E402
from service.app.store.edge import EdgeVectorStore  # noqa: E402
from service.app.store.embedder import FastEmbedEmbedder  # noqa: E402
from service.app.store.gc import Pacer, collect_orphans  # noqa: E402
from service.app.store.registry import DocumentRegistry  # noqa: E402
from service.app.store.vectors import ChunkPoint, collection_name  # noqa: E402

START = "<!-- gc-startup:start -->"
END = "<!-- gc-startup:end -->"
BUILT = "built.ok"


def corpus(real: int, queries: int, seed: int) -> tuple[list[str], list[str]]:
    """The scale benchmark's chunk texts and query texts (same seed, same split)."""
    rng = random.Random(seed)
    embedder = FastEmbedEmbedder(MODEL, model_path=MODEL_DIR)
    settings = Settings(_env_file=None)
    chunker = Chunker(
        embedder.tokenizer,
        max_tokens=embedder.max_tokens,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
    )
    docs = stdlib_docstrings(real + queries + 10, rng)
    texts: list[str] = []
    for doc in docs[queries + 10 :]:
        texts.extend(chunk.text for chunk in chunker.split(doc))
        if len(texts) >= real:
            break
    query_texts = [doc.split(".")[0][:200] for doc in docs[: queries + 10]]
    return texts[:real], query_texts


def build(data_dir: Path, n: int, base: np.ndarray, texts: list[str], seed: int) -> None:
    """A service data dir holding ``n`` indexed, consolidated points and their active registry rows."""
    if (data_dir / BUILT).is_file():
        return
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    vectors = replicate(base, n, rng)
    tenants = np.where(rng.random(n) < 0.9, TENANT, "other")
    name = collection_name("documents", MODEL, vectors.shape[1])
    defaults = Settings(_env_file=None)
    store = EdgeVectorStore(
        data_dir / "edge" / name,
        collection=name,
        dimension=vectors.shape[1],
        optimize_idle_seconds=None,
        consolidate_idle_seconds=defaults.edge_consolidate_idle_seconds,
        consolidate_segment_points=defaults.edge_consolidate_segment_points,
    )
    store.ensure_collection()
    chunk = store.optimize_chunk_points
    for start in range(0, n, chunk):
        store.upsert(
            [
                ChunkPoint(
                    tenant_id=str(tenants[i]),
                    document_id=f"doc-{i // CHUNKS_PER_DOCUMENT}",
                    version=1,
                    chunk_index=i % CHUNKS_PER_DOCUMENT,
                    text=texts[i % len(texts)],
                    vector=vectors[i].tolist(),
                    metadata={"source": "stdlib"},
                    content_hash="bench",
                    model=MODEL,
                )
                for i in range(start, min(n, start + chunk))
            ]
        )
        store.optimize()
        print(f"  {min(n, start + chunk)} points", flush=True)
    store.consolidate()
    store.close()
    register_documents(data_dir, {(str(tenants[i]), f"doc-{i // CHUNKS_PER_DOCUMENT}") for i in range(n)})
    (data_dir / BUILT).write_text(f"{n}\n")
    print(f"built {n} points in {time.perf_counter() - started:.0f} s", flush=True)


class RecordingPacer(Pacer):
    """The collector's own pacer, recording how long each slice ran before it (the time it held the GIL)."""

    def __init__(self) -> None:
        super().__init__()
        self.slice_seconds: list[float] = []

    def __call__(self) -> None:
        self.slice_seconds.append(time.perf_counter() - self._mark)
        super().__call__()


def in_process_pass(data_dir: Path, dimension: int) -> dict[str, float]:
    """One collector pass over the built store, as the service runs it (paced), timed slice by slice."""
    name = collection_name("documents", MODEL, dimension)
    store = EdgeVectorStore(
        data_dir / "edge" / name, collection=name, dimension=dimension, optimize_idle_seconds=None
    )
    store.ensure_collection()
    registry = DocumentRegistry(f"sqlite:///{(data_dir / 'registry.db').as_posix()}")
    pacer = RecordingPacer()
    try:
        started = time.perf_counter()
        report = collect_orphans(registry, store, grace_seconds=3600, pause=pacer)
        wall = time.perf_counter() - started
    finally:
        registry.close()
        store.close()
    slices = pacer.slice_seconds or [wall]
    return {
        "wall_ms": wall * 1000,
        "work_ms": sum(slices) * 1000,
        "slices": len(slices),
        "slice_p50_ms": statistics.median(slices) * 1000,
        "slice_max_ms": max(slices) * 1000,
        "versions": report.versions_seen,
    }


def early_searches(data_dir: Path, texts: list[str], seconds: float, gc_enabled: bool) -> dict[str, float]:
    """Start the service, then search with distinct texts from its first healthy answer for ``seconds``."""
    service = ServiceProcess(data_dir, env={"GC_ENABLED": str(gc_enabled).lower(), "CACHE_ENABLED": "false"})
    ready = time.perf_counter()
    timeline: list[tuple[float, float]] = []
    try:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            for text in texts:
                sent = time.perf_counter()
                if sent - ready > seconds:
                    break
                client.post("/v1/search", json={"query": text, "top_k": 5}).raise_for_status()
                timeline.append((sent - ready, time.perf_counter() - sent))
    finally:
        service.stop()
    first = [latency for at, latency in timeline if at < 1.0] or [float("nan")]
    every = [latency for _, latency in timeline]
    return {
        "first_p50": statistics.median(first) * 1000,
        "first_max": max(first) * 1000,
        "p50": statistics.median(every) * 1000,
        "p95": percentile(every, 0.95) * 1000,
        "max": max(every) * 1000,
        "count": len(every),
    }


def render(
    n: int, passes: list[dict], runs: dict[str, list[dict]], args: argparse.Namespace, load: tuple
) -> str:
    def med(rows: list[dict], key: str) -> str:
        return f"{statistics.median(r[key] for r in rows):.1f}"

    lines = [
        START,
        f"### Orphan collector at start-up ({n:,} points; `python bench/gc_startup.py --n {n}`)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average {load[0]:.2f} before / "
        f"{load[1]:.2f} after, niced. Every document is active, so a pass removes nothing: its whole cost is "
        "overhead.",
        "",
        f"One collector pass in process, paced as the service runs it (median of {len(passes)}): "
        f"{med(passes, 'work_ms')} ms of work in {med(passes, 'slices')} slices over "
        f"{passes[0]['versions']:,} versions, {med(passes, 'wall_ms')} ms wall with the pauses; a slice (the "
        f"longest time the pass holds the GIL at once) took {med(passes, 'slice_p50_ms')} ms at the median and "
        f"{med(passes, 'slice_max_ms')} ms at the longest.",
        "",
        f"Searches from the first healthy answer, one client, distinct texts, {args.seconds:.0f} s window, "
        f"{args.rounds} starts each, alternating (medians over the starts):",
        "",
        "| collector | first second p50 (ms) | first second max | window p50 | window p95 | window max | searches |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in runs.items():
        lines.append(
            f"| {label} | {med(rows, 'first_p50')} | {med(rows, 'first_max')} | {med(rows, 'p50')} | "
            f"{med(rows, 'p95')} | {med(rows, 'max')} | {med(rows, 'count')} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--cache", type=Path, help="base.npy from bench/scale.py --cache (else embedded here)"
    )
    parser.add_argument("--work", type=Path, help="data dir to build into and reuse (default /tmp/rag-gc-N)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--write", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if not (MODEL_DIR / "model.onnx").exists():
        raise SystemExit("run `make model` first")
    data_dir = args.work or Path(f"/tmp/rag-gc-{args.n}")
    texts, query_texts = corpus(args.real, args.queries, args.seed)
    if args.cache and (args.cache / "base.npy").is_file():
        base = np.load(args.cache / "base.npy")
    else:
        embedder = FastEmbedEmbedder(MODEL, model_path=MODEL_DIR)
        base = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
    build(data_dir, args.n, base, texts, args.seed)
    if args.build_only:
        return
    load_before = os.getloadavg()[0]
    passes = [in_process_pass(data_dir, base.shape[1]) for _ in range(args.passes)]
    runs: dict[str, list[dict]] = {"on (GC_ENABLED=true)": [], "off (GC_ENABLED=false)": []}
    for round_ in range(args.rounds):
        # Another slice of the query texts per start, so every search is new to the service (cache misses).
        texts_now = query_texts[round_ * 60 :] + query_texts[: round_ * 60]
        for label, enabled in (("on (GC_ENABLED=true)", True), ("off (GC_ENABLED=false)", False)):
            runs[label].append(early_searches(data_dir, texts_now, args.seconds, enabled))
            print(label, runs[label][-1], flush=True)
    section = render(args.n, passes, runs, args, (load_before, os.getloadavg()[0]))
    print(section)
    replace_section(args.write, section, START, END, heading="## Orphan collector at start-up")


if __name__ == "__main__":
    main()
