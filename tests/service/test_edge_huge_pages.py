"""The edge shard's RAM-resident memory collapsed into huge pages (service.app.store.edge SHARD_HUGE_PAGES,
service.app.store.hugepages; docs/benchmarks.md "Huge pages for the shard, stop 21"): the anonymous memory a load
of the shard makes resident is handed to ``MADV_COLLAPSE`` on a thread of its own, at open and again when a
consolidation swaps its merged copy in, and nothing is asked for where THP is unavailable; searches answer the
same either way. The kernel is a recording fake here (what the real one does to such memory, and its byte-for-byte
safety, is tests/service/test_hugepages.py's), so these hold on any host."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app.store import edge as edge_module
from service.app.store import hugepages
from service.app.store.edge import EdgeVectorStore
from tests.service.test_edge_layout import DIM, every_point_found, fragmented
from tests.service.test_edge_store import distinct_points


class RecordingKernel:
    """libc as the collapse sees it: every madvise is recorded (with the thread that asked) and succeeds."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int, int, str]] = []

    def madvise(self, start: int, length: int, advice: int) -> int:
        self.asked.append((start, length, advice, threading.current_thread().name))
        ctypes.set_errno(0)
        return 0

    def malloc_trim(self, pad: int) -> int:
        # the real one (glibc): the heap's free pages go back to the kernel, so memory a load refills is seen
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        return trim(pad) if trim is not None else 0


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RecordingKernel:
    enabled = tmp_path / "thp-enabled"
    enabled.write_text("always [madvise] never\n")
    monkeypatch.setattr(hugepages, "THP_ENABLED", enabled)
    fake = RecordingKernel()
    monkeypatch.setattr(hugepages, "_libc", lambda: fake)
    return fake


def reopened(path: Path, documents: int) -> EdgeVectorStore:
    """The store at ``path`` (first made of ``documents`` x 64 fragmented points, unless 0) opened as a restart
    opens it: a new shard is created (nothing loaded to collapse), an existing one is loaded."""
    if documents:
        fragmented(path, documents, consolidate_segment_points=256).close()
    store = EdgeVectorStore(
        path,
        collection="c",
        dimension=DIM,
        optimize_chunk_points=64,
        segment_points=128,
        optimize_idle_seconds=None,
        consolidate_idle_seconds=3600,
        consolidate_segment_points=256,
    )
    store.ensure_collection()
    return store


def _joined(store: EdgeVectorStore) -> hugepages.HugePages:
    if store._collapsing is not None:
        store._collapsing.join(timeout=60)
        assert not store._collapsing.is_alive()
    return store.huge_pages


def test_the_memory_a_shard_load_makes_resident_is_collapsed_on_a_thread_and_searches_answer_the_same(
    tmp_path: Path, kernel: RecordingKernel
) -> None:
    # 6,000 points of 384 dimensions, int8: the RAM-resident quantized copies alone fill whole 2 MiB extents.
    path = tmp_path / "edge" / "c"
    options = {"dimension": 384, "optimize_idle_seconds": None, "quantization": True}
    store = EdgeVectorStore(path, collection="c", optimize_chunk_points=6000, segment_points=6000, **options)  # type: ignore[arg-type]
    store.ensure_collection()
    probes = distinct_points("doc", 6000, 384)
    try:
        store.upsert(probes)
        store.optimize()
        assert store.quantized
        before = [
            [(h.chunk_index, h.score) for h in store.search("t", p.vector, limit=5)] for p in probes[::600]
        ]
    finally:
        store.close()
    kernel.asked.clear()

    store = EdgeVectorStore(path, collection="c", **options)  # type: ignore[arg-type]
    store.ensure_collection()
    try:
        result = _joined(store)
        assert result.failed is None, result
        # The real /proc scan found the memory the load filled, and each extent was asked for once, whole, with
        # MADV_COLLAPSE, on the store's collapse thread (not the opening one: start-up does not wait for it).
        assert result.tried >= 1
        assert len(result.extents) == result.tried
        asked = [start for start, _, _, _ in kernel.asked]
        assert asked == result.extents
        assert len(set(asked)) == len(asked)
        assert all(length == hugepages.HUGE_PAGE for _, length, _, _ in kernel.asked)
        assert all(advice == hugepages.MADV_COLLAPSE for _, _, advice, _ in kernel.asked)
        assert {thread for _, _, _, thread in kernel.asked} == {"edge-huge-pages-c"}
        assert all(start % hugepages.HUGE_PAGE == 0 for start in asked)
        after = [
            [(h.chunk_index, h.score) for h in store.search("t", p.vector, limit=5)] for p in probes[::600]
        ]
        assert after == before
    finally:
        store.close()


