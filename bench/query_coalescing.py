"""Query-embedding coalescing, in one process: queries/s and CPU per query at 1, 4 and 16 caller threads.

    python bench/query_coalescing.py --seconds 4 --rounds 2 --write docs/benchmarks.md

Every caller embeds DISTINCT texts back to back through ``FastEmbedEmbedder.embed_query`` (the service's
query path, query-vector cache excluded). Configurations, interleaved cell by cell over ``--rounds`` rounds so
the load of a shared machine hits them alike:

- **uncoalesced**: each call runs the model on its own text, concurrently on one session (the service before
  coalescing), ONNX Runtime's default intra-op threads;
- **coalesced, N intra-op threads, R runs**: the embedder's coalescer (service.app.store.coalesce) with ``max_runs``
  R (R > 1 lets several batches run at once on the session).

Reported per cell: queries/s, process CPU per query (``time.process_time``: all threads, ORT's pool included),
p50 latency, and the mean batch size. Also: the largest difference between a vector embedded in a batch and the
same text embedded alone, and whether the top-5 ranking over a set of passages changed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sections import replace_section  # noqa: E402

from service.app.store.coalesce import BatchCoalescer  # noqa: E402
from service.app.store.embedder import QUERY_BATCH_MAX, FastEmbedEmbedder  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_DIR = REPO / ".models" / "all-MiniLM-L6-v2"
START = "<!-- coalescing:start -->"
END = "<!-- coalescing:end -->"
TOPICS = [
    "backup",
    "ingress",
    "autoscaling",
    "redis",
    "cache",
    "tenant",
    "re-index",
    "alert",
    "upload",
    "token",
]


class Config:
    def __init__(self, label: str, embedder: FastEmbedEmbedder, runs: int | None) -> None:
        self.label = label
        self.embedder = embedder
        if runs is None:  # uncoalesced: every call runs its own text, as before
            self.call: Callable[[str], object] = lambda text: embedder._embed_query_batch([text])[0].tolist()
            self.coalescer = None
        else:
            self.coalescer = BatchCoalescer(
                embedder._embed_query_batch, max_batch=QUERY_BATCH_MAX, max_runs=runs
            )
            self.call = lambda text: self.coalescer.submit(text).tolist()  # type: ignore[union-attr]


def texts_from(serial: list[int], lock: threading.Lock) -> str:
    with lock:
        serial[0] += 1
        number = serial[0]
    return f"how do I configure the {TOPICS[number % len(TOPICS)]} setting for tenant {number} in production"


def measure(config: Config, callers: int, seconds: float, serial: list[int]) -> dict[str, float]:
    lock = threading.Lock()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    before = (config.coalescer.runs, config.coalescer.calls) if config.coalescer else (0, 0)

    def worker() -> None:
        while True:
            text = texts_from(serial, lock)
            started = time.perf_counter()
            config.call(text)
            with lock:
                latencies.append(time.perf_counter() - started)
            if time.monotonic() >= deadline:
                return

    cpu = time.process_time()
    wall = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    runs, calls = (
        (config.coalescer.runs - before[0], config.coalescer.calls - before[1])
        if config.coalescer
        else (1, 1)
    )
    return {
        "rate": len(latencies) / wall,
        "cpu": cpu / len(latencies) * 1000,
        "p50": statistics.median(latencies) * 1000,
        "batch": calls / runs if runs else 1.0,
    }


def padding_check(embedder: FastEmbedEmbedder) -> tuple[float, int, int, int, int]:
    """Largest |batched - single| over a batch of varied queries, and top-5 rankings changed / compared."""
    texts = [f"how do I configure the {topic} setting?" for topic in TOPICS]
    texts += [
        "rotate keys",
        "why does the ingest of a large PDF upload fail with a 422 and what limit applies?",
    ]
    single = np.array([embedder._embed_query_batch([t])[0] for t in texts])
    batched = np.array(embedder._embed_query_batch(texts))
    passages = np.array(
        embedder.embed_documents([f"{topic} settings are documented in the guide" for topic in TOPICS])
    )
    changed = sum(
        list(np.argsort(-(passages @ b))[:5]) != list(np.argsort(-(passages @ s))[:5])
        for b, s in zip(batched, single, strict=True)
    )
    lengths = [len(e.ids) for e in embedder.tokenizer.encode_batch(texts)]
    return float(np.abs(batched - single).max()), changed, len(texts), min(lengths), max(lengths)


def render(
    results: dict[str, dict[int, list[dict[str, float]]]], check: tuple[float, int, int, int, int], args
) -> str:  # type: ignore[no-untyped-def]
    load = os.getloadavg()[0]
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs ({platform.machine()}), Python "
        f"{platform.python_version()}, load average {args.load_before:.1f} before / {load:.1f} after (shared "
        f"machine: compare rows, not absolute values). {args.seconds:g} s per cell, {args.rounds} round(s) "
        "interleaved cell by cell; medians over the rounds. Distinct ~17-token query texts; "
        "cells: queries/s (CPU ms per query, p50 ms, mean batch).",
        "",
        "| configuration | " + " | ".join(f"{c} caller{'s' if c > 1 else ''}" for c in args.callers) + " |",
        "|---" * (len(args.callers) + 1) + "|",
    ]
    for label, cells in results.items():
        row = [label]
        for callers in args.callers:
            runs = cells[callers]
            row.append(
                f"{statistics.median(r['rate'] for r in runs):.0f} "
                f"({statistics.median(r['cpu'] for r in runs):.1f} ms CPU, "
                f"{statistics.median(r['p50'] for r in runs):.1f} ms, "
                f"batch {statistics.median(r['batch'] for r in runs):.1f})"
            )
        lines.append("| " + " | ".join(row) + " |")
    diff, changed, compared, shortest, longest = check
    lines += [
        "",
        f"Batched against single vectors ({compared} queries of {shortest}-{longest} tokens in one batch, padded with the attention "
        f"mask): largest difference {diff:.1e}; top-5 rankings changed: {changed} of {compared}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--callers", default="1,4,16")
    parser.add_argument("--write", type=Path, help="markdown file whose coalescing section is replaced")
    args = parser.parse_args()
    args.callers = [int(c) for c in args.callers.split(",")]
    args.load_before = os.getloadavg()[0]

    def load(threads: int | None) -> FastEmbedEmbedder:
        return FastEmbedEmbedder(MODEL, model_path=MODEL_DIR, threads=threads)

    default, one = load(None), load(1)
    configs = [
        Config("uncoalesced, intra-op threads default (the service before)", default, None),
        Config("coalesced, intra-op threads default, 1 run at a time", default, 1),
        Config("coalesced, 1 intra-op thread, 1 run at a time", one, 1),
        Config("coalesced, 1 intra-op thread, 2 runs at a time", one, 2),
    ]
    serial = [0]
    for config in configs:  # warm: session, allocator, first-run costs
        measure(config, 4, 0.5, serial)
    results: dict[str, dict[int, list[dict[str, float]]]] = {
        c.label: {n: [] for n in args.callers} for c in configs
    }
    for round_index in range(args.rounds):
        for callers in args.callers:
            order = configs if round_index % 2 == 0 else configs[::-1]
            for config in order:
                cell = measure(config, callers, args.seconds, serial)
                results[config.label][callers].append(cell)
                print(f"round {round_index} {config.label} x{callers}: {cell}", flush=True)
    text = render(results, padding_check(default), args)
    print(text)
    if args.write:
        replace_section(
            args.write,
            f"{START}\n\n{text}\n\n{END}",
            START,
            END,
            heading="### Query coalescing (`bench/query_coalescing.py`)",
        )
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
