"""Does a trickle of writes keep the embedded store from consolidating? Segments and CPU per search after it.

    python bench/consolidation_trickle.py --points 20000 --every 1.0 --baseline /work/main --work DIR

Builds one shard of ``--points`` random unit vectors (384 dimensions) the way the service indexes a steady ingest,
with the caps scaled down from the service's 100k figures (``EDGE_SEGMENT_POINTS`` 10,240 and
``EDGE_CONSOLIDATE_SEGMENT_POINTS`` 20,480 at 100k: here points/10 and points/5 per segment, the indexing chunk
points/20), then, for each checkout (``--baseline``'s and this one, in its own process with its own code), copies
it and runs up to ``--attempts`` consolidations (``EdgeVectorStore.consolidate()``, the real child process and
swap) while a writer thread upserts one point every ``--every`` seconds. It records what each attempt did and the
segments after them; then it loads both resulting shards in one process and measures the engine's CPU per dense
search (``time.process_time()`` around ``EdgeShard.query``: all of its threads; p50 over ``--queries``,
interleaved query by query), which a loaded machine moves far less than wall time. Random vectors: no recall
column (bench/segments.py measures recall on the real corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DIM = 384
HERE = Path(__file__).resolve()


def caps(points: int) -> dict[str, int]:
    if (
        os.environ.get("TRICKLE_CAPS") == "service"
    ):  # the service's own caps (segments past the full-scan size)
        return {"segment_points": 10240, "optimize_chunk_points": 4096, "consolidate_segment_points": 20480}
    return {
        "segment_points": max(64, points // 10),
        "optimize_chunk_points": max(32, points // 20),
        "consolidate_segment_points": max(128, points // 5),
    }


def store_at(path: Path, points: int) -> object:
    from service.app.store.edge import EdgeVectorStore

    return EdgeVectorStore(
        path,
        collection="c",
        dimension=DIM,
        optimize_idle_seconds=None,
        consolidate_idle_seconds=3600,
        **caps(points),
    )


def chunk(n: int, rng: np.random.Generator, tenant: str = "t") -> object:
    from service.app.store.vectors import ChunkPoint

    vector = rng.standard_normal(DIM).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return ChunkPoint(
        tenant_id=tenant,
        document_id=f"d{n // 8}",
        version=1,
        chunk_index=n % 8,
        text=f"chunk {n}",
        vector=vector.tolist(),
        metadata={},
        content_hash="h",
        model="m",
    )


def build(path: Path, points: int) -> None:
    """The service's layout: upserts of 256, a bounded pass per indexing chunk."""
    store = store_at(path, points)
    store.ensure_collection()  # type: ignore[attr-defined]
    rng = np.random.default_rng(1)
    step = caps(points)["optimize_chunk_points"]
    for start in range(0, points, step):
        store.upsert([chunk(n, rng) for n in range(start, min(points, start + step))])  # type: ignore[attr-defined]
        store.optimize()  # type: ignore[attr-defined]
    print(json.dumps({"segments": store.shard.info().segments_count}), flush=True)  # type: ignore[attr-defined]
    store.close()  # type: ignore[attr-defined]


def trickle(path: Path, points: int, every: float, attempts: int) -> None:
    """Consolidate up to ``attempts`` times while one point is upserted every ``every`` seconds."""
    store = store_at(path, points)
    store.ensure_collection()  # type: ignore[attr-defined]
    before = store.shard.info().segments_count  # type: ignore[attr-defined]
    stop = threading.Event()
    written: list[int] = []
    rng = np.random.default_rng(2)

    def writer() -> None:
        n = points
        while not stop.wait(every):
            store.upsert([chunk(n, rng, tenant="trickle")])  # type: ignore[attr-defined]
            written.append(n)
            n += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    results = []
    started = time.perf_counter()
    for _ in range(attempts):
        t0 = time.perf_counter()
        swapped = store.consolidate()  # type: ignore[attr-defined]
        results.append(
            {
                "swapped": swapped,
                "seconds": round(time.perf_counter() - t0, 1),
                "replayed": (store.last_consolidation or {}).get("replayed") if swapped else None,  # type: ignore[attr-defined]
                "swap_seconds": round((store.last_consolidation or {}).get("swap_seconds", 0), 2)  # type: ignore[attr-defined]
                if swapped
                else None,
            }
        )
        if swapped:
            break
    stop.set()
    thread.join()
    acked = len(written)
    present = store.count("trickle")  # type: ignore[attr-defined]
    after = store.shard.info().segments_count  # type: ignore[attr-defined]
    store.close()  # type: ignore[attr-defined]
    import service

    print(
        json.dumps(
            {
                "code": str(Path(service.__file__).parent),
                "segments_before": before,
                "segments_after": after,
                "attempts": results,
                "writes_acked": acked,
                "writes_present": present,
                "seconds": round(time.perf_counter() - started, 1),
            }
        ),
        flush=True,
    )