def test_a_consolidation_swap_collapses_the_merged_shards_memory_again(
    tmp_path: Path, kernel: RecordingKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory each load fills is found by the real scan (above); here the loads are of a small shard, so the
    # scan is widened to report one extent of memory filled inside each load, to see where the collapse happens.
    loads: list[Path] = []
    real_new_memory = hugepages.new_memory

    @contextlib.contextmanager
    def one_extent_per_load(result: hugepages.HugePages) -> Iterator[list[int]]:
        with real_new_memory(result) as extents:
            yield extents
        loads.append(Path(edge_path))
        extents.append(hugepages.HUGE_PAGE * (len(loads) + 1000))

    edge_path = tmp_path / "edge" / "c"
    fragmented(edge_path, 8, consolidate_segment_points=256).close()
    monkeypatch.setattr(hugepages, "new_memory", one_extent_per_load)
    store = reopened(edge_path, 0)
    try:
        opened = _joined(store)
        assert len(loads) == 1
        assert opened.extents == [hugepages.HUGE_PAGE * 1001]
        before = store.shard.info().segments_count
        assert store.consolidate()
        assert store.shard.info().segments_count < before
        swapped = _joined(store)
        # The merged copy's load was wrapped and its memory collapsed (a new record: the old shard's is gone).
        assert len(loads) == 2
        assert swapped is not opened
        assert swapped.extents == [hugepages.HUGE_PAGE * 1002]
        assert [start for start, _, _, _ in kernel.asked] == [
            hugepages.HUGE_PAGE * 1001,
            hugepages.HUGE_PAGE * 1002,
        ]
        assert every_point_found(store, 8)
    finally:
        store.close()


@pytest.mark.parametrize("unavailable", ["thp-never", "no-libc"])
def test_nothing_is_asked_where_huge_pages_are_unavailable_and_the_store_serves_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unavailable: str
) -> None:
    if unavailable == "thp-never":
        enabled = tmp_path / "thp-enabled"
        enabled.write_text("always madvise [never]\n")
        monkeypatch.setattr(hugepages, "THP_ENABLED", enabled)
        monkeypatch.setattr(hugepages, "_libc", lambda: RecordingKernel())
    else:  # not Linux (or no libc): hugepages._libc() is None
        monkeypatch.setattr(hugepages, "_libc", lambda: None)
    monkeypatch.setattr(hugepages, "resident_pages", lambda *a: pytest.fail("scanned memory without THP"))
    store = reopened(tmp_path / "edge" / "c", 4)
    try:
        assert store._collapsing is None
        assert store.huge_pages == hugepages.HugePages()
        assert store.consolidate()
        assert store._collapsing is None
        assert store.huge_pages.tried == 0
        assert every_point_found(store, 4)
    finally:
        store.close()


def test_the_collapse_can_be_switched_off(
    tmp_path: Path, kernel: RecordingKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_module, "SHARD_HUGE_PAGES", False)
    monkeypatch.setattr(hugepages, "new_memory", _always_one_extent)
    store = reopened(tmp_path / "edge" / "c", 2)
    try:
        assert store._collapsing is None
        assert kernel.asked == []
        assert every_point_found(store, 2)
    finally:
        store.close()


@contextlib.contextmanager
def _always_one_extent(result: hugepages.HugePages) -> Iterator[list[int]]:
    yield [hugepages.HUGE_PAGE * 7]
