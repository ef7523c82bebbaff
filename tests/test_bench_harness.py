"""The benchmark harness measures the service it started: bench/ingest_search.py's ServiceProcess refuses a port
another process answers on (a stale server once answered for a dead child and a whole run measured it)."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from ingest_search import ServiceProcess, free_port, listening_pids  # noqa: E402


def http_server(directory: Path, port: int) -> list[str]:
    """A stand-in server whose /healthz answers 200 (a file of that name in the served directory)."""
    (directory / "healthz").write_text("ok")
    return [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(directory),
    ]


def wait_until_answers(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the stand-in server died"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


@pytest.fixture
def stale_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """A server left on a port by someone else."""
    port = free_port()
    served = tmp_path / "stale"
    served.mkdir()
    proc = subprocess.Popen(http_server(served, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/healthz", proc)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_listening_pids_names_the_process_that_listens(stale_server: tuple[int, subprocess.Popen]) -> None:
    port, proc = stale_server
    assert listening_pids(port) == {proc.pid}
    assert listening_pids(free_port()) == set()


def test_a_port_already_answering_is_refused_before_anything_starts(
    tmp_path: Path, stale_server: tuple[int, subprocess.Popen]
) -> None:
    port, proc = stale_server
    with pytest.raises(SystemExit, match=rf"port {port} is already taken by pid\(s\) \[{proc.pid}\]"):
        ServiceProcess(tmp_path / "data", port=port, command=[sys.executable, "-c", "pass"])


def test_an_answer_from_another_process_is_not_taken_for_the_child(
    tmp_path: Path, stale_server: tuple[int, subprocess.Popen], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stale server takes the port after the pre-start check (the race a free-port probe cannot close); the
    # child never listens. The harness must say so instead of measuring the stale server.
    port, proc = stale_server
    import ingest_search

    real = ingest_search.listening_pids
    calls: list[int] = []

    def free_at_first_look(p: int) -> set[int]:
        calls.append(p)
        return set() if len(calls) == 1 else real(p)

    monkeypatch.setattr(ingest_search, "listening_pids", free_at_first_look)
    child = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(SystemExit, match=rf"answers, but not from the benchmark's service .*\[{proc.pid}\]"):
        ServiceProcess(tmp_path / "data", port=port, command=child, timeout=30)


def test_a_child_that_dies_is_reported_with_its_log(tmp_path: Path) -> None:
    child = [sys.executable, "-c", "import sys; print('cannot bind'); sys.exit(3)"]
    with pytest.raises(SystemExit, match="service exited \\(3\\): cannot bind"):
        ServiceProcess(tmp_path / "data", command=child, timeout=30)


def test_its_own_child_answering_is_accepted_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    served = tmp_path / "own"
    served.mkdir()
    service = ServiceProcess(tmp_path / "data", port=port, command=http_server(served, port), timeout=30)
    try:
        assert listening_pids(port) == {service.proc.pid}
        assert httpx.get(f"{service.url}/healthz").status_code == 200
    finally:
        service.stop()
    assert service.proc.poll() is not None


def test_results_replace_only_their_own_section(tmp_path: Path) -> None:
    # `make bench` once rewrote the whole docs/benchmarks.md, deleting every other benchmark's section.
    from ingest_search import END, START, write_results

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{START}\nold numbers\n{END}\n\n## Scale\n\nkept section\n")
    write_results(doc, "setup", "| table |", "breakdown")
    text = doc.read_text()
    assert "old numbers" not in text
    assert "| table |" in text
    assert text.startswith("# Benchmarks\n\nintro\n\n")
    assert text.endswith("## Scale\n\nkept section\n")

    fresh = tmp_path / "new.md"
    write_results(fresh, "setup", "| table |", "breakdown")
    assert START in fresh.read_text()
    assert "| table |" in fresh.read_text()


def test_the_real_results_file_has_the_markers() -> None:
    from ingest_search import END, START

    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert text.count(START) == 1
    assert text.count(END) == 1
    assert text.index(START) < text.index(END)


def test_the_keep_alive_client_reconnects_once_after_the_server_dropped_an_idle_connection() -> None:
    """bench/httpclient.py: the service closes idle keep-alive connections (HTTP_KEEP_ALIVE_SECONDS) without
    warning the client; the next search must go out on a new connection, and a non-2xx must never be timed."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from httpclient import HTTPStatusError, KeepAliveClient

    connections: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise

        def setup(self) -> None:
            super().setup()
            connections.append(id(self.connection))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            status = 200 if self.path == "/v1/search" else 404
            payload = json.dumps({"echo": json.loads(body)}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True  # dropped after the answer, as an idle timeout would: no warning

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with KeepAliveClient(f"http://127.0.0.1:{server.server_address[1]}") as client:
            assert json.loads(client.post_json("/v1/search", {"query": "a"})) == {"echo": {"query": "a"}}
            assert json.loads(client.post_json("/v1/search", {"query": "b"})) == {"echo": {"query": "b"}}
            assert len(connections) == 2  # the second request went out on a fresh connection
            with pytest.raises(HTTPStatusError, match="404"):
                client.post_json("/v1/nowhere", {"query": "c"})
    finally:
        server.shutdown()
        server.server_close()


def test_the_keep_alive_client_reads_whole_responses_however_the_server_frames_and_splits_them() -> None:
    """bench/httpclient.py parses the answer with httptools, not by hand: a chunked body, a Content-Length body
    that arrives in many small writes with the next status line's bytes not mixed in, and ``Connection: close``
    (the connection is then dropped and the next request goes out on a new one) are all read whole; every
    request is one well-formed HTTP/1.1 message with its Host, Content-Type and Content-Length."""
    import json
    import socket
    import threading

    from httpclient import KeepAliveClient

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    requests: list[bytes] = []
    connections: list[int] = []

    def read_request(connection: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in buffer:
            buffer += connection.recv(65536)
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += connection.recv(65536)
        requests.append(head + b"\r\n\r\n" + rest[:length])
        return rest[:length], rest[length:]

    def serve() -> None:
        answers = iter(["chunked", "split", "close", "plain"])
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection.fileno())
            buffer = b""
            with connection:
                for answer in answers:
                    body, buffer = read_request(connection, buffer)
                    payload = json.dumps({"answer": answer, "echo": json.loads(body)}).encode()
                    if answer == "chunked":
                        half = len(payload) // 2
                        connection.sendall(
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                            + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
                            % (half, payload[:half], len(payload) - half, payload[half:])
                        )
                    elif answer == "split":
                        message = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
                        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        for index in range(0, len(message), 7):
                            connection.sendall(message[index : index + 7])
                    else:
                        close = b"connection: close\r\n" if answer == "close" else b""
                        connection.sendall(
                            b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n%s"
                            % (close, len(payload), payload)
                        )
                        if close:
                            break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with KeepAliveClient(f"http://127.0.0.1:{port}") as client:
            for answer in ("chunked", "split", "close", "plain"):
                got = json.loads(client.post_json("/v1/search", {"query": answer}))
                assert got == {"answer": answer, "echo": {"query": answer}}
        assert len(connections) == 2  # the one after "Connection: close" is new
        for request in requests:
            head, _, body = request.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            assert lines[0] == b"POST /v1/search HTTP/1.1"
            assert f"host: 127.0.0.1:{port}".encode() in lines
            assert b"content-type: application/json" in lines
            assert f"content-length: {len(body)}".encode() in lines
    finally:
        listener.close()


def test_a_timed_call_waits_while_the_other_side_still_has_a_thread_spinning() -> None:
    """bench/ingest_search.py's Quiescence: fastembed's default ONNX session (the raw side) keeps a worker thread
    spinning after each query, and the service may still be busy after its response; a timed call must not start
    while either runs. A spinning thread in this process, or a busy service process, keeps the wait going to its
    cap; once both are idle the wait ends before the cap. (Behaviour, not timing: only whether the cap was hit.)"""
    import threading

    from ingest_search import Quiescence

    idle_service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy_service = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    try:
        quiet = Quiescence(idle_service.pid, max_wait=5)
        quiet.wait("raw", 0)  # nothing runs: ends at the first idle window, far below 5 s
        assert quiet.capped["raw"] == 0

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        try:
            spinning = Quiescence(idle_service.pid, max_wait=0.05)
            spinning.wait("http", 0)
            assert spinning.capped["http"] == 1
        finally:
            stop.set()
            spinner.join()

        busy = Quiescence(busy_service.pid, max_wait=0.05)
        busy.wait("raw", 0)
        busy.wait("raw", 0)
        assert busy.capped["raw"] == 2
        assert len(busy.waits["raw"]) == 2
        assert "2 of 2 at the 50 ms cap" in busy.summary()

        off = Quiescence(busy_service.pid, max_wait=0)  # --settle-max-ms 0: the fixed pause alone
        off.wait("raw", 0)
        assert off.capped["raw"] == 0
    finally:
        for proc in (idle_service, busy_service):
            proc.kill()
            proc.wait()


def test_the_raw_ingest_path_stores_what_the_service_stores(tmp_path: Path) -> None:
    # make bench's ingest ratio compares like with like only if the raw shard holds what the service's shard
    # holds: the dense AND the BM25 sparse vector, the same payload fields and the same payload indexes.
    import qdrant_edge as qe
    from fastembed import TextEmbedding
    from ingest_search import MODEL, MODEL_DIR, ingest_raw, make_document, raw_shard
    from tokenizers import Tokenizer

    from service.app.ingest.chunking import Chunker
    from service.app.store.edge import EdgeVectorStore
    from service.app.store.vectors import ChunkPoint

    document_id, text, metadata = make_document(random.Random(1), 0)
    chunker = Chunker(
        Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json")),
        max_tokens=256,
        chunk_size=200,
        chunk_overlap=32,
    )
    model = TextEmbedding(MODEL, specific_model_path=str(MODEL_DIR), cache_dir=str(tmp_path / "fastembed"))
    raw = raw_shard(tmp_path / "raw")
    service = EdgeVectorStore(tmp_path / "service", collection="c", dimension=384, optimize_idle_seconds=None)
    service.ensure_collection()
    try:
        chunks, _ = ingest_raw(model, chunker, raw, "raw", [(document_id, text, metadata)], 4, "")
        assert chunks == len(chunker.split(text)) > 0
        service.upsert(
            [ChunkPoint("default", document_id, 1, 0, "a chunk", [0.1] * 384, metadata, "h", MODEL)]
        )

        def first_point(shard: qe.EdgeShard) -> qe.Record:
            (point,), _ = shard.scroll(qe.ScrollRequest(limit=1))
            return shard.retrieve([point.id], with_payload=True, with_vector=True)[0]

        # The service builds metadata indexes in the background: compare once they are built.
        assert service.indexer is not None
        assert service.indexer.wait_idle(60)
        raw_point, service_point = first_point(raw), first_point(service.shard)
        assert set(raw.info().payload_schema) == set(service.shard.info().payload_schema)
        assert set(raw_point.payload) == set(service_point.payload)
        assert set(raw_point.vector) == set(service_point.vector) == {"dense", "bm25"}
        assert raw_point.vector["bm25"].indices  # the chunk's BM25 terms, not an empty placeholder
    finally:
        service.close()
        raw.close()


def test_cpu_seconds_counts_every_thread_of_the_other_process() -> None:
    # make bench's ingest CPU per chunk adds the service's threads (an ONNX Runtime pool, the threadpool) to its own.
    from ingest_search import cpu_seconds

    burner = (
        "import threading\ndef spin():\n    while True: pass\nthreading.Thread(target=spin).start()\nspin()\n"
    )
    busy = subprocess.Popen([sys.executable, "-c", burner])
    try:
        started, own = cpu_seconds(busy.pid), time.process_time()
        deadline = time.monotonic() + 60
        # the child's CPU shows up, beyond this process's own
        while (cpu_seconds(busy.pid) - started) - (time.process_time() - own) < 0.2:
            assert time.monotonic() < deadline, "the busy child's CPU never showed up"
            time.sleep(0.01)
    finally:
        busy.kill()
        busy.wait()


def metrics_client(bodies: list[str]) -> tuple[httpx.Client, list[str]]:
    """A client whose GET /metrics answers the given exposition texts in turn (the last one from then on)."""
    served: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        body = bodies[min(len(served), len(bodies) - 1)]
        served.append(body)
        return httpx.Response(200, text=body)

    return httpx.Client(base_url="http://service", transport=httpx.MockTransport(answer)), served


def test_scale_measures_after_the_start_up_orphan_pass_has_ended() -> None:
    from scale import wait_for_startup_collection

    running = "# TYPE rag_orphan_collections_total counter\nrag_orphan_collections_total 0.0\n"
    ended = running.replace("total 0.0", "total 1.0")
    client, served = metrics_client([running, running, running, ended])
    assert wait_for_startup_collection(client, poll=0) is not None
    assert len(served) == 4  # it kept asking while the pass ran, and stopped once it had ended

    # A service that reports no collector (GC off, an older checkout as the baseline) is not waited for.
    client, served = metrics_client(["rag_http_requests_total 3.0\n"])
    assert wait_for_startup_collection(client, poll=0) is None
    assert len(served) == 1

    client, _ = metrics_client([running])
    with pytest.raises(SystemExit, match="did not end"):
        wait_for_startup_collection(client, timeout=0.05, poll=0.01)


def test_scale_does_not_wait_for_a_collector_the_environment_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scale import wait_for_startup_collection

    monkeypatch.setenv("GC_ENABLED", "false")  # the services inherit it: their counter would stay at 0
    client, served = metrics_client(["rag_orphan_collections_total 0.0\n"])
    assert wait_for_startup_collection(client, poll=0) is None
    assert served == []


def test_scale_splits_a_live_process_cpu_by_thread() -> None:
    # A real process with a named Python thread and a busy worker: thread_cpu reads every thread of it, and the
    # classification puts the main thread on the event loop, a search worker by its Python name, the engine's
    # pool by its kernel name, and an unnamed native thread in the native pools only when Python names are known.
    from scale import thread_cpu, thread_group

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, sys\n"
            "def spin():\n    while True: sum(range(1000))\n"
            "threading.Thread(target=spin, name='search-worker-1', daemon=True).start()\n"
            "print('up', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "up"
        first = thread_cpu(child.pid)
        assert child.pid in first
        assert len(first) >= 2
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the spinning thread has been charged some CPU
            later = thread_cpu(child.pid)
            if any(later[t][1] > first.get(t, ("", 0.0))[1] for t in later if t != child.pid):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the worker thread was never charged CPU")
    finally:
        child.kill()
        child.wait()
    names = {101: "MainThread", 102: "search-worker-3", 103: "edge-optimizer"}
    assert thread_group(100, "python", 100, {}) == "event loop"
    assert thread_group(102, "python", 100, names) == "search workers"
    assert thread_group(103, "python", 100, names) == "other"
    assert thread_group(104, "edge-search-1", 100, names) == "engine pool"
    assert thread_group(105, "python", 100, names) == "native pools"  # no Python frames: ONNX Runtime's
    assert thread_group(105, "python", 100, {}) == "other"  # without py-spy nothing tells them apart
    assert thread_group(106, "libuv-worker", 100, names) == "other"


def test_query_session_charges_a_pool_threads_cpu_to_its_own_variant() -> None:
    # bench/query_session.py once counted process CPU around each run only, so a spinning variant's pool thread
    # (still spinning after its run) was charged to the next variant. Each variant's pool threads are now found when
    # its session is built and their schedstat CPU is counted for that variant: a 1-thread session has none, a
    # 2-thread one exactly one, and that thread is charged CPU by the variant's own runs.
    import numpy as np
    import onnxruntime as ort
    from query_session import thread_ids, threads_cpu, variants

    from service.app.store.embedder import QUERY_INT8_FILE

    path = str(ROOT / ".models" / "all-MiniLM-L6-v2" / QUERY_INT8_FILE)
    options = variants()
    pools = {}
    sessions = {}
    for name in ("service (1 thread)", "2 threads, spinning"):
        before = thread_ids()
        sessions[name] = ort.InferenceSession(
            path, sess_options=options[name], providers=["CPUExecutionProvider"]
        )
        pools[name] = sorted(thread_ids() - before)
    assert pools["service (1 thread)"] == []
    assert len(pools["2 threads, spinning"]) == 1
    ids = np.array([[101, 2054, 2003, 1037, 3231, 6251, 1997, 3793, 102]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    spent = threads_cpu(pools["2 threads, spinning"])
    for _ in range(
        20
    ):  # a run splits its GEMMs across both threads: the pool thread works (and spins) in each
        sessions["2 threads, spinning"].run(None, feed)
    assert threads_cpu(pools["2 threads, spinning"]) > spent


def test_search_ab_server_means_cover_only_the_searches_between_its_two_scrapes() -> None:
    # The warm-up searches (the first, slowest embedding runs among them) happened before the first scrape; the
    # means are over what the measured searches added, and a part nothing observed in the window is None.
    from search_ab import window_means

    def scrape(embedding: tuple[float, int], request: tuple[float, int]) -> str:
        return (
            f'rag_embedding_duration_seconds_sum{{kind="query"}} {embedding[0]}\n'
            f'rag_embedding_duration_seconds_count{{kind="query"}} {embedding[1]}\n'
            'rag_embedding_duration_seconds_sum{kind="document"} 9.0\n'
            'rag_embedding_duration_seconds_count{kind="document"} 3\n'
            f'rag_http_request_duration_seconds_sum{{method="POST",route="/v1/search"}} {request[0]}\n'
            f'rag_http_request_duration_seconds_count{{method="POST",route="/v1/search"}} {request[1]}\n'
        )

    before = scrape((0.5, 20), (0.6, 20))  # 20 warm-up searches at 25 ms of embedding each
    after = scrape((0.5 + 200 * 0.002, 220), (0.6 + 200 * 0.005, 220))
    means = window_means(before, after)
    assert means["query embedding"] == pytest.approx(2.0)
    assert means["whole request inside the server"] == pytest.approx(5.0)
    assert means["vector search + registry check"] is None


def follows(sequence: list[str]) -> dict[tuple[str, str], int]:
    """How often each path directly follows each other one in a timing sequence."""
    counts: dict[tuple[str, str], int] = {}
    for before, after in itertools.pairwise(sequence):
        if before != after:
            counts[(before, after)] = counts.get((before, after), 0) + 1
    return counts


@pytest.mark.parametrize(
    "paths", [("http", "raw"), ("http", "raw", "raw-int8"), ("http", "raw", "http-httpx")]
)
def test_every_path_follows_every_other_one_equally_often(paths: tuple[str, ...]) -> None:
    # make bench's rotations had http follow raw-int8 (whose embedding evicts the caches) in 2 of 3 queries
    # (stop 19's and 20's order bias). Over whole cycles of orders, the boundaries between rounds included, each
    # ordered pair of paths is adjacent equally often, and each path holds each position equally often.
    from ingest_search import interleaved
    from interleave import path_orders

    orders = path_orders(paths)
    for cycles in (1, 3):
        sequence = [path for _, path in interleaved(len(orders) * cycles, paths)]
        counts = follows(sequence + sequence[:1])  # cyclic: the next cycle starts where this one started
        assert set(counts) == {(a, b) for a in paths for b in paths if a != b}
        assert len(set(counts.values())) == 1, counts
    for position in range(len(paths)):
        assert sorted(order[position] for order in orders) == sorted(paths * (len(orders) // len(paths)))

    rotations = [paths[i:] + paths[:i] for i in range(len(paths))]  # the old schedule, for contrast
    if len(paths) == 3:
        assert len(set(follows([p for _ in range(3) for r in rotations for p in r]).values())) > 1


def test_each_http_client_meets_every_order_of_the_paths_equally_often() -> None:
    # Only one HTTP client sends each query; if the clients and the orders cycled in step, one client would be
    # timed after the raw path more often than the other.
    from ingest_search import http_client_for, interleaved

    paths = ("http", "raw", "raw-int8")
    rounds = 24
    schedule = interleaved(rounds, paths)
    orders_of: dict[str, list[tuple[str, ...]]] = {"keep-alive client": [], "httpx": []}
    for index in range(rounds):
        orders_of[http_client_for(index)].append(tuple(p for i, p in schedule if i == index))
    for seen in orders_of.values():
        counts = {order: seen.count(order) for order in set(seen)}
        assert len(counts) == 6, counts
        assert len(set(counts.values())) == 1, counts


def test_more_than_three_paths_are_refused_rather_than_biased() -> None:
    from interleave import path_orders

    with pytest.raises(ValueError, match="at most 3"):
        path_orders(("a", "b", "c", "d"))
    with pytest.raises(ValueError, match="distinct"):
        path_orders(("a", "a"))


def test_histogram_values_add_up_every_series_the_labels_select() -> None:
    # The request histogram has one series per (route, method); the last one matching used to be read alone.
    from ingest_search import histogram_mean_ms, histogram_values

    scrape = (
        'rag_http_request_duration_seconds_sum{method="POST",route="/v1/search"} 3.0\n'
        'rag_http_request_duration_seconds_count{method="POST",route="/v1/search"} 1000\n'
        'rag_http_request_duration_seconds_sum{method="GET",route="/v1/search"} 1.0\n'
        'rag_http_request_duration_seconds_count{method="GET",route="/v1/search"} 100\n'
        'rag_http_request_duration_seconds_sum{method="GET",route="/v1/search/x"} 50.0\n'
        'rag_http_request_duration_seconds_count{method="GET",route="/v1/search/x"} 5\n'
        'rag_embedding_duration_seconds_sum{kind="query"} 2.0\n'
        'rag_embedding_duration_seconds_count{kind="query"} 10\n'
        'rag_embedding_duration_seconds_sum{subkind="query",kind="document"} 9.0\n'
        'rag_embedding_duration_seconds_count{subkind="query",kind="document"} 3\n'
    )
    name = "rag_http_request_duration_seconds"
    assert histogram_values(scrape, name, 'route="/v1/search"') == {"sum": 4.0, "count": 1100.0}
    assert histogram_values(scrape, name, 'method="POST",route="/v1/search"') == {"sum": 3.0, "count": 1000.0}
    assert histogram_values(scrape, name) == {"sum": 54.0, "count": 1105.0}
    assert histogram_values(scrape, name, 'route="/v1/other"') == {}
    # a label's name is matched whole: subkind="query" is not kind="query"
    assert histogram_mean_ms(scrape, "rag_embedding_duration_seconds", 'kind="query"') == pytest.approx(200.0)
    # scale.py reads the same helper (it kept a copy of its own)
    from scale import histogram_totals

    assert histogram_totals(scrape, name, 'route="/v1/search"') == (4.0, 1100.0)
    assert histogram_totals(scrape, name, 'route="/v1/other"') == (0.0, 0.0)


def priority_probe(tmp_path: Path, niceness: int, command: str) -> subprocess.CompletedProcess[str]:
    """A benchmark process niced by ``niceness`` that starts a ServiceProcess running ``command`` (Python source
    formatted with the port) and prints the child's threads' (nice, policy) and the conditions line."""
    script = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT / "bench")!r})
from ingest_search import ServiceProcess, free_port
from priority import conditions, thread_priorities
os.nice({niceness})
port = free_port()
served = {str(tmp_path / "served")!r}
os.makedirs(served, exist_ok=True)
open(os.path.join(served, "healthz"), "w").write("ok")
command = [sys.executable, "-c", {command!r}.format(port=port, served=served)]
service = ServiceProcess(__import__("pathlib").Path({str(tmp_path / "data")!r}), port=port, command=command, timeout=60)
try:
    print(json.dumps({{"threads": sorted(set(thread_priorities(service.proc.pid).values())),
                      "own": os.getpriority(os.PRIO_PROCESS, 0), "conditions": conditions()}}))
finally:
    service.stop()
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


SERVE = (
    "import runpy, sys; {prelude}sys.argv = ['http.server', '{{port}}', '--bind', '127.0.0.1', '--directory', "
    "'{{served}}']; runpy.run_module('http.server', run_name='__main__')"
)


def test_a_service_runs_at_the_priority_of_the_benchmark_that_started_it(tmp_path: Path) -> None:
    # The service and the benchmark's own (raw) path compete for the same cores at one priority, and the result
    # says which: under `nice -n 10` the conditions line says the run was niced.
    done = priority_probe(tmp_path, 4, SERVE.format(prelude=""))
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    own = found["own"]
    assert own >= 4
    assert found["threads"] == [[own, os.SCHED_OTHER, 0]]
    assert f"benchmark and services at nice {own} (SCHED_OTHER) (niced:" in found["conditions"]


def test_a_service_that_changes_its_own_priority_is_refused_naming_both(tmp_path: Path) -> None:
    policy = os.SCHED_IDLE if os.sched_getscheduler(0) != os.SCHED_IDLE else os.SCHED_BATCH
    name = {os.SCHED_IDLE: "SCHED_IDLE", os.SCHED_BATCH: "SCHED_BATCH"}[policy]
    prelude = f"import os; os.sched_setscheduler(0, {policy}, os.sched_param(0)); "
    done = priority_probe(tmp_path, 0, SERVE.format(prelude=prelude))
    assert done.returncode != 0
    assert "runs thread" in done.stderr, done.stderr[-2000:]
    assert f"({name}), the benchmark at nice" in done.stderr
    assert "both must run at one priority" in done.stderr


def test_segment_builds_charges_a_query_its_own_thread_and_the_engine_pool_not_other_threads() -> None:
    # segment_builds timed queries with time.process_time(): every thread of the process, so a BLAS pool still
    # spinning after the truth's matrix product (or any other thread) was charged to the next query.
    import hashlib
    import threading

    from segment_builds import query_cpu_seconds

    def work(rounds: int) -> float:
        """CPU-bound work that releases the GIL (hashlib on large buffers); this thread's CPU seconds spent."""
        started = time.thread_time()
        block = b"x" * (1 << 20)
        for _ in range(rounds):
            hashlib.sha256(block).digest()
        return time.thread_time() - started

    release = threading.Event()  # the threads live on after the query, as the engine's pool threads do

    def named(name: str, rounds: int, spent: list[float], go: threading.Event) -> threading.Event:
        done = threading.Event()

        def run() -> None:
            Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name)
            go.wait(60)
            spent.append(work(rounds))
            done.set()
            release.wait(60)

        threading.Thread(target=run, daemon=True).start()
        return done

    pool_spent: list[float] = []
    other_spent: list[float] = []
    go_pool, go_other = threading.Event(), threading.Event()
    pool_done = named(
        "edge-search-0", 20, pool_spent, go_pool
    )  # what an engine pool thread does for the query
    other_done = named(
        "blas-worker", 200, other_spent, go_other
    )  # 10x as much, on a thread the query never used

    def query() -> str:
        go_other.set()
        go_pool.set()
        assert pool_done.wait(60)
        assert other_done.wait(60)  # the other thread's work falls entirely inside the measured window
        return "hits"

    try:
        result, charged = query_cpu_seconds(query)
    finally:
        release.set()
    assert result == "hits"
    assert pool_spent
    assert other_spent
    assert charged >= pool_spent[0] * 0.99
    assert charged < pool_spent[0] + other_spent[0] / 2


def test_startup_measures_a_service_loaded_from_byte_code_even_where_python_may_not_write_it(
    tmp_path: Path,
) -> None:
    # With PYTHONDONTWRITEBYTECODE=1 (this sandbox's shell) every start compiled the service's ~650 KB of source
    # (~11 % of the imports' instructions), and whether an earlier run had left .pyc files decided a tenth of the
    # verdict's imports row. bench/startup.py compiles the checkout's service package first, as the image does.
    from startup import compile_service

    package = tmp_path / "checkout" / "service"
    (package / "app").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "app" / "__init__.py").write_text("")
    (package / "app" / "main.py").write_text("VALUE = 42\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    probe = [sys.executable, "-v", "-c", "import service.app.main as m; assert m.VALUE == 42"]

    def loaded_from_byte_code() -> bool:
        done = subprocess.run(probe, cwd=package.parent, env=env, capture_output=True, text=True, check=True)
        return f"code object from '{package / 'app' / '__pycache__'}/main." in done.stderr

    assert not loaded_from_byte_code()  # compiled from source, and nothing written
    compile_service(package.parent)
    assert loaded_from_byte_code()
    (package / "app" / "main.py").write_text("VALUE = 42  # changed\n")  # a stale .pyc is not used
    assert not loaded_from_byte_code()
    compile_service(package.parent)
    assert loaded_from_byte_code()


def test_startup_breakdown_is_the_median_of_each_step_over_the_probes() -> None:
    # One probe per checkout used to be the whole breakdown: one slow moment set a row.
    from startup import medians

    probes = [
        {"wall": {"imports: app": 0.8, "model load": 0.3}, "cpu": {"imports: app": 0.7, "model load": 0.2}},
        {"wall": {"imports: app": 2.5, "model load": 0.4}, "cpu": {"imports: app": 0.9, "model load": 0.3}},
        {"wall": {"imports: app": 0.9, "model load": 0.2}, "cpu": {"imports: app": 0.8, "model load": 0.1}},
    ]
    assert medians(probes) == {"imports: app": 0.9, "model load": 0.3}
    assert medians(probes, "cpu") == {"imports: app": 0.8, "model load": 0.2}
