"""Re-index scans: what a re-index's catch-up passes cost the searches running beside it, at N chunks.

    python bench/reindex_stall.py --n 100000 --cache /work/benchcache     # builds the store once into --work

A re-index (service.app.jobs.reindex) compares its target's stored versions with the registry in catch-up
passes (one before the switch, one after). Each pass scans every point of the target; in the embedded store a
scan page runs in native code holding the GIL. This runs the real `Reindexer` (start, lease, build, catch-up,
switch) on the gc benchmark's store (bench/gc_startup.py: real docstring chunks replicated with noise, every
document active in the registry without kept text, so the build writes nothing and the run is the scans alone)
with a copy of that store as the target, while one thread searches the served store (tenant filter, top 5,
the scale benchmark's query vectors) and a ticker thread asks for the GIL every millisecond.

Three arms per round, interleaved: idle (no re-index, same window), the catch-up scan unpaced (the code before:
4096-point pages, no pause) and paced (the service's: the orphan collector's Pacer). Reported per arm (medians over
rounds): the re-index's wall time, the longest gap between two consecutive search completions, the ticker's
longest lateness (the longest time another thread waited for the GIL), search p50/p99 and searches per second.

The result replaces the section between the reindex-stall markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gc_startup import build, corpus  # noqa: E402
from ingest_search import percentile  # noqa: E402
from scale import MODEL, MODEL_DIR, TENANT  # noqa: E402
from sections import replace_section  # noqa: E402

from service.app.ingest.index import ActiveIndex, IndexConfig, IndexGeneration  # noqa: E402
from service.app.jobs.reindex import Reindexer  # noqa: E402
from service.app.store.edge import EdgeVectorStore  # noqa: E402
from service.app.store.embedder import FastEmbedEmbedder  # noqa: E402
from service.app.store.registry import DocumentRegistry  # noqa: E402
from service.app.store.vectors import collection_name  # noqa: E402

START = "<!-- reindex-stall:start -->"
END = "<!-- reindex-stall:end -->"
SERVED = IndexConfig(MODEL, 200, 32)
TARGET = IndexConfig(MODEL, 64, 8)


class UnpacedReindexer(Reindexer):
    """The re-index as it was before its scans were paced: whole 4096-point pages, no pause."""

    def _pacer(self) -> None:  # type: ignore[override]
        return None


class Probe:
    """A search thread and a GIL ticker running for the whole benchmark; windows are cut out of their records."""

    def __init__(self, store: EdgeVectorStore, queries: np.ndarray) -> None:
        self.store = store
        self.queries = [q.tolist() for q in queries]
        self.searches: list[tuple[float, float]] = []  # (sent, done)
        self.ticks: list[tuple[float, float]] = []  # (woke, late)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._search, daemon=True),
            threading.Thread(target=self._tick, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _search(self) -> None:
        i = 0
        while not self.stop.is_set():
            sent = time.perf_counter()
            self.store.search(TENANT, self.queries[i % len(self.queries)], limit=5)
            self.searches.append((sent, time.perf_counter()))
            i += 1

    def _tick(self) -> None:
        while not self.stop.is_set():
            asked = time.perf_counter()
            time.sleep(0.001)
            woke = time.perf_counter()
            self.ticks.append((woke, woke - asked - 0.001))

    def window(self, start: float, end: float) -> dict[str, float]:
        done = [d for s, d in self.searches if start <= s and d <= end]
        latencies = [d - s for s, d in self.searches if start <= s and d <= end]
        gaps = [b - a for a, b in zip([start, *done], [*done, end], strict=True)]
        late = [lateness for woke, lateness in self.ticks if start <= woke <= end]
        return {
            "wall_s": end - start,
            "gap_max_ms": max(gaps) * 1000,
            "tick_late_max_ms": max(late, default=float("nan")) * 1000,
            "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
            "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
            "per_s": len(latencies) / (end - start),
        }

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def open_store(path: Path, name: str, dimension: int) -> EdgeVectorStore:
    store = EdgeVectorStore(path, collection=name, dimension=dimension, optimize_idle_seconds=None)
    store.ensure_collection()
    return store


def reindex_once(
    kind: type[Reindexer], registry_db: Path, current: IndexGeneration, target: IndexGeneration, probe: Probe
) -> dict[str, float]:
    """One real re-index of ``current`` into ``target`` on a fresh copy of the registry."""
    with tempfile.TemporaryDirectory(prefix="rag-reindex-") as scratch:
        db = Path(scratch) / "registry.db"
        shutil.copy(registry_db, db)
        registry = DocumentRegistry(f"sqlite:///{db.as_posix()}")
        registry.migrate()
        pointer = registry.index_pointer()  # a store the service has served already has one
        registry.switch_index(
            current.collection,
            current.config.as_dict(),
            expected=pointer.collection if pointer is not None else None,
            keep_previous=False,
        )
        reindexer = kind(
            registry=registry,
            ingest=None,  # type: ignore[arg-type]  # the build writes nothing: no document has kept text
            index=ActiveIndex(current),
            make_generation=lambda config, collection=None: target,
        )
        try:
            start = time.perf_counter()
            reindexer.start(target.config, allow_missing=True)
            status = reindexer.wait()
            end = time.perf_counter()
        finally:
            reindexer.close()
            registry.close()
    if status.state != "switched":
        raise SystemExit(f"the re-index ended {status.state}: {status.error}")
    return probe.window(start, end)


def render(n: int, runs: dict[str, list[dict]], args: argparse.Namespace, load: tuple) -> str:
    def med(rows: list[dict], key: str, digits: int = 1) -> str:
        return f"{statistics.median(r[key] for r in rows):.{digits}f}"

    lines = [
        START,
        f"### Re-index scans ({n:,} points; `python bench/reindex_stall.py --n {n}`)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average {load[0]:.2f} before / "
        f"{load[1]:.2f} after, niced; {args.rounds} rounds, arms interleaved, medians. A real re-index whose "
        "build writes nothing (no kept texts): its wall time is the lease, registry pages and two catch-up "
        "scans of the target; one thread searches the served store meanwhile, a ticker asks for the GIL "
        "every millisecond.",
        "",
        "| arm | re-index wall (s) | longest gap between searches (ms) | longest GIL wait of the ticker (ms) "
        "| search p50 (ms) | search p99 (ms) | searches/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in runs.items():
        lines.append(
            f"| {label} | {med(rows, 'wall_s', 2)} | {med(rows, 'gap_max_ms')} | {med(rows, 'tick_late_max_ms')} "
            f"| {med(rows, 'p50_ms', 2)} | {med(rows, 'p99_ms', 2)} | {med(rows, 'per_s', 0)} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--cache", type=Path, help="base.npy (and queries.npy) from bench/scale.py --cache")
    parser.add_argument("--work", type=Path, help="data dir to build into and reuse (default /tmp/rag-gc-N)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if not (MODEL_DIR / "model.onnx").exists():
        raise SystemExit("run `make model` first")
    data_dir = args.work or Path(f"/tmp/rag-gc-{args.n}")
    texts, query_texts = corpus(args.real, args.queries, args.seed)
    embedder: Any = None
    if args.cache and (args.cache / "base.npy").is_file():
        base = np.load(args.cache / "base.npy")
    else:
        embedder = FastEmbedEmbedder(MODEL, model_path=MODEL_DIR)
        base = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
    build(data_dir, args.n, base, texts, args.seed)
    if args.cache and (args.cache / "queries.npy").is_file():
        queries = np.load(args.cache / "queries.npy")
    else:
        embedder = embedder or FastEmbedEmbedder(MODEL, model_path=MODEL_DIR)
        queries = np.asarray([embedder.embed_query(text) for text in query_texts], dtype=np.float32)

    dimension = base.shape[1]
    served_name = collection_name("documents", MODEL, dimension)
    target_name = f"{served_name}__target"
    target_path = data_dir / "reindex-target" / target_name
    if not target_path.is_dir():
        shutil.copytree(data_dir / "edge" / served_name, target_path, ignore=shutil.ignore_patterns("*.lock"))
    served_store = open_store(data_dir / "edge" / served_name, served_name, dimension)
    target_store = open_store(target_path, target_name, dimension)
    current = IndexGeneration(SERVED, served_store, None, None)  # type: ignore[arg-type]
    target = IndexGeneration(TARGET, target_store, None, None)  # type: ignore[arg-type]
    probe = Probe(served_store, queries)
    runs: dict[str, list[dict]] = {"idle (no re-index)": [], "unpaced scan (before)": [], "paced scan": []}
    load_before = os.getloadavg()[0]
    try:
        time.sleep(1.0)  # the probe threads warm up
        for round_ in range(args.rounds):
            runs["unpaced scan (before)"].append(
                reindex_once(UnpacedReindexer, data_dir / "registry.db", current, target, probe)
            )
            idle_start = time.perf_counter()
            time.sleep(runs["unpaced scan (before)"][-1]["wall_s"])
            runs["idle (no re-index)"].append(probe.window(idle_start, time.perf_counter()))
            runs["paced scan"].append(
                reindex_once(Reindexer, data_dir / "registry.db", current, target, probe)
            )
            print(round_, {label: rows[-1] for label, rows in runs.items()}, flush=True)
    finally:
        probe.close()
        served_store.close()
        target_store.close()
    section = render(args.n, runs, args, (load_before, os.getloadavg()[0]))
    print(section)
    replace_section(args.write, section, START, END, heading="## Re-index scans")


if __name__ == "__main__":
    main()
