"""The qdrant-edge store across process boundaries: one owner per directory (a second process gets a clear error),
acknowledged writes survive SIGKILL mid-upsert, an old local-mode store is refused in one line, and the semantics
hold on indexed (HNSW, non-appendable) segments after the optimizer ran."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from service.app.core.errors import ServiceUnavailable
from service.app.store.edge import EdgeVectorStore, EmbeddedStoreError, StoreLocked
from service.app.store.vectors import ChunkPoint
from tests.service.support import make_settings

REPO = Path(__file__).resolve().parents[2]
DIM = 4
BATCH = 50

# A child process that owns the store and upserts batch after batch, printing each batch number once its
# upsert returned (acknowledged), until it is killed.
WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from service.app.store.edge import EdgeVectorStore
    from service.app.store.vectors import ChunkPoint

    store = EdgeVectorStore(Path(sys.argv[1]), collection="c", dimension=4, optimize_idle_seconds=None)
    store.ensure_collection()
    print("ready", flush=True)
    batch = 0
    while True:
        store.upsert([
            ChunkPoint(tenant_id="t", document_id=f"doc-{batch}", version=1, chunk_index=i, text="x" * 200,
                       vector=[1.0, float(i), float(batch), 0.5], metadata={"batch": batch},
                       content_hash="h", model="m")
            for i in range(int(sys.argv[2]))
        ])
        print(batch, flush=True)
        batch += 1
        if sys.argv[3] == "hold" and batch == 1:
            sys.stdin.readline()
    """
)


def spawn_writer(path: Path, *, hold: bool) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(BATCH), "hold" if hold else "run"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def points(document_id: str, count: int, tenant: str = "t") -> list[ChunkPoint]:
    return [
        ChunkPoint(
            tenant_id=tenant,
            document_id=document_id,
            version=1,
            chunk_index=i,
            text=f"{document_id} #{i}",
            vector=[1.0, i / 50, 0.1 if document_id == "a" else 0.2, 0.25],  # distinct per tenant: no ties
            metadata={"n": i},
            content_hash="h",
            model="m",
        )
        for i in range(count)
    ]


@pytest.fixture
def child_cleanup() -> Iterator[list[subprocess.Popen[str]]]:
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_a_second_process_is_refused_with_a_clear_error_until_the_owner_dies(
    tmp_path: Path, child_cleanup: list[subprocess.Popen[str]]
) -> None:
    path = tmp_path / "edge" / "c"
    owner = spawn_writer(path, hold=True)
    child_cleanup.append(owner)
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "0"

    second = EdgeVectorStore(path, collection="c", dimension=DIM, optimize_idle_seconds=None)
    with pytest.raises(StoreLocked) as refused:
        second.ensure_collection()
    message = str(refused.value)
    assert str(path.parent) in message
    assert f"pid {owner.pid}" in message
    assert "\n" not in message

    owner.kill()
    owner.wait()
    second.ensure_collection()  # the kernel dropped the dead owner's lock
    assert second.count("t", "doc-0") == BATCH
    second.close()


