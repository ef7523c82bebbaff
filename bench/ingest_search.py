"""Benchmark: the service over HTTP vs the raw fastembed + qdrant-edge path, on the same text, in one run.

    make bench                       # N=80 documents, 400 searches
    python bench/ingest_search.py --docs 200 --queries 500 --write docs/benchmarks.md

Ingest: N generated documents (a few hundred words of topical prose each) are PUT one by one to a real
`python -m service` on loopback, each once with the keep-alive client (bench/httpclient.py, the headline row, as
for the searches) and once with httpx under its own id (reported beside it; those copies are deleted before the
searches) (embedded defaults in a temp dir: SQLite + qdrant-edge; auth, rate limits and
the search cache off, so the core path is measured). The raw path chunks the same documents with the same
Chunker, embeds each document's chunks with fastembed (same model, same batch size, fastembed's own session
and batching) and upserts them with qdrant-edge-py into a shard of its own (the engine the service embeds)
holding what the service's shard holds: the dense vector AND the chunk's BM25 sparse vector (the service
computes one per chunk for keyword and hybrid search; a raw path without it would skip work a user of those
modes needs), the same payload fields and the same payload indexes. What the raw path still does not do is the
service's own bookkeeping: the content hash and registry read, the registry's compare-and-set commit, the
clean-up of older versions and HTTP. Both report chunks/s; the ratio is HTTP / raw (target >= 0.9). Before
each timed ingest call both processes must be idle (the same `Quiescence` as the searches below: a document run
leaves fastembed's ONNX threads spinning too), and the CPU both processes spend from a call's start until they
are idle again is reported per chunk for each path.

Search: the same queries, all different, are sent as POST /v1/search (top_k 5, mode dense) and as raw
query_embed + a dense engine query with a tenant filter; p50/p99 latencies of each and the p50 ratio (target <= 1.3). Both measurements interleave the
paths document by document and query by query, cycling through every rotation of the paths and of their reverse
(bench/interleave.py: each path follows each other one equally often), so background load on shared cores and
what one path leaves in the caches hit all alike. The service runs at the benchmark's own priority
(bench/priority.py; the setup line says which).

Before each timed search the benchmark waits until neither side has work left running (`Quiescence`): the
raw side's fastembed session keeps an ONNX Runtime worker thread spinning for ~50 ms of CPU after every query
(measured per thread from /proc), which on 2 cores overlapped the service's next request whatever the order,
and kept the raw side's own next run hot. `--settle-max-ms 0` restores the fixed `--gap-ms` pause alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import qdrant_edge as qe
from fastembed import TextEmbedding

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from httpclient import KeepAliveClient  # noqa: E402
from interleave import path_orders  # noqa: E402
from priority import check_same_priority, conditions  # noqa: E402
from sections import replace_section  # noqa: E402

from service.app.core.config import Settings  # noqa: E402
from service.app.ingest.chunking import Chunker  # noqa: E402
from service.app.store.edge import HIT_PAYLOAD  # noqa: E402
from service.app.store.embedder import QUERY_INT8_FILE, FastEmbedEmbedder  # noqa: E402
from service.app.store.sparse import SPARSE_VECTOR, default_encoder  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_DIR = REPO / ".models" / "all-MiniLM-L6-v2"

TOPICS = {
    "astronomy": "planets orbit stars galaxies telescope light-years nebula comet gravity spectrum",
    "cooking": "dough oven simmer spices caramelise fermentation knife broth sauce seasoning",
    "networking": "packets routers latency bandwidth TCP handshake DNS firewall throughput protocol",
    "medicine": "patients diagnosis antibodies dosage symptoms clinical trial vaccine therapy immune",
    "finance": "interest rates bonds inflation equity dividends portfolio liquidity risk yield",
    "ecology": "species habitat predators wetlands pollination biodiversity climate soil rivers",
    "history": "empire treaty revolution dynasty archives monarchy battle trade reform",
    "databases": "indexes transactions replication queries schema isolation vacuum partitions locks",
}
TEMPLATES = [
    "In practice, {a} depends on {b}, which is why experts study {c} so carefully.",
    "The relationship between {a} and {b} changed once {c} became widely understood.",
    "Many beginners confuse {a} with {b}; the difference shows up clearly in {c}.",
    "A common rule of thumb is that {a} matters more than {b} unless {c} is involved.",
    "Recent work measured {a} under different conditions of {b} and reported surprising {c}.",
    "Without {a}, the effect of {b} on {c} would be much harder to observe.",
]


def make_document(rng: random.Random, index: int) -> tuple[str, str, dict]:
    topic = rng.choice(sorted(TOPICS))
    words = TOPICS[topic].split()
    paragraphs = []
    for _ in range(rng.randint(3, 7)):
        sentences = [
            rng.choice(TEMPLATES).format(a=rng.choice(words), b=rng.choice(words), c=rng.choice(words))
            for _ in range(rng.randint(3, 8))
        ]
        paragraphs.append(" ".join(sentences))
    return f"bench-{index:05d}", f"{topic.title()} notes\n\n" + "\n\n".join(paragraphs), {"topic": topic}


def make_queries(rng: random.Random, count: int) -> list[str]:
    """``count`` DIFFERENT queries: the service keeps the vectors of recent query texts
    (QUERY_EMBEDDING_CACHE_SIZE), so a repeated text would skip the model there and not on the raw path."""
    queries: dict[str, None] = {}
    while len(queries) < count:
        words = TOPICS[rng.choice(sorted(TOPICS))].split()
        query = f"how does {rng.choice(words)} relate to {rng.choice(words)}"
        if query in queries:
            query = f"{query} in case {len(queries)}"
        queries[query] = None
    return list(queries)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_pids(port: int) -> set[int]:
    """Processes holding a TCP socket that listens on ``port`` (Linux: /proc/net/tcp{,6} inodes -> fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    owners = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        owners.add(int(fd_dir.parent.name))
    return owners


class ServiceProcess:
    """`python -m service` on loopback with embedded defaults in a temp dir.

    It counts as started only when ITS child answers: the port must be free before the start, the child must be
    alive, and the socket answering /healthz must be the child's (a stale server on the port once answered for
    a child that had died, and a whole benchmark measured the wrong process). Anything else is a SystemExit
    naming what answered. Every thread of the child must then run at the benchmark's own priority (niceness and
    scheduling policy, which it inherits): the service and the benchmark's own path compete for the same cores
    at one priority (bench/priority.py).
    """

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        *,
        port: int | None = None,
        command: list[str] | None = None,
        timeout: float = 120,
    ) -> None:
        self.port = port or free_port()
        extra = env
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
            "EMBEDDING_MODEL_PATH": str(MODEL_DIR),
        }
        for key in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL", "QDRANT_PATH", "EDGE_PATH", "VECTOR_STORE"):
            env.pop(key, None)
        env.update(extra or {})
        self.url = f"http://127.0.0.1:{self.port}"
        holders = listening_pids(self.port)
        if holders:
            raise SystemExit(
                f"port {self.port} is already taken by pid(s) {sorted(holders)}: stop that server first"
            )
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / f"service-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "service"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_until_ours(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ours(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"service exited ({self.proc.returncode}): {self.log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                healthy = httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy:
                holders = listening_pids(self.port)
                if self.proc.poll() is None and self.proc.pid in holders:
                    check_same_priority(self.proc.pid)
                    return
                raise SystemExit(
                    f"{self.url} answers, but not from the benchmark's service (pid {self.proc.pid}, "
                    f"{'alive' if self.proc.poll() is None else 'exited'}): the port is held by {sorted(holders)}"
                )
            time.sleep(0.2)
        raise SystemExit(f"service did not start within {timeout:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def interleaved(rounds: int, paths: tuple[str, ...]) -> list[tuple[int, str]]:
    """(round, path) in timing order: each round (a document, a query) visits every path, in the orders
    ``path_orders`` cycles through, so each path follows each other one equally often."""
    orders = path_orders(paths)
    return [(index, path) for index in range(rounds) for path in orders[index % len(orders)]]


def http_client_for(query_index: int) -> str:
    """Which HTTP client sends query ``query_index`` (only one does: a text the service has embedded once would
    hit its query-vector cache the second time): two queries each in turn, so with the orders of
    ``interleaved`` (which change every query) each client meets every order equally often."""
    return "keep-alive client" if (query_index // 2) % 2 == 0 else "httpx"


def ingest_http(
    client: httpx.Client | KeepAliveClient, documents: list[tuple[str, str, dict]], prefix: str
) -> tuple[int, float]:
    """PUT each document with ``client`` (httpx, or the keep-alive client whose own CPU per request is ~0.3 ms
    against httpx's ~1.4 ms, measured side by side at load 12); the chunks written and the seconds taken."""
    chunks = 0
    started = time.perf_counter()
    for document_id, text, metadata in documents:
        path, body = f"/v1/documents/{prefix}{document_id}", {"text": text, "metadata": metadata}
        if isinstance(client, KeepAliveClient):
            chunks += json.loads(client.put_json(path, body))["chunks"]
        else:
            response = client.put(path, json=body)
            response.raise_for_status()
            chunks += response.json()["chunks"]
    return chunks, time.perf_counter() - started


def raw_shard(path: Path) -> qe.EdgeShard:
    """The raw path's shard: the vectors and payload indexes the service's shard has (service.app.store.edge)."""
    shard = qe.EdgeShard.create(
        str(path),
        qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        ),
    )
    for key, params in (
        ("tenant_id", qe.KeywordIndexParams(is_tenant=True)),
        ("document_id", qe.PayloadSchemaType.Keyword),
        ("version", qe.PayloadSchemaType.Integer),
        ("metadata.topic", qe.PayloadSchemaType.Keyword),  # the service indexes the metadata keys it sees
    ):
        shard.update(qe.UpdateOperation.create_field_index(key, params))
    return shard


def ingest_raw(
    model: TextEmbedding,
    chunker: Chunker,
    qdrant: qe.EdgeShard,
    collection: str,
    documents: list[tuple[str, str, dict]],
    batch_size: int,
    prefix: str,
) -> tuple[int, float]:
    """Chunk, embed (dense with fastembed, BM25 with the service's encoder) and upsert, document by document."""
    encoder = default_encoder()
    chunks = 0
    started = time.perf_counter()
    for document_id, text, metadata in documents:
        texts = [chunk.text for chunk in chunker.split(text)]
        vectors = list(model.passage_embed(texts, batch_size=batch_size))
        sparse = encoder.documents(texts)
        digest = hashlib.sha256(text.encode()).hexdigest()
        qdrant.update(
            qe.UpdateOperation.upsert_points(
                [
                    qe.Point(
                        str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}{document_id}/{i}")),
                        {
                            "dense": vector.tolist(),
                            SPARSE_VECTOR: qe.SparseVector(list(bm25.indices), list(bm25.values)),
                        },
                        {
                            "tenant_id": "default",
                            "document_id": f"{prefix}{document_id}",
                            "version": 1,
                            "chunk_index": i,
                            "text": chunk_text,
                            "metadata": metadata,
                            "content_hash": digest,
                            "model": MODEL,
                        },
                    )
                    for i, (chunk_text, vector, bm25) in enumerate(zip(texts, vectors, sparse, strict=True))
                ]
            )
        )
        chunks += len(texts)
    return chunks, time.perf_counter() - started


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of the whole process ``pid`` so far (utime + stime of /proc/PID/stat, clock ticks): unlike a
    sum over /proc/PID/task, it keeps the CPU of threads that have exited (idle worker threads end after a while;
    summing the live threads once gave a negative CPU per search)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid`` split into "main" (the main thread: the service's event loop; exact,
    /proc/PID/task/*/schedstat), "engine pool" (qdrant-edge names its search threads edge-search-N) and "other":
    the rest of the process (``process_cpu_seconds``, exited threads included) (Python's worker threads and ONNX
    Runtime's carry the process name, so they cannot be told apart)."""
    found: dict[str, float] = {"main": 0.0, "engine pool": 0.0}
    for task in os.scandir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"{task.path}/comm", encoding="utf-8", errors="replace") as comm:
                name = "main" if task.name == str(pid) else comm.read().strip()
            key = "engine pool" if name.startswith("edge-search") else name if name == "main" else None
            if key is not None:
                with open(f"{task.path}/schedstat", "rb") as stat:
                    found[key] += int(stat.read().split()[0]) / 1e9
    found["other"] = max(0.0, process_cpu_seconds(pid) - found["main"] - found["engine pool"])
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of this process and of ``pid`` so far, every thread (exited ones included), in seconds."""
    return time.process_time() + process_cpu_seconds(pid)


def running_threads(pid: int, exclude: int | None = None) -> int:
    """How many threads of ``pid`` are running or waiting for a CPU (state R in /proc/PID/task/*/stat), ``exclude``
    (a thread id) aside. A thread that busy-waits is R even while the scheduler has it off the CPU, so this sees
    a spinning thread on a loaded machine, where CPU time over a short window would not."""
    running = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        if exclude is not None and task.name == str(exclude):
            continue
        with contextlib.suppress(OSError), open(f"{task.path}/stat", "rb") as stat:
            # "pid (comm) S ...": the state follows the last ')' (comm may contain anything).
            running += stat.read().rsplit(b")", 1)[1].split()[0] == b"R"
    return running


class Quiescence:
    """Waits until neither side of the comparison has work left running, before a timed call.

    Work a path leaves behind after it returns runs on the same 2 cores as the other path's next call: fastembed's
    default ONNX session (the raw side) keeps an intra-op worker spinning for ~50 ms of CPU after each query, and
    the service may finish bookkeeping after its response. A fixed pause does not cover that (5 ms did not; how
    long a spin lasts in wall time depends on the machine's load), so this polls: it returns once ``polls``
    consecutive looks, ``interval`` apart, found no thread running or runnable in the benchmark process (the
    calling thread aside) nor in the service, or after ``max_wait``. Each wait is recorded per path, with how
    many hit ``max_wait``.
    """

    def __init__(self, service_pid: int, *, max_wait: float, interval: float = 0.001, polls: int = 3) -> None:
        self.service_pid = service_pid
        self.max_wait = max_wait
        self.interval = interval
        self.polls = polls
        self.waits: dict[str, list[float]] = {}
        self.capped: dict[str, int] = {}

    def busy(self) -> bool:
        """Whether any thread of either process (the caller aside) is running or waiting for a CPU now."""
        own = running_threads(os.getpid(), exclude=threading.get_native_id())
        return own > 0 or running_threads(self.service_pid) > 0

    def wait(self, path: str, minimum: float) -> None:
        """Sleep ``minimum``, then until both processes are idle (at most ``max_wait`` in all); recorded under
        ``path`` (the path about to be timed)."""
        started = time.perf_counter()
        time.sleep(minimum)
        capped = False
        if self.max_wait > 0:
            quiet = 0
            while quiet < self.polls:
                quiet = 0 if self.busy() else quiet + 1
                if quiet < self.polls:
                    if time.perf_counter() - started >= self.max_wait:
                        capped = True
                        break
                    time.sleep(self.interval)
        self.waits.setdefault(path, []).append(time.perf_counter() - started)
        self.capped[path] = self.capped.get(path, 0) + capped

    def summary(self) -> str:
        return "; ".join(
            f"before {path}: mean {statistics.mean(waits) * 1000:.1f} ms, p99 {percentile(waits, 0.99) * 1000:.1f} "
            f"ms, {self.capped.get(path, 0)} of {len(waits)} at the {self.max_wait * 1000:.0f} ms cap"
            for path, waits in sorted(self.waits.items())
        )


LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def histogram_values(metrics: str, name: str, labels: str = "") -> dict[str, float]:
    """The ``sum`` and ``count`` of a Prometheus histogram in the text exposition, added up over every series
    whose labels include ``labels`` (each ``key="value"`` of it; "" matches every series): a histogram with
    several label sets (a route's methods, the embedding's kinds) has one ``_sum``/``_count`` per set. A suffix
    no series has is absent (nothing observed yet)."""
    values: dict[str, float] = {}
    wanted = [part for part in labels.split(",") if part]
    for suffix in ("sum", "count"):
        pattern = rf"^{name}_{suffix}(?:\{{([^}}]*)\}})? ([0-9.eE+-]+)$"
        for match in re.finditer(pattern, metrics, re.MULTILINE):
            present = {f'{key}="{value}"' for key, value in LABEL.findall(match.group(1) or "")}
            if all(part in present for part in wanted):
                values[suffix] = values.get(suffix, 0.0) + float(match.group(2))
    return values


def histogram_sum(metrics: str, name: str, labels: str = "") -> float:
    """The sum of a Prometheus histogram's observations (0 before the first)."""
    return histogram_values(metrics, name, labels).get("sum", 0.0)


def histogram_mean_ms(metrics: str, name: str, labels: str = "") -> float | None:
    """Mean of a Prometheus histogram in the text exposition, in milliseconds."""
    values = histogram_values(metrics, name, labels)
    if not values.get("count"):
        return None
    return values["sum"] / values["count"] * 1000


def server_breakdown(metrics: str) -> dict[str, float | None]:
    """Where a search's time goes inside the service, from its own /metrics (means over the whole run)."""
    return {
        "query embedding": histogram_mean_ms(metrics, "rag_embedding_duration_seconds", 'kind="query"'),
        "vector search + registry check": histogram_mean_ms(metrics, "rag_search_duration_seconds"),
        "whole request inside the server": histogram_mean_ms(
            metrics, "rag_http_request_duration_seconds", 'method="POST",route="/v1/search"'
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=80)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--gap-ms", type=float, default=5, help="idle pause before each timed search (0: back to back)"
    )
    parser.add_argument(
        "--settle-max-ms",
        type=float,
        default=400,
        help="after the pause, wait until neither process has work left running, at most this long (0: off)",
    )
    parser.add_argument("--write", type=Path, default=REPO / "docs" / "benchmarks.md", help="results file")
    args = parser.parse_args()
    if not (MODEL_DIR / "model.onnx").exists():
        raise SystemExit("run `make model` first")

    load_before = os.getloadavg()[0]
    rng = random.Random(args.seed)
    documents = [make_document(rng, i) for i in range(args.docs)]
    queries = make_queries(rng, args.queries)
    settings = Settings(_env_file=None)
    work = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    service = ServiceProcess(work / "service")
    try:
        embedder = FastEmbedEmbedder(MODEL, model_path=MODEL_DIR, cache_dir=work / "fastembed")
        chunker = Chunker(
            embedder.tokenizer,
            max_tokens=embedder.max_tokens,
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
        )
        model = TextEmbedding(MODEL, specific_model_path=str(MODEL_DIR), cache_dir=str(work / "fastembed"))
        # The service's queries run the graph EMBEDDING_QUERY_PRECISION names (int8 by default); the raw path
        # is fastembed on model.onnx (float32). So that the ratio is not read as the service's overhead alone, a
        # second raw path runs fastembed on the int8 query graph (a directory where model.onnx is that graph).
        raw_int8 = None
        if settings.embedding_query_precision == "int8":
            int8_dir = work / "raw-int8-model"
            int8_dir.mkdir()
            for item in MODEL_DIR.iterdir():
                target = MODEL_DIR / QUERY_INT8_FILE if item.name == "model.onnx" else item
                (int8_dir / item.name).symlink_to(target)
            raw_int8 = TextEmbedding(
                MODEL, specific_model_path=str(int8_dir), cache_dir=str(work / "fastembed")
            )
        qdrant = raw_shard(work / "raw-edge")
        collection = "raw"
        client = httpx.Client(base_url=service.url, timeout=120)
        fast = KeepAliveClient(service.url)

        # Warm-up all paths (model sessions, first collection writes, connection pool).
        ingest_http(fast, documents[:3], "warm-")
        ingest_http(client, documents[:3], "warm-httpx-")
        ingest_raw(model, chunker, qdrant, collection, documents[:3], settings.embedding_batch_size, "warm-")

        # Document by document, cycling the order of the paths, so all see the same background load. The service
        # is timed with both HTTP clients (each document PUT once with each, under its own id): the keep-alive
        # client is the headline (the search rows' reasoning: a client's own CPU is not the service's), httpx's
        # row keeps its ~1 ms more per PUT visible. Before
        # each timed call, as before each search, both processes must be idle (Quiescence, no fixed pause): the
        # raw side's spinning ONNX threads would otherwise run into the service's next request, and the service's
        # never into the raw side's (its session does not spin). The CPU both processes spend from a call's start
        # until they are idle again is that call's CPU (the raw side's spinning after a run included).
        ingest_quiet = Quiescence(service.proc.pid, max_wait=args.settle_max_ms / 1000)
        paths = ("http", "raw", "http-httpx")
        chunks_of = dict.fromkeys(paths, 0)
        seconds_of = dict.fromkeys(paths, 0.0)
        cpu_of = dict.fromkeys(paths, 0.0)
        timed = [(path, documents[index]) for index, path in interleaved(len(documents), paths)]
        ingest_quiet.wait(timed[0][0], 0)
        for position, (path, document) in enumerate(timed):
            cpu_before = cpu_seconds(service.proc.pid)
            if path == "http":
                chunks, seconds = ingest_http(fast, [document], "")
            elif path == "http-httpx":
                chunks, seconds = ingest_http(client, [document], "httpx-")
            else:
                chunks, seconds = ingest_raw(
                    model, chunker, qdrant, collection, [document], settings.embedding_batch_size, ""
                )
            chunks_of[path] += chunks
            seconds_of[path] += seconds
            # The next call's wait for idle processes, which also closes this call's CPU.
            ingest_quiet.wait(timed[position + 1][0] if position + 1 < len(timed) else "the end", 0)
            cpu_of[path] += cpu_seconds(service.proc.pid) - cpu_before
        http_chunks, raw_chunks = chunks_of["http"], chunks_of["raw"]
        assert http_chunks == raw_chunks == chunks_of["http-httpx"], chunks_of
        rate = {path: chunks_of[path] / seconds_of[path] for path in paths}
        # The service holds what the raw shard holds for the searches below: the httpx copies go.
        for document_id, _, _ in documents:
            client.delete(f"/v1/documents/httpx-{document_id}").raise_for_status()
        # The engine's background optimizer runs once writes paused EDGE_OPTIMIZE_IDLE_SECONDS (holding the GIL):
        # let it do the ingest's and the deletes' work before the searches are timed.
        time.sleep(settings.edge_optimize_idle_seconds + 1)
        Quiescence(service.proc.pid, max_wait=10).wait("searches", 0)

        tenant = qe.Filter(must=[qe.FieldCondition("tenant_id", match=qe.MatchValue("default"))])

        def raw_search(vector: list[float]) -> None:
            qdrant.query(
                qe.QueryRequest(
                    limit=5,
                    query=qe.Query.Nearest(vector, using="dense"),
                    filter=tenant,
                    # the fields the service reads for a hit: the raw payload now also holds version, hash, model
                    with_payload=HIT_PAYLOAD,
                )
            )

        for index in range(10):  # warm-up texts of their own: every measured query is new to both paths
            for warm_client in ("httpx", "keep-alive client"):
                query = f"warm-up question {index} {warm_client}"
                if warm_client == "httpx":
                    client.post("/v1/search", json={"query": query, "top_k": 5}).raise_for_status()
                else:
                    fast.post_json("/v1/search", {"query": query, "top_k": 5})
                raw_search(next(iter(model.query_embed(query))).tolist())
                if raw_int8 is not None:
                    raw_search(next(iter(raw_int8.query_embed(query))).tolist())
        # Each query is searched by the raw path and over HTTP by ONE of the two clients (alternately: a text the
        # service has embedded once would hit its query-vector cache the second time). The order of the paths cycles
        # too (below), and each client meets every order of the paths equally often (tests/test_bench_harness.py).
        gap = args.gap_ms / 1000
        quiet = Quiescence(service.proc.pid, max_wait=args.settle_max_ms / 1000)
        http_latency: dict[str, list[float]] = {"keep-alive client": [], "httpx": []}
        server_cpu_before = thread_cpu_seconds(service.proc.pid)
        raw_latency, raw_embed = [], []
        raw8_latency, raw8_embed = [], []
        paths = ("http", "raw") if raw_int8 is None else ("http", "raw", "raw-int8")
        # Each path follows each other one equally often (bench/interleave.py): rotations alone had http follow
        # raw-int8 (whose embedding in this process evicts the caches) in two of three queries.
        for index, path in interleaved(len(queries), paths):
            query, via = queries[index], http_client_for(index)
            # A pause before each timed call, then until both processes are idle: on 2 shared cores, work one
            # path leaves running after it returns (the raw ONNX session's spinning thread, the server's
            # post-response bookkeeping) would otherwise land inside the other path's timing (Quiescence).
            quiet.wait(path, gap)
            started = time.perf_counter()
            if path == "http":
                # mode dense: the raw path is a dense engine query, so both sides do the same work.
                body = {"query": query, "top_k": 5, "mode": "dense"}
                if via == "httpx":
                    client.post("/v1/search", json=body).raise_for_status()
                else:
                    fast.post_json("/v1/search", body)
                http_latency[via].append(time.perf_counter() - started)
            else:
                embedding = model if path == "raw" else raw_int8
                vector = next(iter(embedding.query_embed(query))).tolist()
                (raw_embed if path == "raw" else raw8_embed).append(time.perf_counter() - started)
                raw_search(vector)
                (raw_latency if path == "raw" else raw8_latency).append(time.perf_counter() - started)
        fast.close()
        server_cpu_after = thread_cpu_seconds(service.proc.pid)
        breakdown = server_breakdown(client.get("/metrics").text)
        client.close()
        qdrant.close()
    finally:
        service.stop()
        shutil.rmtree(work, ignore_errors=True)

    points = raw_chunks + sum(len(chunker.split(d[1])) for d in documents[:3])
    raw_p50, raw_p99 = statistics.median(raw_latency), percentile(raw_latency, 0.99)

    def search_rows(via: str) -> list[tuple[str, ...]]:
        lat = http_latency[via]
        p50, p99 = statistics.median(lat), percentile(lat, 0.99)
        return [
            (f"Search latency p50 (ms), {via}", f"{p50 * 1000:.1f}", f"{raw_p50 * 1000:.1f}",
             f"{p50 / raw_p50:.2f}x", "<= 1.30x"),
            (f"Search latency p99 (ms), {via}", f"{p99 * 1000:.1f}", f"{raw_p99 * 1000:.1f}",
             f"{p99 / raw_p99:.2f}x", "-"),
        ]  # fmt: skip

    rows = [
        ("Ingest throughput (chunks/s), keep-alive client", f"{rate['http']:.1f}", f"{rate['raw']:.1f}",
         f"{rate['http'] / rate['raw']:.2f}x", ">= 0.90x"),
        ("Ingest CPU per chunk (ms, both processes), keep-alive client", f"{cpu_of['http'] / http_chunks * 1000:.1f}",
         f"{cpu_of['raw'] / raw_chunks * 1000:.1f}", f"{cpu_of['http'] / cpu_of['raw']:.2f}x", "-"),
        ("Ingest throughput (chunks/s), httpx", f"{rate['http-httpx']:.1f}", f"{rate['raw']:.1f}",
         f"{rate['http-httpx'] / rate['raw']:.2f}x", "-"),
        ("Ingest CPU per chunk (ms, both processes), httpx",
         f"{cpu_of['http-httpx'] / chunks_of['http-httpx'] * 1000:.1f}", f"{cpu_of['raw'] / raw_chunks * 1000:.1f}",
         f"{cpu_of['http-httpx'] / cpu_of['raw']:.2f}x", "-"),
        *search_rows("keep-alive client"),
        *search_rows("httpx"),
    ]  # fmt: skip
    if raw8_latency:
        raw8_p50 = statistics.median(raw8_latency)
        p50 = statistics.median(http_latency["keep-alive client"])
        rows.append(
            ("Search latency p50 (ms), keep-alive client, against raw with the int8 query graph",
             f"{p50 * 1000:.1f}", f"{raw8_p50 * 1000:.1f}", f"{p50 / raw8_p50:.2f}x", "-")
        )  # fmt: skip
    table = "\n".join(
        [
            "| Metric | HTTP service | Raw fastembed + qdrant-edge | Ratio | Target |",
            "|---|---|---|---|---|",
        ]
        + [f"| {' | '.join(row)} |" for row in rows]
    )
    settle = (
        f"until neither process had work running, at most {args.settle_max_ms:g} ms: {quiet.summary()}"
        if args.settle_max_ms > 0
        else "no wait for idle processes"
    )
    ingest_settle = (
        f"until neither process had work running, at most {args.settle_max_ms:g} ms: {ingest_quiet.summary()}"
        if args.settle_max_ms > 0
        else "no wait"
    )
    setup = (
        f"{args.docs} documents, {raw_chunks} chunks per ingest run (each document PUT once with each HTTP client, "
        f"under its own id, the httpx copies deleted before the searches; CHUNK_SIZE={settings.chunk_size}, "
        f"CHUNK_OVERLAP={settings.chunk_overlap}, EMBEDDING_BATCH_SIZE={settings.embedding_batch_size}; before "
        f"each timed ingest call {ingest_settle}), "
        f"{args.queries} searches (top_k 5, every text new to the "
        f"service, half of them sent with each HTTP client, {args.gap_ms:g} ms idle before each timed call, then "
        f"{settle}) over "
        f"~{points} points per store; the service's queries run EMBEDDING_QUERY_PRECISION="
        f"{settings.embedding_query_precision} ({'model_query_int8.onnx' if raw8_latency else 'model.onnx'}), "
        "the raw path's fastembed query_embed model.onnx (float32)"
        f"{', and a second raw path fastembed on model_query_int8.onnx' if raw8_latency else ''}; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} at the end (other jobs on the machine count: "
        f"read the ratios); {conditions()}."
    )
    lines = [f"- {what}: {value:.1f} ms" for what, value in breakdown.items() if value is not None]
    raw_embed_mean = statistics.mean(raw_embed) * 1000
    client_means = ", ".join(
        f"{via} {statistics.mean(lat) * 1000:.1f} ms" for via, lat in http_latency.items()
    )
    per_search = {
        key: (server_cpu_after.get(key, 0.0) - server_cpu_before.get(key, 0.0)) / len(queries) * 1000
        for key in ("main", "other", "engine pool")
    }
    server_cpu = (
        f"Service CPU per search (the whole process over the measured searches, exited threads included: /proc/PID/stat; the event loop and the engine pool from /proc/PID/task): "
        f"{sum(per_search.values()):.2f} ms, of which the event loop {per_search['main']:.2f} ms, the engine's "
        f"search pool {per_search['engine pool']:.2f} ms and the other threads (threadpool worker: the query "
        f"embedding's calling thread, the registry and the engine call; ONNX Runtime's intra-op worker) "
        f"{per_search['other']:.2f} ms."
    )
    breakdown_text = "\n".join(
        [
            f"Mean search latency: HTTP (client side) {client_means}; raw {statistics.mean(raw_latency) * 1000:.1f} "
            f"ms, of which the raw query embedding {raw_embed_mean:.1f} ms"
            + (
                f"; raw with the int8 query graph {statistics.mean(raw8_latency) * 1000:.1f} ms, of which the "
                f"embedding {statistics.mean(raw8_embed) * 1000:.1f} ms"
                if raw8_latency
                else ""
            )
            + ". Inside the service (means from its /metrics):",
            "",
            *lines,
            "",
            server_cpu,
        ]
    )
    print(setup)
    print(table)
    print(breakdown_text)
    if args.write:
        write_results(args.write, setup, table, breakdown_text)
        print(f"wrote {args.write}")


START = "<!-- ingest_search:start -->"
END = "<!-- ingest_search:end -->"


def write_results(path: Path, setup: str, table: str, breakdown: str) -> None:
    """Replace this benchmark's section of ``path`` (between its markers), keeping every other section."""
    section = "\n".join([START, "", setup, "", table, "", breakdown, "", END])
    if not path.exists():
        path.write_text(RESULTS_DOC.format(results=section), encoding="utf-8")
        return
    replace_section(path, section, START, END, heading="## Latest results (`make bench`)")


RESULTS_DOC = """# Benchmarks

`make bench` (`bench/ingest_search.py`) compares the service, called over HTTP, with the raw libraries it
wraps, on the same documents in the same run:

- **HTTP service**: `python -m service` on 127.0.0.1 with embedded defaults (SQLite registry, qdrant-edge
  vector store; auth, rate limits and the search cache off so the core path is measured). Documents are PUT one at
  a time, each once with the keep-alive client below (the headline row) and once with httpx; searches are `POST /v1/search`.
- **Raw**: the same chunks (same `Chunker`, same model, same batch size) embedded with fastembed and upserted
  with qdrant-edge-py into a shard of its own, document by document, with the BM25 sparse vectors, payload and
  payload indexes the service's shard has; searches are `query_embed` + an engine query with a tenant filter.

Both measurements interleave the paths document by document and query by query (each path following each
other one equally often), so load from other processes on the shared CPUs hits all alike.
The service additionally hashes the content, reads/writes the registry, cleans up previous versions and, on
search, checks hits against the registry: the ratios are the cost of those guarantees plus HTTP.

## Latest results

{results}

## Reading the numbers

- Ingest is dominated by embedding on both paths; the service's extra work per document (hash, registry read
  and compare-and-set commit, clean-up of older versions, HTTP) costs a few percent.
- A search costs the service a roughly constant extra: HTTP + FastAPI + middleware (about 1-2 ms on this
  machine), one threadpool hop, and the registry visibility check (one indexed query, a fraction of a ms).
  Both paths use the same engine (qdrant-edge), so the ratio is the service's own overhead; with a Qdrant
  server both paths add the same network round trip, which lowers it. On this shared 2-CPU machine repeated runs varied by about ±0.2 in the search ratio
  (p50 between 1.2x and 1.45x across runs at a few hundred points, so the 1.3x target is not met reliably).
- p99 is sensitive to the other processes on the machine; the HTTP path has more threads and processes to
  schedule (client, event loop, worker thread), so it suffers more from contention.

Re-run with `make bench` (or `python bench/ingest_search.py --docs 200 --queries 500`); the script rewrites
this file. Numbers depend heavily on the machine and on concurrent load.
"""


if __name__ == "__main__":
    main()
