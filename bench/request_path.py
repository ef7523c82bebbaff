"""Benchmark: the fixed cost of one search inside the service, stage by stage, in one process (no sockets).

    python bench/request_path.py                       # 80 documents (make bench's corpus), writes its section
    python bench/request_path.py --rounds 5 --calls 2000 --write ''

The app is built with `create_app` on embedded defaults (SQLite registry, qdrant-edge; auth, rate limits and the
search cache off, as `make bench` runs it) in a temporary directory, make bench's documents are ingested, and
one query text is searched over and over, so the query-vector cache answers and what is left is the fixed path:

- **ASGI app**: the whole request through the middleware, routing, validation, the search and serialisation,
  called directly with an in-memory request (what uvicorn hands the app, minus the socket);
- **framework only**: the same, with the search service replaced by one returning a fixed 5-hit response
  (no threadpool hop): FastAPI + our middleware; also counted in Python function calls per request
  (`sys.setprofile`), a figure that does not move with the machine's load;
- **SearchService.search**: the hop (service.app.core.hop's search pool) plus the blocking part;
- **blocking part**: the registry snapshot, the engine query and the visibility check, in the caller's thread;
- **engine query** and **registry snapshot + visibility query** alone; the **search pool's hop** with a no-op, and anyio's
  ``to_thread.run_sync`` hop (what the search used before 2026-11-26 10:30) with a no-op, for comparison.

Each stage runs in interleaved rounds (stage A, B, C..., then again), and the table reports the median over
rounds of each round's mean wall time and of its CPU time on the calling thread (the engine's pool threads
are not in the CPU column). Run it on a quiet machine: absolute times are only meaningful there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest_search import MODEL_DIR, make_document  # noqa: E402
from sections import replace_section  # noqa: E402

START = "<!-- request_path:start -->"
END = "<!-- request_path:end -->"
QUERY = "how does planets relate to comet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300, help="calls per stage per round")
    parser.add_argument("--write", default=str(REPO / "docs" / "benchmarks.md"), help="results file ('' not)")
    args = parser.parse_args()
    if not (MODEL_DIR / "model.onnx").exists():
        raise SystemExit("run `make model` first")
    work = Path(tempfile.mkdtemp(prefix="rag-request-path-"))
    os.environ.update(
        {
            "DATA_DIR": str(work / "data"),
            "ENVIRONMENT": "development",
            "AUTH_DISABLED": "true",
            "RATE_LIMIT_ENABLED": "false",
            "CACHE_ENABLED": "false",
            "GC_ENABLED": "false",
            "EDGE_CONSOLIDATE_IDLE_SECONDS": "0",  # no consolidation starting mid-measurement
            "LOG_LEVEL": "WARNING",
            "EMBEDDING_MODEL_PATH": str(MODEL_DIR),
        }
    )
    for key in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL", "QDRANT_PATH", "EDGE_PATH", "VECTOR_STORE"):
        os.environ.pop(key, None)
    load_before = os.getloadavg()[0]
    try:
        import uvloop

        rows, calls = uvloop.run(measure(args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    setup = (
        f"{args.docs} documents (make bench's corpus), one repeated query (the query-vector cache answers), "
        f"{args.rounds} interleaved rounds of {args.calls} calls per stage; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, measured "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} at the end."
    )
    table = "\n".join(
        [
            "| stage (one search) | wall per call (µs) | CPU of the calling thread (µs) |",
            "|---|---|---|",
            *(f"| {name} | {wall:.0f} | {cpu:.0f} |" for name, (wall, cpu) in rows.items()),
            "",
            f"Framework work per search request (search stubbed): {calls[0]:.0f} Python function calls, "
            f"{calls[1]:.0f} C calls.",
        ]
    )
    print(setup)
    print(table)
    if args.write:
        replace_section(
            Path(args.write),
            "\n".join([START, "", setup, "", table, "", END]),
            START,
            END,
            heading="### The fixed cost of one search, stage by stage (`bench/request_path.py`)",
        )
        print(f"wrote {args.write}")


def wait_until_indexed(store: object, timeout: float = 120) -> None:
    """Until the edge store's optimizer has nothing pending (a no-op for other stores)."""
    optimizer = getattr(store, "_optimizer", None)
    deadline = time.monotonic() + timeout
    while optimizer is not None and not optimizer.idle and time.monotonic() < deadline:
        time.sleep(0.2)


