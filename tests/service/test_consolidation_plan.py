"""When a due consolidation is worth starting (service.app.store.edge: `planned_merges`, `merge_worthwhile`): the
engine's merge planner, ported, says what a child would merge; a merged segment is left alone while the segments a
merge would add to it are few; a consolidation that would merge nothing starts no child. Then the same through real
consolidation children: a trickle of writes leaves the merged segment's directory in place for several sealed
segments, and a kill -9 right after a skipped consolidation loses no acknowledged write nor the decision."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.app.core.metrics import EDGE_CONSOLIDATIONS
from service.app.store import edge as edge_module
from service.app.store.edge import EdgeVectorStore, merge_worthwhile, planned_merges
from tests.service.test_edge_store import REPO, child_cleanup, distinct_points, fragmented_store

__all__ = ["child_cleanup"]  # the fixture, imported for the kill -9 test

CAP = 102_400
SEALED = 4_096  # what the serving process seals at the default EDGE_OPTIMIZE_CHUNK_POINTS
LIVE = 10_240  # EDGE_SEGMENT_POINTS: the serving process never builds a larger segment


def worthwhile(sizes: list[int]) -> bool:
    return merge_worthwhile(
        sizes,
        cap=CAP,
        segment_points=LIVE,
        leave_share=edge_module.CONSOLIDATE_LEAVE_SHARE,
        max_segments=edge_module.CONSOLIDATE_MAX_SEGMENTS,
    )


def test_the_ported_planner_follows_the_engine_rules() -> None:
    # merge_optimizer.rs's own examples: a lone batch of 2 would not reduce the count; 3, or two batches, do.
    assert planned_merges([1, 2], 100) == []
    assert planned_merges([1, 2, 3], 100) == [[0, 1, 2]]
    assert planned_merges([10, 10, 60, 60], 100) == [[0, 1, 2]]
    assert planned_merges([40, 40, 40, 40], 100) == [[0, 1], [2, 3]]  # a batch of 2 with a second one
    assert planned_merges([40, 40, 40, 80], 100) == []  # ... and without one
    # Smallest first, while the sum stays below the cap (not at it); the order of the input does not matter.
    assert planned_merges([50, 1, 2, 3], 7) == [[1, 2, 3]]
    assert planned_merges([50, 1, 2, 3], 6) == []  # 1 + 2 held, 3 alone reaches the cap
    assert planned_merges([3, 50, 2, 1], 100) == [[3, 2, 0, 1]]
    # Stop 19's runs: 13 segments of ~7.7k at 100k merge into one; beside a merged segment of 100k, the
    # appendable one and one sealed segment merge nothing (its first run at >= ~92k copied the shard for that).
    assert planned_merges([0] + [7_700] * 13, CAP) == [list(range(14))]
    assert planned_merges([0, SEALED, 100_000], CAP) == []
    assert planned_merges([0, SEALED, SEALED, 95_000], CAP) == [[0, 1, 2]]


def test_a_merged_segment_is_left_alone_while_the_new_points_are_few() -> None:
    # The first consolidation (no merged segment yet) merges as before.
    assert worthwhile([0] + [7_700] * 8)
    # 60k merged: one sealed segment beside it merges nothing; two, three are few (under a quarter of 60k) and the
    # shard keeps at most 5 segments: left alone. Stop 19 rewrote the 60k segment for each of them.
    assert not worthwhile([0, SEALED, 60_000])
    assert not worthwhile([0, SEALED, SEALED, 60_000])
    assert not worthwhile([0, SEALED, SEALED, SEALED, 60_000])
    # A quarter of it: merged in (graph reused, the new points inserted once).
    assert worthwhile([0, SEALED, SEALED, SEALED, 15_000])
    # More than 5 segments: merged whatever the share (what a search visits stays bounded).
    assert worthwhile([0, SEALED, SEALED, SEALED, SEALED, 100_000 - 4 * SEALED])
    assert not worthwhile([SEALED, SEALED, SEALED, SEALED, 100_000 - 4 * SEALED])  # the same, one fewer
    # At >= ~92k the planner leaves the merged segment out (the cap): the small ones merge among themselves.
    assert worthwhile([0, SEALED, SEALED, 95_000])
    # ... and a segment they merged into is left alone in turn once it is large beside them.
    assert not worthwhile([0, SEALED, 20_000, 95_000])
    assert worthwhile([0, SEALED, SEALED, 12_000, 95_000])
    # Nothing at all: a lone appendable segment, or one segment.
    assert not worthwhile([0])
    assert not worthwhile([0, 60_000])


def segment_sizes(store: EdgeVectorStore) -> dict[str, int]:
    """Points of each segment as stored, by directory name (after a flush: the engine writes them then)."""
    store.shard.flush()
    names = sorted(entry.name for entry in os.scandir(store.path / "segments") if entry.is_dir())
    sizes = edge_module.stored_segment_points(store.path, store.dimension)
    assert sizes is not None
    assert len(sizes) == len(names) == store.shard.info().segments_count
    by_name = {}
    for name in names:
        matrix = store.path / "segments" / name / "vector_storage-dense" / "matrix.dat"
        by_name[name] = matrix.stat().st_size // (store.dimension * 4) if matrix.is_file() else -1
    return by_name


def largest(store: EdgeVectorStore) -> tuple[str, int]:
    name, size = max(segment_sizes(store).items(), key=lambda item: item[1])
    return name, size


def test_a_trickle_leaves_the_merged_segment_alone_until_the_new_points_are_a_share_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 16 x 64 points merged into one segment of 1,024 (+ the appendable one); then a trickle: 64 points sealed into
    # their own segment by each optimizer pass, and a consolidation after each (due: one segment more than the last
    # one left). Stop 19's planner rewrote the merged segment every time; now the first three sealed segments stay
    # beside it (192 points, under a quarter of 1,024, 5 segments) and no child is started for them.
    store = fragmented_store(
        tmp_path / "edge" / "c", chunks=16, consolidate_idle_seconds=3600, consolidate_segment_points=4096
    )
    children: list[object] = []
    popen = subprocess.Popen

    def counted(*args: object, **kwargs: object) -> object:
        children.append(args)
        return popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(edge_module.subprocess, "Popen", counted)
    skipped = EDGE_CONSOLIDATIONS.labels(outcome="skipped")._value.get()
    try:
        assert store.consolidate()  # the first merge: no merged segment yet
        assert len(children) == 1
        merged, size = largest(store)
        assert size == 16 * 64
        for round_ in range(1, 4):
            store.upsert(distinct_points(f"late-{round_}", 64))
            store.optimize()
            assert store.consolidation_due()
            assert not store.consolidate()
            assert largest(store) == (merged, 16 * 64)  # the same directory, not rewritten
            assert len(children) == 1  # nothing copied, no child
            assert store.skipped_consolidations == round_
            assert not store.consolidation_due()  # settled until another segment comes
            assert store.count("t") == (16 + round_) * 64
        assert store.shard.info().segments_count == 5
        assert EDGE_CONSOLIDATIONS.labels(outcome="skipped")._value.get() == skipped + 3
        # A fourth sealed segment: 6 segments, past the bound: merged in, once, with every point.
        store.upsert(distinct_points("late-4", 64))
        store.optimize()
        assert store.consolidate()
        assert len(children) == 2
        name, size = largest(store)
        assert name != merged
        assert size == 20 * 64
        assert store.shard.info().segments_count == 2
        for n in range(1, 5):
            point = distinct_points(f"late-{n}", 64)[5]
            top = store.search("t", point.vector, limit=1)
            assert [(h.document_id, h.chunk_index) for h in top] == [(point.document_id, point.chunk_index)]
    finally:
        store.close()


def test_the_background_optimizer_under_a_trickle_leaves_the_merged_segment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same trickle through the service's own trigger: the optimizer thread seals each 64 points in a pass and
    # tries a consolidation once writes pause (0.2 s here); the merged segment survives three of them.
    path = tmp_path / "edge" / "c"
    template = fragmented_store(
        path, chunks=16, consolidate_idle_seconds=3600, consolidate_segment_points=4096
    )
    try:
        assert template.consolidate()
        merged = largest(template)
    finally:
        template.close()
    children: list[object] = []
    popen = subprocess.Popen

    def counted(*args: object, **kwargs: object) -> object:
        children.append(args)
        return popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(edge_module.subprocess, "Popen", counted)
    store = EdgeVectorStore(
        path,
        collection="c",
        dimension=16,
        optimize_chunk_points=64,
        segment_points=128,
        optimize_idle_seconds=0.05,
        consolidate_idle_seconds=0.2,
        consolidate_segment_points=4096,
    )
    store.ensure_collection()
    try:
        optimizer = store._optimizer
        assert optimizer is not None
        assert optimizer.consolidated.wait(120)  # the start-up attempt: the record says settled
        assert optimizer.consolidations == 1
        assert store.skipped_consolidations == 0
        for round_ in range(1, 5):
            optimizer.consolidated.clear()
            store.upsert(distinct_points(f"late-{round_}", 64))  # a chunk: a pass seals it, then the attempt
            assert optimizer.consolidated.wait(120)
            assert optimizer.consolidations == 1 + round_
            if round_ < 4:
                assert store.skipped_consolidations == round_
                assert largest(store) == merged
                assert children == []
        assert len(children) == 1  # the fourth: 6 segments, merged in once
        assert largest(store)[1] == 20 * 64
        assert store.count("t") == 20 * 64
    finally:
        store.close()


def test_deletes_past_the_vacuum_share_still_start_a_consolidation_the_layout_alone_would_skip(
    tmp_path: Path,
) -> None:
    store = fragmented_store(
        tmp_path / "edge" / "c", chunks=16, consolidate_idle_seconds=3600, consolidate_segment_points=4096
    )
    try:
        assert store.consolidate()
        store.upsert(distinct_points("late", 64))
        store.optimize()
        assert not store.consolidate()  # skipped: one sealed segment beside the merged one
        store.vacuum_min_points = 10
        for n in range(4):
            store.delete_document("t", f"doc-{n}")  # 256 of 1,088: past the 20 % the child vacuums at
        assert store.consolidation_due()
        assert store.consolidate()
        assert store.count("t") == 12 * 64 + 64
    finally:
        store.close()


SKIPPING_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from service.app.store.edge import EdgeVectorStore
    from tests.service.test_edge_store import distinct_points

    store = EdgeVectorStore(Path(sys.argv[1]), collection="c", dimension=16, optimize_chunk_points=64,
                            segment_points=128, optimize_idle_seconds=None, consolidate_idle_seconds=3600,
                            consolidate_segment_points=4096)
    store.ensure_collection()
    store.upsert(distinct_points("late", 64))
    store.optimize()
    print("ack late", flush=True)
    print("consolidated", store.consolidate(), flush=True)  # blocks at "skipped" (EDGE_TEST_BLOCK_...)
    """
)


