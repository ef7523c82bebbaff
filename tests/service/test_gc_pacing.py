"""The orphan collector works in slices and holds nothing between them, and keeps its guarantees while sliced.

A pass over the embedded store reads it in pages and calls its pacer between pages (service.app.store.gc). Here the
pacer of a real pass over a real qdrant-edge shard stops at its first call until another thread has searched,
written a new version and committed it: that only completes if the pass holds no gate, lock or registry
transaction between slices. Afterwards the pass must have removed exactly the orphans (a superseded version, a
write that died two hours ago) and spared the live version and the write that ran in the middle of it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from service.app.store.edge import VERSIONS_PAGE, EdgeVectorStore
from service.app.store.gc import CollectionStopped, GcReport, Pacer, collect_orphans, now_version
from service.app.store.registry import DocumentRegistry
from service.app.store.vectors import ChunkPoint

DIM = 4
WAIT = 60.0  # seconds before a stuck hand-off fails the test instead of hanging it


def points(document_id: str, version: int, count: int) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            "t", document_id, version, i, f"{document_id} chunk {i}", [1.0, 0.5, i % 7, 1.0], {}, "h", "m"
        )
        for i in range(count)
    ]


def activate(registry: DocumentRegistry, document_id: str, version: int, expected: int | None) -> None:
    registry.activate(
        "t",
        document_id,
        expected_version=expected,
        version=version,
        content_hash="h",
        metadata={},
        content_type="text/plain",
        chunk_count=1,
    )


class BlockingPacer(Pacer):
    """A pacer whose first call waits until the test has done its work beside the paused pass."""

    def __init__(self) -> None:
        super().__init__(minimum=0.0)
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __call__(self) -> None:
        if not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(WAIT), "the test never resumed the collector"
        super().__call__()


def test_a_paced_pass_lets_searches_and_writes_through_between_slices_and_removes_only_orphans(
    tmp_path: Path,
) -> None:
    store = EdgeVectorStore(
        tmp_path / "edge" / "c", collection="c", dimension=DIM, optimize_idle_seconds=None
    )
    store.ensure_collection()
    registry = DocumentRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.migrate()
    try:
        now = now_version()
        live, superseded, dead = now - 2_000_000, now - 3_000_000, now - 7_200_000_000
        store.upsert(points("live", live, 2 * VERSIONS_PAGE))  # the scan spans several pages
        store.upsert(points("live", superseded, 300))  # lower than the active version: garbage at once
        store.upsert(points("dead", dead, 200))  # never published, two hours old: past the grace
        activate(registry, "live", live, None)

        pacer = BlockingPacer()
        result: list[GcReport] = []
        collector = threading.Thread(
            target=lambda: result.append(collect_orphans(registry, store, grace_seconds=3600, pause=pacer))
        )
        collector.start()
        assert pacer.paused.wait(WAIT), "the pass never paused between slices"
        # Mid-pass, from another thread: a search, and a whole write (points first, then its commit).
        hits = store.search("t", [1.0, 0.5, 0.0, 1.0], limit=3)
        assert len(hits) == 3
        late = now_version()
        store.upsert(points("late", late, 50))
        activate(registry, "late", late, None)
        pacer.resume.set()
        collector.join(WAIT)
        assert not collector.is_alive()

        (report,) = result
        assert (report.versions_removed, report.points_removed) == (2, 500)
        assert pacer.slices >= 2  # it did pause between its pages, not only once
        assert store.count("t", "live") == 2 * VERSIONS_PAGE
        assert store.count("t", "dead") == 0
        assert store.count("t", "late") == 50
        assert {(v.document_id, v.version) for v in store.versions()} == {("live", live), ("late", late)}
    finally:
        registry.close()
        store.close()


def test_a_stopped_pass_ends_at_its_next_slice_without_removing_anything_more(tmp_path: Path) -> None:
    # Shutdown sets the stop event: the paced pass (tens of seconds at 100k) must end at once, not run on.
    store = EdgeVectorStore(
        tmp_path / "edge" / "c", collection="c", dimension=DIM, optimize_idle_seconds=None
    )
    store.ensure_collection()
    registry = DocumentRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.migrate()
    try:
        store.upsert(points("dead", now_version() - 7_200_000_000, 2 * VERSIONS_PAGE))
        stop = threading.Event()
        stop.set()
        with pytest.raises(CollectionStopped):
            collect_orphans(registry, store, grace_seconds=3600, pause=Pacer(stop=stop))
        assert store.count("t", "dead") == 2 * VERSIONS_PAGE  # stopped during the scan: nothing judged yet
    finally:
        registry.close()
        store.close()


def test_pending_versions_are_the_inactive_ones_written_within_the_grace_and_not_older_than_the_active_one() -> (
    None
):
    """What reconcile reports as pending_collection (docs/runbooks.md): the grace is measured from the version's
    write, not from a delete or a replacement; a version older than the active one is an orphan at once."""
    from service.app.store.gc import now_version
    from service.app.store.vectors import PointVersion

    now = now_version()
    minute, day = 60 * 1_000_000, 86_400 * 1_000_000
    stored = [
        PointVersion("t", "replaced", now - 2 * minute, 3),  # replaced a minute later: an orphan at once
        PointVersion("t", "replaced", now - minute, 3),  # the active version
        PointVersion("t", "in-flight", now - minute, 2),  # newer than the active one: a write in flight
        PointVersion("t", "in-flight", now - day, 2),  # the active version
        PointVersion("t", "deleted-old", now - day, 4),  # written a day ago, deleted just now: an orphan
        PointVersion("t", "deleted-new", now - minute, 5),  # written and deleted within the grace: pending
    ]
    active = {("t", "replaced"): now - minute, ("t", "in-flight"): now - day}

    class Registry:
        def active_version_pairs(self, pairs: object) -> dict[tuple[str, str], int]:
            return active

    class Vectors:
        def versions(self, *, pause: object = None) -> list[PointVersion]:
            return stored

    orphans: list[PointVersion] = []
    pending: list[PointVersion] = []
    collect_orphans(
        Registry(),  # type: ignore[arg-type]
        Vectors(),  # type: ignore[arg-type]
        grace_seconds=3600,
        dry_run=True,
        pause=lambda: None,
        on_orphan=orphans.append,
        on_pending=pending.append,
    )
    assert [(v.document_id, v.version) for v in orphans] == [
        ("replaced", now - 2 * minute),
        ("deleted-old", now - day),
    ]
    assert [(v.document_id, v.version) for v in pending] == [
        ("in-flight", now - minute),
        ("deleted-new", now - minute),
    ]