async def measure(args: argparse.Namespace) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    from anyio import to_thread

    from service.app.core.config import get_settings
    from service.app.core.hop import SEARCH_THREADS
    from service.app.main import create_app
    from service.app.search.models import SearchRequest, SearchResponse, SearchResult

    app = create_app(get_settings())
    body = json.dumps({"query": QUERY, "top_k": 5, "mode": "dense"}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/search",
        "raw_path": b"/v1/search",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    fixed = SearchResponse(
        mode="dense",
        results=[
            SearchResult(
                document_id=f"doc-{i}", chunk_index=i, text="x" * 900, score=0.5, metadata={"topic": "x"}
            )
            for i in range(5)
        ],
    )

    class FixedSearch:
        async def search(self, tenant_id: str, request: SearchRequest) -> SearchResponse:
            return fixed

    async with app.router.lifespan_context(app):
        services = app.state.services
        rng = random.Random(7)
        for index in range(args.docs):
            document_id, text, metadata = make_document(rng, index)
            await services.ingest.ingest("default", document_id, text=text, metadata=metadata)
        # Index builds hold the GIL (qdrant-edge-py 0.9.0): let the pass after the ingest finish first.
        await to_thread.run_sync(wait_until_indexed, services.vectors)
        search = services.search
        request = SearchRequest.model_validate_json(body)
        conditions = request.conditions()
        vector = search.embedder.embed_query(QUERY)
        found = search.vectors.search("default", vector, limit=9, conditions=conditions, mode="dense")
        document_ids = [hit.document_id for hit in found]

        async def call_app() -> None:
            sent: list[dict] = []

            async def receive() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict) -> None:
                sent.append(message)

            await app({**scope, "state": {}}, receive, send)
            if sent[0]["status"] != 200:
                raise SystemExit(f"search failed: {sent}")

        async def framework() -> None:
            services.search = FixedSearch()
            try:
                await call_app()
            finally:
                services.search = search

        def snapshot() -> None:
            with services.registry.snapshot() as view:
                view.active_versions("default", document_ids)

        async_stages = {
            "ASGI app, whole request": call_app,
            "framework only (search stubbed)": framework,
            "SearchService.search (hop + blocking part)": lambda: search.search("default", request),
            "search pool hop (no-op)": lambda: SEARCH_THREADS.run(lambda: None),
            "anyio to_thread hop (no-op)": lambda: to_thread.run_sync(lambda: None),
        }
        sync_stages = {
            "blocking part (snapshot, engine, visibility)": lambda: search.search_sync("default", request),
            "engine query (top 9, tenant filter)": lambda: search.vectors.search(
                "default", vector, limit=9, conditions=conditions, mode="dense"
            ),
            "registry snapshot + visibility query": snapshot,
        }
        for _ in range(50):  # warm every path
            for stage in async_stages.values():
                await stage()
            for sync_stage in sync_stages.values():
                sync_stage()
        calls = {"call": 0, "c_call": 0}

        def count(frame: object, event: str, arg: object) -> None:
            if event in calls:
                calls[event] += 1

        sys.setprofile(count)
        for _ in range(100):
            await framework()
        sys.setprofile(None)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in [*async_stages, *sync_stages]}
        for _ in range(args.rounds):
            for name, stage in async_stages.items():
                wall, cpu = time.perf_counter(), time.thread_time()
                for _ in range(args.calls):
                    await stage()
                results[name].append(
                    ((time.perf_counter() - wall) / args.calls, (time.thread_time() - cpu) / args.calls)
                )
            for name, sync_stage in sync_stages.items():
                wall, cpu = time.perf_counter(), time.thread_time()
                for _ in range(args.calls):
                    sync_stage()
                results[name].append(
                    ((time.perf_counter() - wall) / args.calls, (time.thread_time() - cpu) / args.calls)
                )
    rows = {
        name: (statistics.median(w for w, _ in values) * 1e6, statistics.median(c for _, c in values) * 1e6)
        for name, values in results.items()
    }
    return rows, (calls["call"] / 100, calls["c_call"] / 100)


if __name__ == "__main__":
    main()