def test_python_m_service_refuses_a_locked_store_in_one_line(tmp_path: Path) -> None:
    store = EdgeVectorStore.from_settings(make_settings(tmp_path), model_name="m", dimension=DIM)
    store.ensure_collection()
    try:
        env = {**os.environ, "DATA_DIR": str(tmp_path), "AUTH_DISABLED": "true", "ENVIRONMENT": "test"}
        result = subprocess.run(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        store.close()
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("service: error: the embedded vector store at ")
    assert "in use by another process" in result.stderr


def test_acknowledged_writes_survive_sigkill_mid_upsert(
    tmp_path: Path, child_cleanup: list[subprocess.Popen[str]]
) -> None:
    path = tmp_path / "edge" / "c"
    writer = spawn_writer(path, hold=False)
    child_cleanup.append(writer)
    assert writer.stdout is not None
    acknowledged = [int(writer.stdout.readline()) for _ in range(8)]
    os.kill(writer.pid, signal.SIGKILL)  # most likely inside the next upsert
    writer.wait()

    store = EdgeVectorStore(path, collection="c", dimension=DIM, optimize_idle_seconds=None)
    store.ensure_collection()
    try:
        for batch in acknowledged:
            assert store.count("t", f"doc-{batch}") == BATCH
        total = store.count("t")
        # The batch in flight is one WAL record: entirely there or entirely absent, never half.
        assert total % BATCH == 0
        assert total >= len(acknowledged) * BATCH
        hits = store.search("t", [1.0, 3.0, 2.0, 0.5], limit=5)
        assert len(hits) == 5
        assert hits[0].chunk_index == 3
        store.upsert(points("after-crash", 3))  # and the reopened store takes writes
        assert store.count("t", "after-crash") == 3
    finally:
        store.close()


def test_an_old_local_mode_store_is_refused_in_one_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    legacy = QdrantClient(path=str(settings.resolved_qdrant_path))
    legacy.create_collection(
        "documents__m__4", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    legacy.close()

    with pytest.raises(EmbeddedStoreError) as refused:
        EdgeVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    message = str(refused.value)
    assert "\n" not in message
    assert str(settings.resolved_qdrant_path) in message
    assert "service.tools.migrate_store" in message
    assert "VECTOR_STORE=local" in message
    assert not settings.resolved_edge_path.exists()  # nothing was created next to it

    env = {**os.environ, "DATA_DIR": str(tmp_path), "AUTH_DISABLED": "true", "ENVIRONMENT": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == f"service: error: {message}\n"


def test_semantics_hold_on_indexed_segments_after_optimization(tmp_path: Path) -> None:
    store = EdgeVectorStore(
        tmp_path / "edge" / "c", collection="c", dimension=DIM, optimize_idle_seconds=None
    )
    store._indexing_threshold_kb = 1  # index any segment, so the HNSW path runs on a few hundred points
    store.ensure_collection()
    try:
        store.upsert(points("a", 300) + points("b", 300) + points("a", 50, tenant="other"))
        before = [(h.document_id, h.chunk_index) for h in store.search("t", [1.0, 2.0, 0.12, 0.25], limit=5)]
        assert store.optimize()
        assert store.shard.info().indexed_vectors_count > 0
        after = [(h.document_id, h.chunk_index) for h in store.search("t", [1.0, 2.0, 0.12, 0.25], limit=5)]
        assert after == before
        store.delete_document("t", "a")  # a filtered delete on an indexed segment
        assert (store.count("t", "a"), store.count("t", "b"), store.count("other")) == (0, 300, 50)
        assert {h.document_id for h in store.search("t", [1.0, 2.0, 0.12, 0.25], limit=20)} == {"b"}
    finally:
        store.close()


def test_writes_start_the_background_optimizer_and_close_stops_it(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "edge" / "c", collection="c", dimension=DIM, optimize_idle_seconds=0)
    store.ensure_collection()
    optimizer = store._optimizer
    assert optimizer is not None
    assert optimizer.finished.wait(60)  # the start-up pass
    optimizer.finished.clear()
    store.upsert(points("a", 10))
    assert optimizer.finished.wait(60)
    assert optimizer.runs >= 2
    store.close()
    assert not optimizer.alive
    with pytest.raises(ServiceUnavailable, match="closed"):
        store.search("t", [1.0, 0.0, 0.0, 0.0], limit=1)


def test_migrate_store_copies_a_local_mode_store_into_edge_and_retires_it(tmp_path: Path) -> None:
    from service.app.store.qdrant import QdrantVectorStore
    from service.app.store.vectors import point_id
    from service.tools.migrate_store import migrate

    settings = make_settings(tmp_path)
    old = QdrantVectorStore.from_settings(
        make_settings(tmp_path, vector_store="local"), model_name="m", dimension=DIM
    )
    old.ensure_collection()
    old.upsert(points("a", 40) + points("b", 5, tenant="other"))
    expected = old.search("t", [1.0, 0.5, 0.1, 0.25], limit=3)
    old.close()

    lines: list[str] = []
    assert migrate(settings, report=lines.append) == {old.collection: 45}
    assert not settings.resolved_qdrant_path.exists()
    assert settings.resolved_qdrant_path.with_name("qdrant.migrated").is_dir()

    store = EdgeVectorStore.from_settings(settings, model_name="m", dimension=DIM)  # no longer refused
    store.ensure_collection()
    try:
        assert (store.count("t", "a"), store.count("other")) == (40, 5)
        migrated = store.search("t", [1.0, 0.5, 0.1, 0.25], limit=3)
        assert [(h.document_id, h.chunk_index, h.text) for h in migrated] == [
            (h.document_id, h.chunk_index, h.text) for h in expected
        ]
        assert [h.score for h in migrated] == pytest.approx([h.score for h in expected], abs=1e-5)
        assert store.shard.retrieve([point_id("other", "b", 1, 4)], True, False)[0].payload["text"] == "b #4"
    finally:
        store.close()
    assert migrate(settings, report=lines.append) == {}
    assert lines[-1].startswith("nothing to migrate")


def wide_points(document_id: str, count: int, dim: int) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            tenant_id="t",
            document_id=document_id,
            version=1,
            chunk_index=i,
            text=f"{document_id} #{i}",
            vector=[1.0, i / count, *(((i * 7 + j * 13) % 17) / 17 for j in range(dim - 2))],
            metadata={},
            content_hash="h",
            model="m",
        )
        for i in range(count)
    ]


def test_a_steady_ingest_is_indexed_chunk_by_chunk_in_bounded_segments(tmp_path: Path) -> None:
    # qdrant-edge-py holds the GIL for a whole optimize() call, so the process answers nothing while it
    # runs: what bounds that stall is the work one call is given. Writes never pause here (the idle trigger
    # is an hour away), yet every chunk of points is indexed by its own pass, and no merge or vacuum builds a
    # segment past the cap, so a store ten times larger does not make any single pass longer.
    dim, chunk, segment = 64, 128, 256
    store = EdgeVectorStore(
        tmp_path / "edge" / "c",
        collection="c",
        dimension=dim,
        optimize_idle_seconds=3600,
        optimize_chunk_points=chunk,
        segment_points=segment,
    )
    store.upsert_batch = 32
    store.ensure_collection()
    optimizer = store._optimizer
    assert optimizer is not None
    try:
        assert optimizer.finished.wait(60)  # the start-up pass (nothing to do on an empty shard)
        chunks = 6
        for n in range(chunks):
            optimizer.finished.clear()
            store.upsert(wide_points(f"doc-{n}", chunk, dim))
            assert optimizer.finished.wait(60), f"no optimisation pass after chunk {n} of a steady ingest"
            info = store.shard.info()
            assert info.points_count == (n + 1) * chunk
            # This pass indexed the chunk just written: the backlog never builds up across chunks.
            assert optimizer.largest_backlog <= chunk + store.upsert_batch
        assert info.indexed_vectors_count >= (chunks - 1) * chunk
        # Merges stop at the segment cap: at least chunks * chunk / segment indexed segments remain.
        assert info.segments_count >= chunks * chunk // segment
        hits = store.search("t", wide_points("doc-3", chunk, dim)[5].vector, limit=1)
        assert (hits[0].document_id, hits[0].chunk_index) in {(f"doc-{n}", 5) for n in range(chunks)}
    finally:
        store.close()


def test_a_store_created_with_other_optimizer_settings_takes_the_bounded_ones_on_load(tmp_path: Path) -> None:
    path = tmp_path / "edge" / "c"
    old = EdgeVectorStore(
        path, collection="c", dimension=DIM, optimize_idle_seconds=None, segment_points=10**6
    )
    old.ensure_collection()
    old.close()
    store = EdgeVectorStore(
        path,
        collection="c",
        dimension=DIM,
        optimize_idle_seconds=None,
        optimize_chunk_points=64,
        segment_points=256,
    )
    store.ensure_collection()
    store.close()
    import json

    stored = json.loads((path / "edge_config.json").read_text())["optimizers"]
    assert (stored["indexing_threshold"], stored["max_segment_size"]) == (1, 4)


def test_migrate_store_indexes_chunk_by_chunk_so_no_segment_outgrows_the_cap(tmp_path: Path) -> None:
    # One optimize() after copying everything would index the whole store as one segment, which the service's
    # vacuum would later rebuild in a single GIL-holding call.
    from service.app.store.qdrant import QdrantVectorStore
    from service.tools.migrate_store import migrate

    settings = make_settings(tmp_path, edge_optimize_chunk_points=64, edge_segment_points=128)
    old = QdrantVectorStore.from_settings(
        make_settings(tmp_path, vector_store="local"), model_name="m", dimension=DIM
    )
    old.ensure_collection()
    old.upsert(points("a", 300) + points("b", 300))
    old.close()
    assert migrate(settings, report=lambda line: None) == {old.collection: 600}
    store = EdgeVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    store._optimize_idle = None
    store.ensure_collection()
    try:
        info = store.shard.info()
        assert info.points_count == 600
        assert info.segments_count >= 600 // 128
    finally:
        store.close()


def test_a_filter_on_a_number_past_int64_matches_nothing_instead_of_failing(tmp_path: Path) -> None:
    # The engine's integer match raised on 1.27e272 (an integral float) and the API answered 503 (API fuzzer).
    from service.app.store.vectors import MetadataCondition

    store = EdgeVectorStore(
        tmp_path / "edge" / "c", collection="c", dimension=DIM, optimize_idle_seconds=None
    )
    store.ensure_collection()
    try:
        store.upsert(points("a", 5))
        for value in (1.2707057865512541e272, 10**30, -(10**30)):
            hits = store.search(
                "t", [1.0, 0.0, 0.1, 0.25], limit=5, conditions=[MetadataCondition("n", equals=value)]
            )
            assert hits == []
        assert (
            len(
                store.search(
                    "t", [1.0, 0.0, 0.1, 0.25], limit=5, conditions=[MetadataCondition("n", equals=3.0)]
                )
            )
            == 1
        )
    finally:
        store.close()


def test_the_search_pool_has_one_thread_per_cpu_on_new_and_existing_shards(tmp_path: Path) -> None:
    # The engine's own default was 8 threads on 2 CPUs, contending with the query embedding for the cores.
    import json

    import qdrant_edge as qe

    cpus = len(os.sched_getaffinity(0))
    path = tmp_path / "edge" / "c"
    store = EdgeVectorStore(path, collection="c", dimension=DIM, optimize_idle_seconds=None)
    store.ensure_collection()
    store.close()
    assert json.loads((path / "edge_config.json").read_text())["max_search_threads"] == cpus

    # A shard another setting (or the engine's default) created takes it on load.
    other = tmp_path / "edge" / "d"
    dense = {"dense": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)}
    qe.EdgeShard.create(str(other), qe.EdgeConfig(vectors=dense, max_search_threads=cpus + 5)).close()
    store = EdgeVectorStore(other, collection="d", dimension=DIM, optimize_idle_seconds=None)
    store.ensure_collection()
    store.close()
    assert json.loads((other / "edge_config.json").read_text())["max_search_threads"] == cpus
