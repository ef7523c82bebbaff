"""What WRITE_DURABILITY=power_loss costs an ingest: two apps on the embedded defaults, side by side, interleaved.

One process runs two apps on the same loaded model, each with its own DATA_DIR: one with
``WRITE_DURABILITY=power_loss`` (the edge store's WAL fsynced after each upsert, SQLite ``synchronous=FULL``),
one with ``process_crash``. Documents (2-4 chunks each, like bench/ingest_search.py's) are PUT alternately to
one and the other (the order flips every round), and each PUT's wall time and the process's CPU time (from
/proc, all threads: the fsyncs, the engine's, the event loop's) are taken. Also, the raw cost of one sync of
the store: the WAL-file fsyncs the service makes against ``EdgeShard.flush()`` (WAL + every segment), on the
same shard, interleaved.

    python bench/durability.py --docs 60
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from service.app.core.config import Settings
from service.app.main import create_app
from service.app.store.embedder import FastEmbedEmbedder

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / ".models" / "all-MiniLM-L6-v2"
WORDS = [
    "retention",
    "policy",
    "vacation",
    "leave",
    "payroll",
    "invoice",
    "contract",
    "renewal",
    "onboarding",
    "laptop",
    "security",
    "badge",
    "travel",
    "expense",
    "approval",
    "manager",
    "quarterly",
    "review",
    "budget",
    "forecast",
    "hiring",
    "pipeline",
    "interview",
    "offer",
]


def document(rng: random.Random) -> str:
    paragraphs = []
    for _ in range(rng.randint(6, 10)):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
            for _ in range(4)
        ]
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def cpu_seconds() -> float:
    with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settings_for(data_dir: Path, durability: str) -> Settings:
    return Settings(
        _env_file=None,
        environment="test",
        data_dir=data_dir,
        auth_disabled=True,
        rate_limit_enabled=False,
        cache_enabled=False,
        gc_enabled=False,
        log_json=False,
        log_level="WARNING",
        write_durability=durability,
        edge_consolidate_idle_seconds=0,
    )


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered) * 1e3:.1f} / {ordered[int(0.9 * (len(ordered) - 1))] * 1e3:.1f}"


def main() -> None:
    from fastapi.testclient import TestClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=60, help="documents per mode")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rag-durability-"))
    embedder = FastEmbedEmbedder(
        "sentence-transformers/all-MiniLM-L6-v2", model_path=MODEL_DIR, cache_dir=work / "fastembed"
    )
    modes = ("power_loss", "process_crash")
    wall: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    chunks: dict[str, int] = dict.fromkeys(modes, 0)
    load = os.getloadavg()[0]
    clients = {
        mode: TestClient(create_app(settings_for(work / mode, mode), embedder=embedder)) for mode in modes
    }
    for client in clients.values():
        client.__enter__()
    try:
        for round_ in range(args.docs):
            text = document(rng)
            for mode in modes if round_ % 2 == 0 else tuple(reversed(modes)):
                started_cpu, started = cpu_seconds(), time.perf_counter()
                response = clients[mode].put(f"/v1/documents/d{round_}", json={"text": text})
                wall[mode].append(time.perf_counter() - started)
                cpu[mode].append(cpu_seconds() - started_cpu)
                response.raise_for_status()
                chunks[mode] += response.json()["chunks"]
        store = clients["power_loss"].app.state.services.vectors  # type: ignore[attr-defined]
        sync: dict[str, list[float]] = {"wal fsync (service)": [], "EdgeShard.flush()": []}
        for round_ in range(40):
            for name in sync if round_ % 2 == 0 else tuple(reversed(sync)):
                clients["power_loss"].put(f"/v1/documents/s{round_}{len(name)}", json={"text": document(rng)})
                started = time.perf_counter()
                store.sync() if name.startswith("wal") else store.shard.flush()
                sync[name].append(time.perf_counter() - started)
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)
    print(f"{args.docs} documents per mode ({chunks['power_loss']} chunks), load average {load:.1f} at start")
    print("| WRITE_DURABILITY | PUT wall p50 / p90 (ms) | CPU per PUT p50 (ms) | CPU total (s) |")
    print("|---|---|---|---|")
    for mode in modes:
        print(
            f"| {mode} | {summary(wall[mode])} | {statistics.median(cpu[mode]) * 1e3:.1f} | {sum(cpu[mode]):.2f} |"
        )
    ratio = statistics.median(wall["power_loss"]) / statistics.median(wall["process_crash"])
    print(
        f"wall p50 ratio power_loss / process_crash: {ratio:.2f}x; CPU total ratio "
        f"{sum(cpu['power_loss']) / sum(cpu['process_crash']):.2f}x"
    )
    print("| one sync after a PUT | wall p50 / p90 (ms) |")
    print("|---|---|")
    for name, values in sync.items():
        print(f"| {name} | {summary(values)} |")


if __name__ == "__main__":
    main()
