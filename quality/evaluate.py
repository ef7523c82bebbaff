"""Run the labelled query set through the service's HTTP API and score the rankings (`make eval`).

    make eval                                          # build the corpus, start the service, print the tables
    python -m quality.evaluate --modes dense --write-json out.json
    python -m quality.evaluate --url http://127.0.0.1:8000   # an already running service (its data is kept)

The service runs on embedded defaults (SQLite + local Qdrant in a temp dir, the offline model), started as
`python -m service` on loopback, exactly as a user runs it. Every page is PUT as a document (its title line
first), then every query is sent as POST /v1/search per retrieval mode. Chunks are folded into a ranking of
pages (a page's rank is that of its best chunk), and the ranking is scored against the labelled pages:

- hit@k: a relevant page is among the first k;
- MRR@10: mean of 1/rank of the first relevant page (0 past rank 10);
- nDCG@10: binary relevance, ideal DCG over min(#relevant, 10) pages.

The gate (tests/service/test_quality_gate.py) runs the same scoring on the committed CI subset in-process and
fails when a metric falls below quality/floors.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from quality.corpus import Page, read_jsonl

REPO = Path(__file__).resolve().parent.parent
QUERIES = Path(__file__).with_name("queries.json")
CI_CORPUS = Path(__file__).with_name("ci_corpus.json")
FLOORS = Path(__file__).with_name("floors.json")
DEFAULT_CORPUS = REPO / ".data" / "eval" / "corpus-man2.jsonl"
METRICS = ("hit@1", "hit@5", "mrr@10", "ndcg@10")
RANK_DEPTH = 10
# Chunks asked for per query: enough that 10 distinct pages survive folding chunks into pages.
CHUNKS_PER_QUERY = 20


@dataclass(frozen=True)
class Query:
    id: str
    kind: str  # keyword | description | question
    query: str
    relevant: tuple[str, ...]


def load_queries(path: Path = QUERIES) -> tuple[dict[str, Any], list[Query]]:
    """The committed query set: its corpus header and queries."""
    document = json.loads(path.read_text(encoding="utf-8"))
    queries = [Query(q["id"], q["kind"], q["query"], tuple(q["relevant"])) for q in document["queries"]]
    return document, queries


def document_text(page: Page) -> str:
    """What is ingested for a page: its title line, then the rendered text (NAME section removed)."""
    return f"{page.title}\n\n{page.text}"


def restrict(queries: Iterable[Query], page_ids: set[str]) -> list[Query]:
    """The queries that still have a relevant page among ``page_ids`` (relevant lists cut to those pages)."""
    kept = []
    for query in queries:
        relevant = tuple(page for page in query.relevant if page in page_ids)
        if relevant:
            kept.append(Query(query.id, query.kind, query.query, relevant))
    return kept


def fold_pages(document_ids: Sequence[str]) -> list[str]:
    """Chunk hits (best first) -> distinct pages in order of their best chunk."""
    seen: dict[str, None] = {}
    for document_id in document_ids:
        seen.setdefault(document_id, None)
    return list(seen)


def score(ranking: Sequence[str], relevant: Sequence[str]) -> dict[str, float]:
    """hit@1, hit@5, MRR@10 and nDCG@10 of one ranking (binary relevance)."""
    top = list(ranking[:RANK_DEPTH])
    wanted = set(relevant)
    first = next((rank for rank, page in enumerate(top, 1) if page in wanted), None)
    dcg = sum(1 / math.log2(rank + 1) for rank, page in enumerate(top, 1) if page in wanted)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(wanted), RANK_DEPTH) + 1))
    return {
        "hit@1": float(first == 1),
        "hit@5": float(first is not None and first <= 5),
        "mrr@10": 1 / first if first else 0.0,
        "ndcg@10": dcg / ideal,
    }


def mean_scores(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    rows = list(rows)
    return {metric: statistics.fmean(row[metric] for row in rows) if rows else 0.0 for metric in METRICS}


Search = Callable[[str, str], list[str]]  # (query, mode) -> document ids of the chunk hits, best first


def http_search(client: httpx.Client) -> Search:
    """POST /v1/search with the given mode; the document ids of the hits, best first."""

    def search(query: str, mode: str) -> list[str]:
        response = client.post("/v1/search", json={"query": query, "top_k": CHUNKS_PER_QUERY, "mode": mode})
        if response.status_code != 200:
            raise RuntimeError(f"search failed ({response.status_code}): {response.text[:300]}")
        body = response.json()
        if body.get("mode", "dense") != mode:  # a service that fell back to another mode would be mis-scored
            raise RuntimeError(f"asked for mode {mode!r}, the service ran {body.get('mode')!r}")
        return [hit["document_id"] for hit in body["results"]]

    return search


def ingest(client: httpx.Client, pages: Iterable[Page], progress: Callable[[int], None] | None = None) -> int:
    """PUT every page; returns the number of chunks the service made."""
    chunks = 0
    for number, page in enumerate(pages, 1):
        response = client.put(f"/v1/documents/{page.document_id}", json={"text": document_text(page)})
        if response.status_code not in (200, 201):
            raise RuntimeError(
                f"ingest of {page.document_id} failed ({response.status_code}): {response.text}"
            )
        chunks += response.json()["chunks"]
        if progress is not None:
            progress(number)
    return chunks


def evaluate(search: Search, queries: Sequence[Query], modes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per mode: overall means, means per query kind, and the per-query first relevant rank."""
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        by_kind: dict[str, list[dict[str, float]]] = defaultdict(list)
        rows = []
        started = time.perf_counter()
        for query in queries:
            row = score(fold_pages(search(query.query, mode)), query.relevant)
            rows.append(row)
            by_kind[query.kind].append(row)
        results[mode] = {
            "all": mean_scores(rows),
            "kinds": {kind: mean_scores(kind_rows) for kind, kind_rows in sorted(by_kind.items())},
            "queries": len(rows),
            "seconds": time.perf_counter() - started,
        }
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per mode and query kind."""
    lines = ["| mode | queries | " + " | ".join(METRICS) + " |", "|" + " --- |" * (len(METRICS) + 2)]
    for mode, result in results.items():
        groups = [("all", result["all"], result["queries"])]
        groups += [(kind, values, None) for kind, values in result["kinds"].items()]
        for group, values, count in groups:
            label = f"**{mode}**" if group == "all" else f"{mode} / {group}"
            cells = " | ".join(f"{values[metric]:.3f}" for metric in METRICS)
            lines.append(f"| {label} | {count if count is not None else ''} | {cells} |")
    return "\n".join(lines)


def below_floors(results: dict[str, dict[str, Any]], floors: dict[str, dict[str, float]]) -> list[str]:
    """Every (mode, metric) under its floor, in words; empty when the gate passes."""
    failures = []
    for mode, metrics in floors.items():
        if mode.startswith("_"):
            continue
        if mode not in results:
            failures.append(f"mode {mode} has a floor but was not evaluated")
            continue
        for metric, floor in metrics.items():
            value = results[mode]["all"][metric]
            if value < floor:
                failures.append(f"{mode} {metric} = {value:.3f} is below the floor {floor:.3f}")
    return failures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`python -m service` on loopback with embedded defaults in ``data_dir``; ``extra_env`` overrides."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATA_DIR": str(data_dir),
            "ENVIRONMENT": "development",
            "AUTH_DISABLED": "true",
            "RATE_LIMIT_ENABLED": "false",
            "CACHE_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        for key in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL", "QDRANT_PATH"):
            env.pop(key, None)
        self.log_path = data_dir / "service.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"service exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("service did not start within 180 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self._log.close()


def _load_corpus(path: Path, expected: dict[str, Any]) -> list[Page]:
    if not path.exists():
        from quality.corpus import build, package_version, write_jsonl

        version = package_version()
        print(f"building the corpus from manpages-dev {version} -> {path}", file=sys.stderr)
        write_jsonl(build(["2"]), path, version)
    header, pages = read_jsonl(path)
    if header.get("version") != expected.get("version"):
        print(
            f"warning: corpus from {header.get('package')} {header.get('version')}, the query set was built "
            f"from {expected.get('version')}; results are not comparable with docs/quality.md",
            file=sys.stderr,
        )
    return pages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Score the service's retrieval on the labelled man-page set."
    )
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help="built by quality.corpus if absent"
    )
    parser.add_argument(
        "--modes", nargs="+", default=["dense", "sparse", "hybrid"], help="search modes to evaluate"
    )
    parser.add_argument("--url", help="use a running service instead of starting one (its data is kept)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the started service")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the started service's data here (a re-run re-ingests nothing)"
    )
    parser.add_argument("--write-json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    query_set, queries = load_queries()
    pages = _load_corpus(args.corpus, query_set["corpus"])
    page_ids = {page.document_id for page in pages}
    missing = sorted({page for query in queries for page in query.relevant} - page_ids)
    if missing:
        raise SystemExit(f"the corpus lacks {len(missing)} labelled pages (e.g. {missing[:5]}); rebuild it")

    extra_env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="rag-eval-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        service = None if args.url else ServiceProcess(data_dir, extra_env)
        url = args.url or service.url  # type: ignore[union-attr]
        try:
            with httpx.Client(base_url=url, timeout=1800) as client:
                started = time.perf_counter()
                chunks = ingest(
                    client,
                    pages,
                    lambda n: print(f"\ringested {n}/{len(pages)} pages", end="", file=sys.stderr),
                )
                print(
                    f"\n{len(pages)} pages, {chunks} chunks in {time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                )
                results = evaluate(http_search(client), queries, args.modes)
        finally:
            if service is not None:
                service.stop()
    print(format_table(results))
    if args.write_json:
        args.write_json.write_text(json.dumps({"chunks": chunks, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
