"""Benchmark: sequential PUT ingest of two or more checkouts / WRITE_DURABILITY modes, interleaved document by document.

    python bench/ingest_ab.py --docs 80 base=/tmp/base:power_loss new=.:power_loss new_pc=.:process_crash

Each variant ``label=CHECKOUT:WRITE_DURABILITY`` is a real `python -m service` (this interpreter, run in the
checkout's directory so its ``service`` package is the one imported; embedded defaults in a temp dir; auth, rate
limits and the search cache off). The same generated documents (bench/ingest_search.py's) are PUT one at a time
to each variant in turn, the order rotating every document, so load on a shared machine hits all alike. Reported
per variant: chunks/s, the PUT wall mean and p50, the service's CPU per chunk (/proc/PID/stat, all threads), the
wall ratio to the first variant and, less exposed to the load's noise, per-document paired figures: the median
over documents of each PUT's wall over the first variant's PUT of the same document, and what a PUT spends
outside the embedding (its wall minus the service's own document-embedding time from /metrics,
``rag_embedding_duration_seconds{kind="document"}``, read after each PUT): the overhead the service adds to the
model, which is where durability, hops and HTTP show. Used for docs/benchmarks.md, "Ingest with WRITE_DURABILITY=power_loss".
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from ingest_search import MODEL_DIR, free_port, histogram_sum, make_document, process_cpu_seconds  # noqa: E402
from priority import check_same_priority  # noqa: E402

# After a PUT, before reading the process's CPU: ONNX Runtime's worker threads spin on for a few ms (their CPU
# belongs to that PUT). Not a timing assertion: a longer pause only moves CPU from the next PUT to this one.
SETTLE_SECONDS = 0.03


def start(label: str, checkout: Path, durability: str, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(work / label),
        "ENVIRONMENT": "development",
        "AUTH_DISABLED": "true",
        "RATE_LIMIT_ENABLED": "false",
        "CACHE_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "EMBEDDING_MODEL_PATH": str(MODEL_DIR),
        "WRITE_DURABILITY": durability,
        "PYTHONPATH": str(checkout),
    }
    for key in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL", "QDRANT_PATH", "EDGE_PATH", "VECTOR_STORE"):
        env.pop(key, None)
    log = (work / f"{label}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{label} exited ({process.returncode}); see {work / label}.log")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                check_same_priority(process.pid)  # the variants compete at the benchmark's priority
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{label} did not start within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "variants", nargs="+", help="label=CHECKOUT:WRITE_DURABILITY (the first is the baseline)"
    )
    args = parser.parse_args()
    variants = []
    for spec in args.variants:
        label, _, rest = spec.partition("=")
        checkout, _, durability = rest.rpartition(":")
        if not label or not checkout or durability not in ("power_loss", "process_crash"):
            raise SystemExit(f"bad variant {spec!r}: expected label=CHECKOUT:power_loss|process_crash")
        variants.append((label, Path(checkout).resolve(), durability))
    work = Path(tempfile.mkdtemp(prefix="rag-ingest-ab-"))
    processes: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for label, checkout, durability in variants:
            processes[label] = start(label, checkout, durability, work)
        rng = random.Random(args.seed)
        documents = [make_document(rng, i) for i in range(args.docs + 3)]
        clients = {label: httpx.Client(base_url=url, timeout=120) for label, (_, url) in processes.items()}
        for client in clients.values():  # warm-up: model sessions, first collection writes
            for document_id, text, metadata in documents[:3]:
                client.put(f"/v1/documents/warm-{document_id}", json={"text": text, "metadata": metadata})
        labels = list(processes)
        wall: dict[str, list[float]] = {label: [] for label in labels}
        cpu = dict.fromkeys(labels, 0.0)
        outside: dict[str, list[float]] = {label: [] for label in labels}

        def embedded(label: str) -> float:
            metrics = clients[label].get("/metrics").text
            return histogram_sum(metrics, "rag_embedding_duration_seconds", 'kind="document"')

        chunks = dict.fromkeys(labels, 0)
        load = os.getloadavg()[0]
        for index, (document_id, text, metadata) in enumerate(documents[3:]):
            shift = index % len(labels)
            for label in labels[shift:] + labels[:shift]:
                pid = processes[label][0].pid
                embedding_before = embedded(label)
                cpu_before, started = process_cpu_seconds(pid), time.perf_counter()
                response = clients[label].put(
                    f"/v1/documents/{document_id}", json={"text": text, "metadata": metadata}
                )
                wall[label].append(time.perf_counter() - started)
                response.raise_for_status()
                chunks[label] += response.json()["chunks"]
                time.sleep(SETTLE_SECONDS)
                cpu[label] += process_cpu_seconds(pid) - cpu_before
                outside[label].append(wall[label][-1] - (embedded(label) - embedding_before))
        print(
            f"{args.docs} documents, {chunks[labels[0]]} chunks per variant; load average {load:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after"
        )
        print(
            "| variant | chunks/s | PUT wall mean / p50 (ms) | CPU per chunk (ms) | wall vs first | paired median "
            "vs first | outside the embedding mean / p50 (ms) |"
        )
        print("|---|---|---|---|---|---|---|")
        base = statistics.mean(wall[labels[0]])
        for label in labels:
            times = wall[label]
            print(
                f"| {label} | {chunks[label] / sum(times):.1f} | {statistics.mean(times) * 1e3:.1f} / "
                f"{statistics.median(times) * 1e3:.1f} | {cpu[label] / chunks[label] * 1e3:.1f} | "
                f"{statistics.mean(times) / base:.3f}x | "
                f"{statistics.median(t / b for t, b in zip(times, wall[labels[0]], strict=True)):.3f}x | "
                f"{statistics.mean(outside[label]) * 1e3:.1f} / {statistics.median(outside[label]) * 1e3:.1f} |"
            )
    finally:
        for process, _ in processes.values():
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