def measure(paths: list[Path], queries: int) -> None:
    """CPU ms per dense top-5 query (tenant filter) on each shard, interleaved query by query: p50."""
    import qdrant_edge as qe

    shards = [
        qe.EdgeShard.load(
            str(p),
            qe.EdgeConfig(vectors={"dense": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)}),
        )
        for p in paths
    ]
    rng = np.random.default_rng(3)
    cpu: list[list[float]] = [[] for _ in shards]
    selection = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue("t"))])
    for q in range(queries):
        vector = rng.standard_normal(DIM).astype(np.float32)
        vector /= np.linalg.norm(vector)
        order = list(range(len(shards)))
        if q % 2:
            order.reverse()
        for i in order:
            request = qe.QueryRequest(
                limit=5,
                query=qe.Query.Nearest(vector.tolist(), using="dense"),
                filter=selection,
                with_payload=["document_id", "version", "chunk_index", "text", "metadata"],
            )
            t0 = time.process_time()
            shards[i].query(request)
            cpu[i].append((time.process_time() - t0) * 1000)
    print(
        json.dumps(
            [
                {"segments": s.info().segments_count, "cpu_ms_p50": round(float(np.median(c)), 3)}
                for s, c in zip(shards, cpu, strict=True)
            ]
        ),
        flush=True,
    )
    for shard in shards:
        shard.close()


def run(python: str, repo: Path, *args: str) -> dict:
    out = subprocess.run(
        ["nice", "-n", "10", python, str(HERE), "--repo", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=repo,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between two trickled upserts")
    parser.add_argument("--attempts", type=int, default=3, help="consolidations tried per checkout")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--service-caps",
        action="store_true",
        help="the service's caps (10,240 / 4,096 / 20,480) instead of ones scaled to --points: below ~6,700 "
        "points (10 MB of 384-d vectors, the HNSW full-scan threshold) a segment is scanned exactly, so the "
        "segment count barely moves the CPU per search",
    )
    parser.add_argument("--baseline", type=Path, help="the other checkout (its .venv and code)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/consolidation-trickle"))
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=["build", "trickle", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.service_caps:
        os.environ["TRICKLE_CAPS"] = "service"  # inherited by the phases' processes
    if args.phase:
        sys.path.insert(0, str(args.repo))
        if args.phase == "build":
            build(args.path[0], args.points)
        elif args.phase == "trickle":
            trickle(args.path[0], args.points, args.every, args.attempts)
        else:
            measure(args.path, args.queries)
        return
    this = HERE.parent.parent
    checkouts = {"baseline": args.baseline, "this": this} if args.baseline else {"this": this}
    base = args.work / "base" / "c"
    if not base.exists():
        print(
            run(sys.executable, this, "--phase", "build", "--points", str(args.points), "--path", str(base))
        )
    load = os.getloadavg()[0]
    results = {}
    for name, repo in checkouts.items():
        target = args.work / name / "c"
        shutil.rmtree(target.parent, ignore_errors=True)
        shutil.copytree(base, target)
        venv = repo / ".venv" / "bin" / "python"
        python = str(venv) if venv.exists() else sys.executable  # its code comes first on sys.path either way
        results[name] = run(
            python,
            repo,
            "--phase",
            "trickle",
            "--points",
            str(args.points),
            "--every",
            str(args.every),
            "--attempts",
            str(args.attempts),
            "--path",
            str(target),
        )
        print(name, json.dumps(results[name]), flush=True)
    measured = run(
        sys.executable,
        this,
        "--phase",
        "measure",
        "--queries",
        str(args.queries),
        "--path",
        *(str(args.work / name / "c") for name in checkouts),
    )
    for name, cpu in zip(checkouts, measured, strict=True):
        print(name, json.dumps(cpu), flush=True)
    print(f"load average {load:.1f} before / {os.getloadavg()[0]:.1f} after", flush=True)


if __name__ == "__main__":
    main()
