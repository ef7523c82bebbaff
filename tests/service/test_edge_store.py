"""The qdrant-edge store across process boundaries: one owner per directory (a second process gets a clear error),
acknowledged writes survive SIGKILL mid-upsert, an old local-mode store is refused in one line, and the semantics
hold on indexed (HNSW, non-appendable) segments after the optimizer ran."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from service.app.core.config import Settings
from service.app.core.errors import ServiceUnavailable
from service.app.store import edge as edge_module
from service.app.store.edge import EdgeVectorStore, EmbeddedStoreError, StoreLocked, unindexed_points
from service.app.store.sparse import default_encoder
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


def test_local_mode_beside_an_edge_store_is_refused_in_one_line(tmp_path: Path) -> None:
    # EYES4 E1: a `VECTOR_STORE=local make serve` on a DATA_DIR whose documents live in the edge store started,
    # answered every search with nothing, and each document it wrote vanished from the edge service's searches.
    from service.app.main import open_vector_store

    edge = EdgeVectorStore.from_settings(make_settings(tmp_path), model_name="m", dimension=DIM)
    edge.ensure_collection()
    edge.upsert(points("a", 3))
    edge.close()

    local = make_settings(tmp_path, vector_store="local")
    with pytest.raises(EmbeddedStoreError) as refused:
        open_vector_store(local, model_name="m", dimension=DIM)
    message = str(refused.value)
    assert "\n" not in message
    assert str(local.resolved_edge_path) in message
    assert "unset VECTOR_STORE" in message
    assert not local.resolved_qdrant_path.exists()  # no second store was created

    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "VECTOR_STORE": "local",
        "AUTH_DISABLED": "true",
        "ENVIRONMENT": "test",
    }
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == f"service: error: {message}\n"
    # A DATA_DIR of its own (or an in-memory local store) is still a local-mode service's choice.
    own = make_settings(tmp_path / "own", vector_store="local")
    open_vector_store(own, model_name="m", dimension=DIM).close()


def test_a_second_local_mode_store_on_the_same_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    # EYES5 F9: a second VECTOR_STORE=local process died with a 100-line portalocker traceback.
    from service.app.store.edge import StoreLocked
    from service.app.store.qdrant import QdrantVectorStore

    settings = make_settings(tmp_path, vector_store="local")
    first = QdrantVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    try:
        with pytest.raises(StoreLocked) as refused:
            QdrantVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    finally:
        first.close()
    assert "\n" not in str(refused.value)
    assert f"{settings.resolved_qdrant_path} is in use by another process" in str(refused.value)


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


def test_migrate_store_refuses_a_store_in_use_in_one_line_saying_to_stop_the_service(tmp_path: Path) -> None:
    # The edge lock's message advises "one service process per DATA_DIR (WORKERS=1)": migrate_store printed it
    # as it was, telling its user about WORKERS instead of stopping the service; and a local-mode store still
    # open in a service of an earlier release was a qdrant-client RuntimeError traceback.
    from service.app.store.edge import DirectoryLock
    from service.app.store.qdrant import QdrantVectorStore

    settings = make_settings(tmp_path)
    old = QdrantVectorStore.from_settings(
        make_settings(tmp_path, vector_store="local"), model_name="m", dimension=DIM
    )
    old.ensure_collection()
    old.upsert(points("a", 3))
    old.close()
    env = {key: value for key, value in os.environ.items() if key not in ("QDRANT_PATH", "EDGE_PATH")}
    env.update({"DATA_DIR": str(tmp_path), "ENVIRONMENT": "test", "HOME": str(tmp_path)})

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.tools.migrate_store"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    lock = DirectoryLock(settings.resolved_edge_path)
    lock.acquire()  # as a running service holds it
    try:
        result = run()
    finally:
        lock.release()
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("migrate_store: error: "), line
    assert f"(pid {os.getpid()})" in line
    assert "stop the service" in line
    assert "WORKERS" not in line

    holder = QdrantClient(path=str(settings.resolved_qdrant_path))  # a service of an earlier release
    try:
        result = run()
    finally:
        holder.close()
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("migrate_store: error: the local-mode store at "), line
    assert "stop that process" in line
    assert settings.resolved_qdrant_path.is_dir()  # not retired: nothing was copied


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


# --- consolidation: fewer segments for searches, merged in a child process (no GIL freeze in this one) ---


def distinct_points(document_id: str, count: int, dim: int = 16, *, tenant: str = "t") -> list[ChunkPoint]:
    """Points whose vectors differ per document and chunk (no ties: rankings compare exactly)."""
    rng = np.random.default_rng(zlib.crc32(document_id.encode()))
    return [
        ChunkPoint(
            tenant_id=tenant,
            document_id=document_id,
            version=1,
            chunk_index=i,
            text=f"{document_id} #{i}",
            vector=rng.standard_normal(dim).tolist(),
            metadata={},
            content_hash="h",
            model="m",
        )
        for i in range(count)
    ]


def fragmented_store(path: Path, *, chunks: int = 5, **options: object) -> EdgeVectorStore:
    """A store of `chunks` x 64 points indexed chunk by chunk under a 128-point cap: many small segments."""
    store = EdgeVectorStore(
        path,
        collection="c",
        dimension=16,
        optimize_chunk_points=64,
        segment_points=128,
        **{"optimize_idle_seconds": None, **options},  # type: ignore[arg-type]
    )
    store.ensure_collection()
    for n in range(chunks):
        store.upsert(distinct_points(f"doc-{n}", 64))
        if store._optimizer is None:
            store.optimize()
    return store


def top_hits(store: EdgeVectorStore) -> list[tuple[str, int]]:
    query = distinct_points("doc-3", 64)[7].vector
    return [(h.document_id, h.chunk_index) for h in store.search("t", query, limit=10)]


def test_consolidation_merges_segments_in_a_child_and_keeps_every_point(tmp_path: Path) -> None:
    store = fragmented_store(tmp_path / "edge" / "c", consolidate_idle_seconds=3600)
    try:
        segments, hits = store.shard.info().segments_count, top_hits(store)
        assert segments >= 3
        assert store.consolidation_due()
        # The serving process never vacuums while consolidation is on (the engine's vacuum has no size cap).
        stored = json.loads((store.path / "edge_config.json").read_text())["optimizers"]
        assert stored["deleted_threshold"] == 1.0
        assert store.consolidate()
        assert store.last_consolidation is not None
        assert store.last_consolidation["segments_before"] == segments
        assert store.shard.info().segments_count <= 2  # one merged segment (+ the appendable one)
        assert store.shard.info().points_count == 5 * 64
        assert top_hits(store) == hits
        assert not store.consolidation_due()  # nothing left to merge
        assert not store.consolidate()
        store.upsert(distinct_points("late", 5))  # the swapped-in shard takes writes and keeps them
        assert store.count("t", "late") == 5
        # Deletes past the child's vacuum share make it due again (it vacuums what this process does not).
        store.vacuum_min_points = 10
        for n in range(2):
            store.delete_document("t", f"doc-{n}")
        assert store.consolidation_due()
        assert store.consolidate()
        assert store.count("t") == 3 * 64 + 5
    finally:
        store.close()
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == [".lock", "c"]  # no leftovers
    reopened = EdgeVectorStore(
        tmp_path / "edge" / "c", collection="c", dimension=16, optimize_idle_seconds=None
    )
    reopened.ensure_collection()
    try:
        assert reopened.count("t") == 3 * 64 + 5
    finally:
        reopened.close()


def test_a_restart_does_not_copy_a_shard_the_cap_cannot_merge_any_further(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10 segments of 64 points under a 160-point cap pair up into 5 (+ the appendable one): one more than the
    # estimate of one segment per cap (+1), as 13 segments of ~7.7k points pair up into 7 under the default
    # 20,480 at 100k chunks. Without a record of that, every start-up copied the whole shard into a child that
    # then found nothing to merge.
    path = tmp_path / "edge" / "c"
    store = fragmented_store(path, chunks=10, consolidate_idle_seconds=3600, consolidate_segment_points=160)
    try:
        assert store.consolidate()
        settled = store.shard.info().segments_count
        assert settled > -(-10 * 64 // 160) + 1
        assert not store.consolidation_due()
    finally:
        store.close()
    children: list[object] = []
    popen = subprocess.Popen

    def counted(*args: object, **kwargs: object) -> object:
        children.append(args)
        return popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(edge_module.subprocess, "Popen", counted)

    def reopen(cap: int = 160) -> EdgeVectorStore:
        again = EdgeVectorStore(
            path,
            collection="c",
            dimension=16,
            optimize_chunk_points=64,
            segment_points=128,
            optimize_idle_seconds=None,
            consolidate_idle_seconds=3600,
            consolidate_segment_points=cap,
        )
        again.ensure_collection()
        return again

    again = reopen()
    try:
        assert again.shard.info().segments_count == settled
        assert not again.consolidation_due()
        assert not again.consolidate()
        assert children == []  # nothing copied, no child started
        again.upsert(distinct_points("late", 64))
        again.optimize()  # a new indexed segment: the layout changed, so a consolidation is due again
        assert again.consolidation_due()
        again.consolidate()
        # Whether this segment fits under the cap beside another is the planner's call, and the store predicts it
        # before copying anything: either a child merged it, or the store put the merge off without starting one.
        assert len(children) + again.skipped_consolidations == 1
        assert not again.consolidation_due()
        assert again.count("t") == 11 * 64
    finally:
        again.close()
    # Without the record (a shard consolidated by an earlier release), the estimate calls it due: the store decides
    # once (a child that finds nothing, or the planner's prediction without one), and that is recorded, so the next
    # start-up does not repeat it.
    (path / "consolidation.json").unlink()
    started = len(children)
    again = reopen()
    try:
        assert again.consolidation_due()
        assert not again.consolidate()
        assert len(children) - started + again.skipped_consolidations == 1
    finally:
        again.close()
    started = len(children)
    again = reopen()
    try:
        assert not again.consolidation_due()
        assert not again.consolidate()
        assert len(children) == started
        assert again.skipped_consolidations == 0
    finally:
        again.close()
    again = reopen()
    try:
        assert not again.consolidation_due()
    finally:
        again.close()
    # A record made at another cap says nothing about this one: a larger cap may merge further.
    again = reopen(cap=400)
    try:
        assert again.consolidation_due()
        assert again.consolidate()
        assert again.shard.info().segments_count < settled
        assert again.count("t") == 11 * 64
    finally:
        again.close()


def shard_state(shard: object) -> list[tuple[str, dict[str, object]]]:
    """Every point of a shard (id, payload), in id order."""
    import qdrant_edge as qe

    state: list[tuple[str, dict[str, object]]] = []
    offset = None
    while True:
        records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=1000, with_payload=True))  # type: ignore[attr-defined]
        state.extend((str(r.id), r.payload) for r in records)
        if offset is None:
            return sorted(state)


def versioned(document_id: str, version: int, count: int, text: str) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            tenant_id="t",
            document_id=document_id,
            version=version,
            chunk_index=p.chunk_index,
            text=f"{text} #{p.chunk_index}",
            vector=p.vector,
            metadata={},
            content_hash="h",
            model="m",
        )
        for p in distinct_points(document_id, count)
    ]


def test_writes_during_the_merge_are_replayed_onto_the_merged_copy_in_order(tmp_path: Path) -> None:
    # Writes acknowledged while the child merges used to discard the merged copy (a trickle of writes kept a large
    # shard from ever consolidating). Now they are replayed onto it, in order, before it is renamed in: upserts,
    # deletes by filter of the same ids, re-upserts, a metadata index; the swapped-in shard equals the served one.
    store = fragmented_store(tmp_path / "edge" / "c", consolidate_idle_seconds=3600)
    try:
        segments = store.shard.info().segments_count
        served: list[tuple[str, dict[str, object]]] = []

        def meanwhile(point: str) -> None:
            if point == "merging":  # the copy is taken and the child is merging it
                store.upsert(versioned("doc-0", 1, 64, "rewritten"))  # same ids as the copy's doc-0
                store.upsert(versioned("x", 1, 8, "first"))
                store.delete_document("t", "x")  # by filter: the ids just written
                store.upsert(versioned("x", 1, 4, "second"))  # the same ids again, after the delete
                store.upsert(versioned("x", 2, 6, "third"))
                store.delete_versions_below("t", "x", 2)
                store.upsert(versioned("y", 1, 5, "y"))
                store.delete_version("t", "y", 1)
                store.delete_document("t", "doc-4")
                store.upsert(versioned("doc-4", 3, 2, "back"))
                store._build_metadata_index("v", "integer")  # a small shard builds it inline: replayed too
            if point == "replayed":  # under the exclusive gate: nothing can change the served shard now
                served.extend(shard_state(store.shard))

        store.consolidation_hook = meanwhile
        store.metadata_index_inline_points = 10**6  # build it in this process (as on a small shard)
        assert store.consolidate()
        assert store.last_consolidation is not None
        assert store.last_consolidation["replayed"] == 11
        assert store.shard.info().segments_count < segments
        assert shard_state(store.shard) == served
        assert store.count("t", "x") == 6
        assert store.count("t", "y") == 0
        assert store.count("t", "doc-4") == 2
        hit = store.search("t", versioned("doc-0", 1, 64, "")[5].vector, limit=1)[0]
        assert (hit.document_id, hit.text) == ("doc-0", "rewritten #5")
        assert "metadata.v" in store.shard.info().payload_schema
        # The points deleted during the merge were not vacuumed by it: they still count towards the next one.
        assert store._deleted_points == 8 + 4 + 5 + 64
        assert not store.consolidation_due()  # the record counts the merged copy's segments after the replay
    finally:
        store.close()
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == [".lock", "c"]
    reopened = EdgeVectorStore(
        tmp_path / "edge" / "c", collection="c", dimension=16, optimize_idle_seconds=None
    )
    reopened.ensure_collection()
    try:
        assert shard_state(reopened.shard) == served
        assert reopened._deleted_points == 8 + 4 + 5 + 64
    finally:
        reopened.close()


def test_past_the_replay_limit_the_merged_copy_is_discarded_and_counted(tmp_path: Path) -> None:
    from service.app.core.metrics import EDGE_CONSOLIDATIONS

    store = fragmented_store(tmp_path / "edge" / "c", consolidate_idle_seconds=3600)
    try:
        segments = store.shard.info().segments_count
        store.replay_max_points = 5
        abandoned = EDGE_CONSOLIDATIONS.labels(outcome="replay_limit")._value.get()

        def meanwhile(point: str) -> None:
            if point == "merging":
                store.upsert(distinct_points("meanwhile", 3))
                store.upsert(distinct_points("more", 3))  # 6 points: past the limit

        store.consolidation_hook = meanwhile
        assert not store.consolidate()
        assert EDGE_CONSOLIDATIONS.labels(outcome="replay_limit")._value.get() == abandoned + 1
        assert store.shard.info().segments_count >= segments  # the served shard was never replaced
        assert store.count("t", "meanwhile") == 3
        assert store.count("t") == 5 * 64 + 6
        assert store._replay is None  # the log is gone with the merge
        store.consolidation_hook = None
        assert store.consolidate()  # the next pause merges (nothing written meanwhile)
        assert store.count("t") == 5 * 64 + 6
    finally:
        store.close()
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == [".lock", "c"]


def test_a_concurrent_writer_during_a_real_consolidation_keeps_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    # A writer thread writes batch after batch (and deletes every third document again) while the child merges,
    # the replay runs and the swap happens; a searcher runs throughout. After the swap, and after a reopen, every
    # acknowledged write is there: each acknowledged upsert's points, none of an acknowledged delete's.
    store = fragmented_store(tmp_path / "edge" / "c", consolidate_idle_seconds=3600)
    store.replay_max_points = 10**7  # the writer is not paced: the log's bound is not what this tests
    acked: list[tuple[str, int]] = []  # (document, points it must hold), in acknowledgement order
    failures: list[BaseException] = []
    stop = threading.Event()
    progress = threading.Condition()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            try:
                doc = f"w-{n}"
                store.upsert(distinct_points(doc, 3))
                expected = 3
                if n % 3 == 0:
                    store.delete_document("t", doc)
                    expected = 0
                with progress:
                    acked.append((doc, expected))
                    progress.notify_all()
                n += 1
            except BaseException as exc:  # reported below
                failures.append(exc)
                return

    def searcher() -> None:
        while not stop.is_set():
            try:
                assert len(store.search("t", distinct_points("doc-1", 64)[0].vector, limit=10)) == 10
            except BaseException as exc:
                failures.append(exc)
                return

    def merging(point: str) -> None:
        if point == "merging":  # let the writer acknowledge a few writes during the merge, for certain
            with progress:
                seen = len(acked)
                assert progress.wait_for(lambda: len(acked) >= seen + 3 or bool(failures), 120)

    store.consolidation_hook = merging
    threads = [threading.Thread(target=writer), threading.Thread(target=searcher)]
    try:
        segments = store.shard.info().segments_count
        for thread in threads:
            thread.start()
        assert store.consolidate()
        with progress:  # and a few after the swap, onto the merged shard
            seen = len(acked)
            assert progress.wait_for(lambda: len(acked) >= seen + 2 or bool(failures), 120)
        stop.set()
        for thread in threads:
            thread.join()
        assert not failures, failures[0]
        assert store.last_consolidation is not None
        assert store.last_consolidation["replayed"] >= 3
        assert store.shard.info().segments_count < segments
        for doc, expected in acked:
            assert store.count("t", doc) == expected, doc
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join()
        store.close()
    reopened = EdgeVectorStore(
        tmp_path / "edge" / "c", collection="c", dimension=16, optimize_idle_seconds=None
    )
    reopened.ensure_collection()
    try:
        for doc, expected in acked:
            assert reopened.count("t", doc) == expected, doc
        assert reopened.count("t") == 5 * 64 + sum(expected for _, expected in acked)
    finally:
        reopened.close()


# The service process for the kill -9 tests: owns a copy of a fragmented store, writes batch after batch in a
# thread (printing each batch once acknowledged) and consolidates; EDGE_TEST_BLOCK_CONSOLIDATION_AT makes the
# consolidation block at the named point, where the test kills it.
CONSOLIDATING_WRITER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from service.app.store.edge import EdgeVectorStore
    from tests.service.test_edge_store import distinct_points

    store = EdgeVectorStore(Path(sys.argv[1]), collection="c", dimension=16, optimize_chunk_points=64,
                            segment_points=128, optimize_idle_seconds=None, consolidate_idle_seconds=3600)
    store.ensure_collection()
    progress = threading.Condition()
    acked = allowed = 0

    def writer():  # one batch after another while allowed: a bounded log, whatever the machine's speed
        global acked
        n = 0
        while True:
            with progress:
                progress.wait_for(lambda: allowed > n)
            store.upsert(distinct_points(f"w-{n}", 3))
            if n % 2:
                store.delete_document("t", f"w-{n - 1}")
            print(f"ack {n}", flush=True)
            with progress:
                acked += 1
                progress.notify_all()
            n += 1

    def merging(point):
        global allowed
        with progress:
            allowed += 4  # a few more writes at each point (under the gate, the next one waits in flight)
            progress.notify_all()
            if point == "merging":  # acknowledged during the merge, for certain
                progress.wait_for(lambda: acked >= allowed)

    store.consolidation_hook = merging
    threading.Thread(target=writer, daemon=True).start()
    print("consolidated", store.consolidate(), flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.parametrize("point", ["merged", "replaying", "replayed", "ready", "replaced", "swapped"])
def test_kill_9_at_any_point_of_the_replay_and_swap_keeps_every_acknowledged_write(
    tmp_path: Path, point: str, child_cleanup: list[subprocess.Popen[str]]
) -> None:
    template = fragmented_store(tmp_path / "template" / "c", chunks=4)
    segments = template.shard.info().segments_count
    template.close()
    path = tmp_path / "edge" / "c"
    shutil.copytree(template.path, path)
    child = subprocess.Popen(
        [sys.executable, "-c", CONSOLIDATING_WRITER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "EDGE_TEST_BLOCK_CONSOLIDATION_AT": point},
    )
    child_cleanup.append(child)
    assert child.stdout is not None
    lines: list[str] = []
    for line in child.stdout:
        lines.append(line.strip())
        # The writer thread's "ack n" and the blocked line (stderr, same pipe) can share a line: print writes
        # the text and the newline separately, so "ack 4edge consolidation blocked at ..." happens.
        if "edge consolidation blocked at" in line:
            break
    assert lines[-1].endswith(f"edge consolidation blocked at {point}"), lines[-20:]
    child.kill()
    child.wait()
    lines.extend(line.strip() for line in child.stdout)  # every acknowledgement printed before it died
    acked = [int(n) for line in lines for n in re.findall(r"ack (\d+)", line)]
    assert len(acked) >= 3
    reopened = EdgeVectorStore(path, collection="c", dimension=16, optimize_idle_seconds=None)
    reopened.ensure_collection()
    try:
        for n in acked:
            # An odd batch deletes the even one before it: acknowledged, it is gone; in flight, it may or may not be.
            found = reopened.count("t", f"w-{n}")
            if n % 2 or n + 1 not in acked:
                assert found == 3 or (n % 2 == 0 and found == 0), (n, found)
            else:
                assert found == 0, n
        merged = reopened.shard.info().segments_count < segments
        assert merged == (point in ("replaced", "swapped"))  # the merged copy is served once it was moved in
    finally:
        reopened.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "c"]


def test_deleted_points_waiting_for_a_vacuum_are_remembered_across_a_restart(tmp_path: Path) -> None:
    # The child vacuums once more than 20 % of the points were deleted since the last consolidation; that count was
    # in memory only, so after a restart a shard needed another 20 % deleted before a consolidation vacuumed.
    path = tmp_path / "edge" / "c"
    store = fragmented_store(path, consolidate_idle_seconds=3600)
    try:
        assert store.consolidate()
        assert not store.consolidation_due()
        store.vacuum_min_points = 10
        store.delete_document("t", "doc-0")
        store.delete_document("t", "nothing-here")  # deletes nothing: counts nothing
        store.delete_document("t", "doc-1")
        assert store._deleted_points == 128
        assert store.consolidation_due()
    finally:
        store.close()
    record = json.loads((path / "consolidation.json").read_text())
    assert record["deleted_points"] == 128

    def reopen() -> EdgeVectorStore:
        again = EdgeVectorStore(
            path,
            collection="c",
            dimension=16,
            optimize_chunk_points=64,
            segment_points=128,
            optimize_idle_seconds=None,
            consolidate_idle_seconds=3600,
        )
        again.ensure_collection()
        again.vacuum_min_points = 10
        return again

    again = reopen()
    try:
        assert again._deleted_points == 128
        assert again.consolidation_due()  # by the deletes alone: the layout is as merged as it gets
        assert again.consolidate()
        assert again._deleted_points == 0
        assert again.count("t") == 3 * 64
    finally:
        again.close()
    again = reopen()
    try:
        assert again._deleted_points == 0
        assert not again.consolidation_due()
    finally:
        again.close()


def test_an_interrupted_swap_is_finished_from_the_merged_copy_or_undone(tmp_path: Path) -> None:
    # The swap moves the served shard aside (.c.replaced), then the merged copy (.c.ready) in: a crash between
    # the two leaves no shard directory. The next open takes the merged copy when it is there (it is complete
    # and no write followed it), else puts the served shard back; leftovers are removed either way.
    merged = fragmented_store(tmp_path / "merged" / "c", chunks=2)
    merged.close()
    served = fragmented_store(tmp_path / "served" / "c", chunks=2)
    served.upsert(distinct_points("served-only", 4))
    served.close()
    for leftovers, expected in (
        ({"ready": merged, "replaced": served}, 2 * 64),
        ({"replaced": served}, 2 * 64 + 4),
    ):
        edge = tmp_path / f"edge-{expected}"
        edge.mkdir()
        (edge / ".c.building").mkdir()  # a child's unfinished copy
        for stage, store in leftovers.items():
            shutil.copytree(store.path, edge / f".c.{stage}")
        reopened = EdgeVectorStore(edge / "c", collection="c", dimension=16, optimize_idle_seconds=None)
        reopened.ensure_collection()
        try:
            assert reopened.count("t") == expected
        finally:
            reopened.close()
        assert sorted(p.name for p in edge.iterdir()) == [".lock", "c"]


def test_the_background_optimizer_consolidates_once_writes_pause_while_searches_go_on(tmp_path: Path) -> None:
    store = fragmented_store(
        tmp_path / "edge" / "c", chunks=4, optimize_idle_seconds=0.05, consolidate_idle_seconds=0.3
    )
    optimizer = store._optimizer
    assert optimizer is not None
    failures: list[BaseException] = []
    stop = threading.Event()
    searched = 0

    def searcher() -> None:  # a checker: every search during passes, the child and the swap answers in full
        nonlocal searched
        while not stop.is_set():
            try:
                assert len(store.search("t", distinct_points("doc-1", 64)[0].vector, limit=10)) == 10
                searched += 1
            except BaseException as exc:  # reported below
                failures.append(exc)
                return

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        # Each attempt runs once writes paused; the first may only see passes pending, and one that started
        # between two chunks replays the later chunks onto its copy (unindexed): the passes and the next
        # consolidation take those in.
        for _ in range(50):
            assert optimizer.consolidated.wait(120)
            optimizer.consolidated.clear()
            if store.last_consolidation is not None and store.shard.info().segments_count <= 2:
                break
        assert store.last_consolidation is not None
        assert store.shard.info().segments_count <= 2
    finally:
        stop.set()
        thread.join()
        store.close()
    assert not failures, failures[0]
    assert searched > 0


def test_a_trickle_of_writes_that_never_pauses_still_starts_a_consolidation() -> None:
    # A consolidation started only once writes paused for EDGE_CONSOLIDATE_IDLE_SECONDS: a write every few seconds
    # kept a shard from ever consolidating. Now that writes made during one are replayed, a trickle starts one once
    # it has been wanted for long enough; a heavier stream (more than the replay log would take) still waits.
    started = threading.Event()
    optimizer = edge_module._Optimizer(
        lambda: None,
        idle_seconds=0.01,
        chunk_points=10**6,
        consolidate=lambda cancelled: started.set(),
        consolidate_idle=3600,  # no pause is ever long enough
        consolidate_wait=0.5,
        trickle_points=10**6,
    )
    stop = threading.Event()

    def writer() -> None:
        while not stop.wait(0.02):
            optimizer.wrote(1)

    thread = threading.Thread(target=writer)
    optimizer.start()
    thread.start()
    try:
        assert started.wait(60), "a trickle of writes never let a consolidation start"
    finally:
        stop.set()
        thread.join()
        optimizer.stop()
    heavy = edge_module._Optimizer(
        lambda: None, idle_seconds=0.01, chunk_points=10, consolidate_idle=3600, trickle_points=100
    )
    for _ in range(100):
        heavy.wrote(1)
    assert heavy._trickling(time.monotonic())
    heavy.wrote(256)  # an ingest's batch: more than the replay log should take
    assert not heavy._trickling(time.monotonic())


def test_settings_refuse_a_live_segment_cap_above_the_consolidation_cap(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="EDGE_SEGMENT_POINTS must not exceed EDGE_CONSOLIDATE_SEGMENT_POINTS"
    ):
        make_settings(tmp_path, edge_segment_points=20000, edge_consolidate_segment_points=10000)
    settings = make_settings(tmp_path, edge_consolidate_idle_seconds=0)
    store = EdgeVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    store.ensure_collection()
    try:
        assert store._optimizer is not None
        assert store._optimizer._consolidate is None  # 0: never consolidate, and this process vacuums again
        stored = json.loads((store.path / "edge_config.json").read_text())["optimizers"]
        assert stored["deleted_threshold"] != 1.0
    finally:
        store.close()


def test_the_search_pool_follows_the_segments_on_new_and_existing_shards(tmp_path: Path) -> None:
    # EDGE_SEARCH_THREADS unset: a shard of few segments is searched on the calling thread (no hand-off to a pool
    # and back), a larger one by one pool thread per CPU (the engine's own default was 8 threads on 2 CPUs,
    # contending with the query embedding for the cores).
    import json

    import qdrant_edge as qe

    cpus = len(os.sched_getaffinity(0))
    path = tmp_path / "edge" / "c"
    store = EdgeVectorStore(
        path,
        collection="c",
        dimension=DIM,
        optimize_idle_seconds=None,
        optimize_chunk_points=64,
        segment_points=64,
    )
    store.ensure_collection()
    try:
        # new: no segments yet
        assert json.loads((path / "edge_config.json").read_text())["max_search_threads"] == 1
        rng = np.random.default_rng(5)
        for index in range(8):
            store.upsert(unit_points(rng, f"doc-{index}", 64, DIM))
            store.optimize()
        segments = store.shard.info().segments_count
        assert segments >= edge_module.POOL_MIN_SEGMENTS
    finally:
        store.close()
    assert edge_module.shard_segments(path) == segments
    store = EdgeVectorStore(
        path,
        collection="c",
        dimension=DIM,
        optimize_idle_seconds=None,
        optimize_chunk_points=64,
        segment_points=64,
    )
    store.ensure_collection()  # opened again with its segments: a pool
    store.close()
    assert json.loads((path / "edge_config.json").read_text())["max_search_threads"] == cpus

    # A shard another setting (or the engine's default) created takes it on load.
    other = tmp_path / "edge" / "d"
    dense = {"dense": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)}
    qe.EdgeShard.create(str(other), qe.EdgeConfig(vectors=dense, max_search_threads=cpus + 5)).close()
    store = EdgeVectorStore(other, collection="d", dimension=DIM, optimize_idle_seconds=None)
    store.ensure_collection()
    store.close()
    assert json.loads((other / "edge_config.json").read_text())["max_search_threads"] == 1


def test_search_threads_choice() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert edge_module.search_threads(3, segments=1) == 3  # EDGE_SEARCH_THREADS wins
    assert edge_module.search_threads(0, segments=0) == 1
    assert edge_module.search_threads(0, segments=edge_module.POOL_MIN_SEGMENTS - 1) == 1
    assert edge_module.search_threads(0, segments=edge_module.POOL_MIN_SEGMENTS) == cpus
    assert edge_module.search_threads(0) == cpus


def _search_pool_cpu_ns() -> int:
    """CPU time so far of every qdrant-edge search-pool thread in this process (/proc: exact, in ns)."""
    total = 0
    for task in os.scandir(f"/proc/{os.getpid()}/task"):
        try:
            if Path(task.path, "comm").read_text().startswith("edge-search"):
                total += int(Path(task.path, "schedstat").read_text().split()[0])
        except OSError:  # a thread that exited meanwhile
            continue
    return total


@pytest.mark.parametrize("threads", [1, 2])
def test_edge_search_threads_sizes_the_search_pool_and_one_runs_queries_on_the_calling_thread(
    tmp_path: Path, threads: int
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", edge_search_threads=threads)
    store = EdgeVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    store.ensure_collection()
    try:
        rng = np.random.default_rng(3)
        store.upsert([*unit_points(rng, "a", 200, DIM), *unit_points(rng, "b", 200, DIM)])
        assert json.loads((store.path / "edge_config.json").read_text())["max_search_threads"] == threads
        queries = [point.vector for point in unit_points(rng, "q", 50, DIM)]
        before = _search_pool_cpu_ns()
        for vector in queries:
            assert len(store.search("t", vector, limit=3)) == 3
        pool = _search_pool_cpu_ns() - before
        # One thread: the engine runs the query on the caller (no hand-off to a pool thread and back);
        # more: the pool's threads do the segment reads.
        assert (pool == 0) == (threads == 1)
    finally:
        store.close()
    # A sibling (a re-index's new collection) keeps the setting.
    other = store.sibling("other", DIM)
    other.ensure_collection()
    other.close()
    assert json.loads((other.path / "edge_config.json").read_text())["max_search_threads"] == threads


def unit_points(rng: np.random.Generator, document_id: str, count: int, dim: int, tenant: str = "t") -> list:
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        ChunkPoint(
            tenant_id=tenant,
            document_id=document_id,
            version=1,
            chunk_index=i,
            text=f"{document_id} #{i}",
            vector=vectors[i].tolist(),
            metadata={"n": i},
            content_hash="h",
            model="m",
        )
        for i in range(count)
    ]


def test_an_int8_store_searches_quantized_segments_with_exact_scores_filters_and_deletes(
    tmp_path: Path,
) -> None:
    # EDGE_QUANTIZATION=int8: the HNSW walk scores int8 copies, and the hits are rescored with the float vectors,
    # so scores stay exact cosines (thresholds, fusion and the API see no quantization error).
    dim, rng = 64, np.random.default_rng(7)
    settings = make_settings(tmp_path, edge_quantization="int8")
    store = EdgeVectorStore.from_settings(settings, model_name="m", dimension=dim)
    store._indexing_threshold_kb = (
        1  # index any segment: the quantized HNSW path runs on a few hundred points
    )
    store._optimize_idle = None
    store.ensure_collection()
    try:
        assert store.quantized
        config = json.loads((store.path / "edge_config.json").read_text())
        assert config["quantization_config"]["scalar"]["type"] == "int8"
        a, b = unit_points(rng, "a", 300, dim), unit_points(rng, "b", 300, dim)
        other = unit_points(rng, "x", 100, dim, tenant="other")
        store.upsert(a + b + other)
        assert store.optimize()
        assert store.shard.info().indexed_vectors_count > 0
        assert list(store.path.glob("segments/*/vector_storage-dense/quantized.data"))
        stored = {(p.document_id, p.chunk_index): np.asarray(p.vector) for p in a + b}
        query = rng.normal(size=dim)
        query /= np.linalg.norm(query)
        exact = sorted(((float(v @ query), key) for key, v in stored.items()), reverse=True)
        hits = store.search("t", query.tolist(), limit=5)
        assert [(h.document_id, h.chunk_index) for h in hits] == [key for _, key in exact[:5]]
        for hit, (score, _) in zip(hits, exact, strict=False):
            assert abs(hit.score - score) < 1e-5  # int8 scores are off by ~1e-3: these were rescored
        # The threshold bounds the exact cosine: halfway between the 3rd and 4th best keeps exactly three.
        threshold = (exact[2][0] + exact[3][0]) / 2
        assert len(store.search("t", query.tolist(), limit=5, score_threshold=threshold)) == 3
        hybrid = store.search(
            "t", query.tolist(), limit=5, mode="hybrid", sparse=default_encoder().query("a #1")
        )
        assert hybrid
        assert {h.document_id for h in hybrid} <= {"a", "b"}  # the tenant filter holds on both sides
        store.delete_document("t", "a")
        assert (store.count("t", "a"), store.count("t", "b"), store.count("other")) == (0, 300, 100)
        assert {h.document_id for h in store.search("t", query.tolist(), limit=20)} == {"b"}
    finally:
        store.close()


def test_a_shard_keeps_the_quantization_it_was_created_with(tmp_path: Path) -> None:
    # Changing it would rebuild every segment inside the serving process (holding the GIL): an existing store is
    # searched as it is stored, whatever EDGE_QUANTIZATION says now, and a new one takes the setting.
    path = tmp_path / "edge" / "c"
    plain = EdgeVectorStore(path, collection="c", dimension=DIM, optimize_idle_seconds=None)
    plain.ensure_collection()
    plain.upsert(points("a", 20))
    plain.close()
    reopened = EdgeVectorStore(
        path, collection="c", dimension=DIM, optimize_idle_seconds=None, quantization=True
    )
    reopened.ensure_collection()
    try:
        assert not reopened.quantized
        assert not json.loads((path / "edge_config.json").read_text()).get("quantization_config")
        assert len(reopened.search("t", [1.0, 0.2, 0.1, 0.25], limit=5)) == 5
        new = reopened.sibling("d", DIM)  # a re-index's new collection is created with the setting
        new.ensure_collection()
        try:
            assert new.quantized
        finally:
            new.close()
    finally:
        reopened.close()
    # New shards are quantized by default since stop 17 (docs/benchmarks.md, "Segments x m x hnsw_ef at 100k").
    assert make_settings(tmp_path).edge_quantization == "int8"


def test_consolidation_keeps_an_int8_store_quantized(tmp_path: Path) -> None:
    # The child merges with the shard's stored settings: the merged segments are quantized too, and the swapped-in
    # shard is searched as a quantized one (wider beam, rescored).
    store = fragmented_store(tmp_path / "edge" / "c", consolidate_idle_seconds=3600, quantization=True)
    try:
        assert store.quantized
        hits = top_hits(store)
        assert store.consolidate()
        assert store.shard.info().segments_count <= 2
        assert store.quantized
        assert list(store.path.glob("segments/*/vector_storage-dense/quantized.data"))
        assert store.shard.info().points_count == 5 * 64
        assert top_hits(store) == hits
    finally:
        store.close()


def test_the_optimizer_backlog_counts_dense_vectors_and_is_never_negative(tmp_path: Path) -> None:
    """indexed_vectors_count also counts every BM25 vector (indexed as soon as written) and deleted points until
    a vacuum: ``points - indexed`` was logged as a negative backlog, or 0 while a whole chunk waited."""
    # Numbers read from a shard: 150 points, all in HNSW, all with BM25 terms: 300 indexed vectors; with only
    # 100 having terms, 250, and the 50 without count as waiting (an upper bound).
    assert unindexed_points(150, 300, has_sparse=True) == 0
    assert unindexed_points(150, 250, has_sparse=True) == 50
    assert unindexed_points(256, 256, has_sparse=True) == 256  # one chunk written, only its BM25 vectors
    assert unindexed_points(0, 556, has_sparse=True) == 0  # all deleted, not vacuumed yet
    assert unindexed_points(10, 4, has_sparse=False) == 6
    dim, chunk = 64, 64
    store = EdgeVectorStore(
        tmp_path / "edge" / "c",
        collection="c",
        dimension=dim,
        optimize_idle_seconds=3600,
        optimize_chunk_points=chunk,
        segment_points=256,
    )
    store.upsert_batch = chunk
    store.ensure_collection()
    optimizer = store._optimizer
    assert optimizer is not None
    try:
        assert optimizer.finished.wait(60)  # the start-up pass on the empty shard
        optimizer.finished.clear()
        store.upsert(wide_points("doc", chunk, dim))
        assert optimizer.finished.wait(60), "no optimisation pass after a chunk of points"
        # Every point of the chunk was waiting for its dense index (the old arithmetic said 0: its 64 BM25
        # vectors counted as indexed).
        assert optimizer.largest_backlog == chunk
        assert store.shard.info().indexed_vectors_count == 2 * chunk
    finally:
        store.close()


def test_a_record_written_during_the_copy_does_not_give_the_consolidation_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete during a consolidation's copy writes the consolidation record through a temporary file that it
    renames away: the copy listed it and then found it gone (ENOENT), and the consolidation was given up (a flaky
    concurrent-writer test showed it). Staged here: the temporary file exists when the copy lists the directory
    and disappears at the first file copied."""
    store = fragmented_store(tmp_path / "edge" / "c", consolidate_idle_seconds=3600)
    try:
        temporary = store.path / edge_module.CONSOLIDATION_TEMPORARY
        temporary.write_text("{}", encoding="utf-8")
        copy = edge_module.copy_sparse

        def renamed_away_meanwhile(src: str, dst: str) -> None:
            temporary.unlink(missing_ok=True)
            copy(src, dst)

        monkeypatch.setattr(edge_module, "copy_sparse", renamed_away_meanwhile)
        before = store.shard.info().segments_count
        assert store.consolidate()
        assert store.shard.info().segments_count < before
        assert len(store.search("t", distinct_points("doc-1", 64)[0].vector, limit=10)) == 10
    finally:
        store.close()