def test_kill_9_right_after_a_skipped_consolidation_keeps_every_write_and_the_decision(
    tmp_path: Path, child_cleanup: list[subprocess.Popen[str]]
) -> None:
    path = tmp_path / "edge" / "c"
    template = fragmented_store(
        path, chunks=16, consolidate_idle_seconds=3600, consolidate_segment_points=4096
    )
    try:
        assert template.consolidate()
        merged = largest(template)
    finally:
        template.close()
    child = subprocess.Popen(
        [sys.executable, "-c", SKIPPING_WRITER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, edge_module.BLOCK_AT_ENV: "skipped"},
    )
    child_cleanup.append(child)
    assert child.stdout is not None
    lines: list[str] = []
    for line in child.stdout:
        lines.append(line.strip())
        if line.startswith("edge consolidation blocked at"):
            break
    assert lines[-1] == "edge consolidation blocked at skipped", lines[-20:]
    assert "ack late" in lines
    child.kill()
    child.wait()
    reopened = fragmented_store(
        path, chunks=0, consolidate_idle_seconds=3600, consolidate_segment_points=4096
    )
    try:
        assert reopened.count("t") == 17 * 64  # the acknowledged trickle is there
        assert largest(reopened) == merged  # the merged segment as it was
        assert not reopened.consolidation_due()  # the skip was recorded before the kill: not decided again
        for n in range(3):  # three more sealed segments: past the bound, merged in with every point
            reopened.upsert(distinct_points(f"more-{n}", 64))
            reopened.optimize()
            reopened.consolidate()
        assert reopened.shard.info().segments_count == 2
        assert largest(reopened)[1] == 20 * 64
        assert reopened.count("t") == 20 * 64
    finally:
        reopened.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "c"]
