"""The int8 query session's memory collapsed into transparent huge pages (service.app.store.hugepages)."""

from __future__ import annotations

import errno
import mmap
import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.app.core.config import Settings
from service.app.store import hugepages
from service.app.store.embedder import QUERY_INT8_FILE, FastEmbedEmbedder
from service.app.store.hugepages import (
    HUGE_PAGE,
    MIN_NEW_PAGES,
    MIN_PRESENT_PAGES,
    PAGES_PER_HUGE,
    anonymous_ranges,
    grown_extents,
    huge_page_bytes,
    huge_pages_for_new_memory,
    resident_pages,
    thp_mode,
)

_NO_FREE_HUGE_PAGE = {errno.ENOMEM, errno.EAGAIN}


def _collapse_supported() -> bool:
    """Whether this host can collapse: THP not ``never`` and Linux 6.1+ (MADV_COLLAPSE)."""
    release = os.uname().release.split("-")[0].split(".")
    return thp_mode() in ("always", "madvise") and tuple(int(part) for part in release[:2]) >= (6, 1)


class UnverifiedOnThisHost(UserWarning):
    """The host's kernel did not collapse (THP ``never``, no MADV_COLLAPSE, or no free 2 MiB page): the test
    checked what it could and says so in the warnings summary instead of passing silently."""


def _check_kernel_answer(result: hugepages.HugePages, *, min_tried: int, what: str) -> str:
    """Assert what holds on every host for ``result`` of a real collapse and return the branch that ran
    (``collapsed``, ``refused`` or ``unsupported``); any branch but ``collapsed`` is reported as a warning.

    The size assertions of the ``collapsed`` branch stay in the callers; the selection and bookkeeping that run
    on every host whatever the kernel answers are also checked with a fake kernel in
    ``test_every_whole_extent_the_block_filled_is_asked_for_once_and_counted``."""
    assert result.failed is None, result
    # every extent asked for is either collapsed or counted by its errno: nothing is lost or counted twice
    assert len(result.extents) + sum(result.refused.values()) == result.tried, result
    if not _collapse_supported():
        assert result.tried == 0, result
        assert result.extents == [], result
        assert result.refused == {}, result
        branch = "unsupported"
        reason = f"THP {thp_mode()!r}, kernel {os.uname().release}: nothing was asked for (checked)"
    else:
        assert result.tried >= min_tried, result  # every whole extent that was filled was asked for
        # A loaded host may have no free 2 MiB page at that moment (the kernel's answer, not a failure of ours).
        assert set(result.refused) <= _NO_FREE_HUGE_PAGE, result.refused
        if not result.refused:
            return "collapsed"
        branch = "refused"
        reason = f"the kernel refused {result.refused} of {result.tried} extents (no free 2 MiB page)"
    warnings.warn(
        UnverifiedOnThisHost(f"{what}: branch {branch!r}: {reason}; the huge-page sizes were not checked")
    )
    return branch


def _private_anonymous(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _address(region: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(region))


def test_grown_extents_are_the_ones_the_block_filled() -> None:
    before = {0: 0, HUGE_PAGE: PAGES_PER_HUGE, 2 * HUGE_PAGE: MIN_PRESENT_PAGES - MIN_NEW_PAGES + 1}
    after = {
        0: PAGES_PER_HUGE,  # filled by the block: collapsed
        HUGE_PAGE: PAGES_PER_HUGE,  # full before: someone else's memory, left alone
        2 * HUGE_PAGE: MIN_PRESENT_PAGES,  # full now, but the block added too little
        3 * HUGE_PAGE: MIN_PRESENT_PAGES - 1,  # new but sparse: collapsing would make RSS of its holes
        4 * HUGE_PAGE: MIN_PRESENT_PAGES,  # a new mapping, full enough
    }
    assert grown_extents(before, after) == [0, 4 * HUGE_PAGE]


def test_resident_pages_counts_touched_pages_of_a_private_anonymous_mapping() -> None:
    region = _private_anonymous(4 * HUGE_PAGE)
    start = _address(region)
    extent = -(-start // HUGE_PAGE) * HUGE_PAGE
    assert (start, start + 4 * HUGE_PAGE) in anonymous_ranges()
    assert resident_pages([(start, start + 4 * HUGE_PAGE)])[extent] == 0
    offset = extent - start
    for page in range(0, HUGE_PAGE, 4096 * 2):  # every other page of one whole extent
        region[offset + page] = 1
    assert resident_pages([(start, start + 4 * HUGE_PAGE)])[extent] == PAGES_PER_HUGE // 2
    region.close()
    # a mapping past MAX_SCANNED_MAPPING (a runtime's reservation) is not read at all
    assert resident_pages([(HUGE_PAGE, HUGE_PAGE + hugepages.MAX_SCANNED_MAPPING + HUGE_PAGE)]) == {}


def test_memory_filled_inside_the_block_is_collapsed_and_keeps_its_bytes() -> None:
    with huge_pages_for_new_memory() as result:
        region = _private_anonymous(6 * HUGE_PAGE)
        data = np.random.default_rng(7).integers(0, 255, 6 * HUGE_PAGE, dtype=np.uint8).tobytes()
        region[:] = data
    start = _address(region)
    ours = [extent for extent in result.extents if start <= extent < start + 6 * HUGE_PAGE]
    if _check_kernel_answer(result, min_tried=5, what="6 filled extents") == "collapsed":
        assert len(ours) >= 5
        assert huge_page_bytes(ours) >= 5 * HUGE_PAGE
    assert region[:] == data  # the same bytes, whatever their pages
    region.close()


def test_nothing_is_done_where_thp_is_never(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    enabled = tmp_path / "enabled"
    enabled.write_text("always madvise [never]\n")
    monkeypatch.setattr(hugepages, "THP_ENABLED", enabled)
    monkeypatch.setattr(hugepages, "resident_pages", lambda *a: pytest.fail("scanned memory under THP never"))
    with huge_pages_for_new_memory() as result:
        region = _private_anonymous(4 * HUGE_PAGE)
        region[:] = b"\1" * (4 * HUGE_PAGE)
    assert result.extents == []
    assert result.tried == 0
    region.close()
    assert thp_mode(enabled) == "never"
    assert thp_mode(tmp_path / "missing") is None


def test_the_int8_query_session_runs_on_huge_pages_with_the_same_vectors(
    model_dir: Path, tmp_path: Path
) -> None:
    embedder = FastEmbedEmbedder.from_settings(
        Settings(
            embedding_model_path=model_dir, embedding_cache_dir=tmp_path, embedding_query_precision="int8"
        )
    )
    huge = embedder.query_huge_pages
    # ~65-75 MB are asked for (weights, word-embedding table) where malloc placed them in fresh pages; how much
    # depends on the heap's layout, so the bound is loose. Later frees may split a few again.
    if _check_kernel_answer(huge, min_tried=10, what="int8 query session") == "collapsed":
        assert huge.collapsed_bytes >= 20 * 2**20, huge
        assert huge_page_bytes(huge.extents) >= 8 * 2**20, huge
    # A session of the same graph and options built without the collapse computes the same numbers, bit for bit.
    plain = ort.InferenceSession(
        str(model_dir / QUERY_INT8_FILE),
        sess_options=FastEmbedEmbedder._session_options(1),
        providers=["CPUExecutionProvider"],
    )
    tokenizer = embedder._model.model.tokenizer
    for text in ["change a file's owner", "how do I list the open ports of a process", "x"]:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        expected = plain.run(["last_hidden_state"], feeds)[0]
        assert np.array_equal(embedder._query_model().run(["last_hidden_state"], feeds)[0], expected)
    # a documents-only embedder builds (and collapses) nothing until a query comes
    worker = FastEmbedEmbedder.from_settings(
        Settings(
            embedding_model_path=model_dir, embedding_cache_dir=tmp_path, embedding_query_precision="int8"
        ),
        queries=False,
    )
    assert worker.query_huge_pages.extents == []
    worker.embed_query("change a file's owner")
    assert worker.query_huge_pages.tried == len(worker.query_huge_pages.extents) or not _collapse_supported()


def test_a_refused_collapse_is_counted_by_its_errno_and_leaves_the_memory_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ctypes

    enabled = tmp_path / "enabled"
    enabled.write_text("always [madvise] never\n")
    monkeypatch.setattr(hugepages, "THP_ENABLED", enabled)

    class Refusing:
        calls: list[tuple[int, int, int]] = []

        def madvise(self, start: int, length: int, advice: int) -> int:
            self.calls.append((start, length, advice))
            ctypes.set_errno(errno.ENOMEM)  # what the kernel says with no free 2 MiB page
            return -1

        def malloc_trim(self, pad: int) -> int:
            return 1

    fake = Refusing()
    monkeypatch.setattr(hugepages, "_libc", lambda: fake)
    with huge_pages_for_new_memory() as result:
        region = _private_anonymous(4 * HUGE_PAGE)
        region[:] = b"\2" * (4 * HUGE_PAGE)
    assert result.extents == []
    assert result.tried >= 3
    assert result.refused == {errno.ENOMEM: result.tried}
    assert all(length == HUGE_PAGE and advice == hugepages.MADV_COLLAPSE for _, length, advice in fake.calls)
    assert region[:] == b"\2" * (4 * HUGE_PAGE)
    region.close()


def test_the_document_session_is_collapsed_only_where_it_also_runs_the_queries(
    model_dir: Path, tmp_path: Path
) -> None:
    def build(precision: str) -> FastEmbedEmbedder:
        return FastEmbedEmbedder.from_settings(
            Settings(
                embedding_model_path=model_dir,
                embedding_cache_dir=tmp_path,
                embedding_query_precision=precision,
            )
        )

    fp32, int8 = build("fp32"), build("int8")
    # int8: the float32 session only embeds documents; start-up skips its collapse
    assert int8.document_huge_pages.tried == 0
    huge = fp32.document_huge_pages
    # fp32 queries (production images) run the float32 session: its ~90 MB collapsed
    if _check_kernel_answer(huge, min_tried=10, what="fp32 document session") == "collapsed":
        assert huge_page_bytes(huge.extents) >= 8 * 2**20, huge
    # fp32 queries and documents are the same numbers as the int8 embedder's float32 session computes
    text = "how do I change the owner of a file"
    assert fp32.embed_documents([text]) == int8.embed_documents([text])


@pytest.mark.parametrize("failing_call", [1, 2])
def test_a_failure_of_the_collapse_never_fails_the_block_it_wraps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failing_call: int
) -> None:
    # The module is a speed hint around the query session's build: an unexpected error while it reads /proc
    # (before the block or after it) must leave the session built (it surfaced as "the ONNX model cannot be
    # loaded" and failed the start-up), with nothing collapsed and the reason kept.
    enabled = tmp_path / "enabled"
    enabled.write_text("always [madvise] never\n")
    monkeypatch.setattr(hugepages, "THP_ENABLED", enabled)
    calls: list[int] = []
    real = hugepages.resident_pages

    def failing(ranges: list[tuple[int, int]]) -> dict[int, int]:
        calls.append(1)
        if len(calls) == failing_call:
            raise ValueError("an unexpected pagemap")
        return real(ranges)

    monkeypatch.setattr(hugepages, "resident_pages", failing)
    built = []
    with huge_pages_for_new_memory() as result:
        region = _private_anonymous(4 * HUGE_PAGE)
        region[:] = b"\3" * (4 * HUGE_PAGE)
        built.append(True)
    assert built == [True]
    assert result.extents == []
    assert result.tried == 0
    assert result.failed == "ValueError: an unexpected pagemap"
    assert region[:] == b"\3" * (4 * HUGE_PAGE)
    region.close()


def test_the_collapses_stop_at_their_time_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Each MADV_COLLAPSE may enter direct reclaim and compaction (madvise(2)); on a fragmented node that is slow,
    # and the query session's build waits for it: the collapses stop once MAX_COLLAPSE_SECONDS have passed.
    import ctypes

    enabled = tmp_path / "enabled"
    enabled.write_text("always [madvise] never\n")
    monkeypatch.setattr(hugepages, "THP_ENABLED", enabled)
    now = [0.0]
    monkeypatch.setattr(hugepages, "_clock", lambda: now[0])

    class Slow:
        calls = 0

        def madvise(self, start: int, length: int, advice: int) -> int:
            self.calls += 1
            now[0] += hugepages.MAX_COLLAPSE_SECONDS / 2 + 0.01  # each collapse takes over half the budget
            ctypes.set_errno(0)
            return 0

        def malloc_trim(self, pad: int) -> int:
            return 1

    slow = Slow()
    monkeypatch.setattr(hugepages, "_libc", lambda: slow)
    with huge_pages_for_new_memory() as result:
        region = _private_anonymous(6 * HUGE_PAGE)
        region[:] = b"\4" * (6 * HUGE_PAGE)
    assert slow.calls == result.tried == 2  # the third would start past the budget
    assert result.failed is not None
    assert "stopped after" in result.failed
    region.close()


def test_every_whole_extent_the_block_filled_is_asked_for_once_and_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Whatever the host's THP mode and kernel (CI may run THP never or a kernel without MADV_COLLAPSE, where the
    # tests above can only check that nothing was asked for): the real /proc scan selects the extents the block
    # filled, each is asked for once with MADV_COLLAPSE, and every answer is counted (success or errno).
    import ctypes

    enabled = tmp_path / "enabled"
    enabled.write_text("always [madvise] never\n")
    monkeypatch.setattr(hugepages, "THP_ENABLED", enabled)

    class Kernel:
        def __init__(self) -> None:
            self.asked: list[tuple[int, int, int]] = []

        def madvise(self, start: int, length: int, advice: int) -> int:
            self.asked.append((start, length, advice))
            if len(self.asked) % 2:  # every other one refused, as a kernel without a free 2 MiB page does
                ctypes.set_errno(errno.EAGAIN)
                return -1
            ctypes.set_errno(0)
            return 0

        def malloc_trim(self, pad: int) -> int:
            return 1

    kernel = Kernel()
    monkeypatch.setattr(hugepages, "_libc", lambda: kernel)
    with huge_pages_for_new_memory() as result:
        region = _private_anonymous(6 * HUGE_PAGE)
        region[:] = b"\5" * (6 * HUGE_PAGE)
    start = _address(region)
    first = -(-start // HUGE_PAGE) * HUGE_PAGE
    whole = [
        extent
        for extent in range(first, start + 6 * HUGE_PAGE, HUGE_PAGE)
        if extent + HUGE_PAGE <= start + 6 * HUGE_PAGE
    ]
    asked = [extent for extent, _, _ in kernel.asked]
    assert set(whole) <= set(asked), (whole, asked)  # every whole extent the block filled
    assert len(asked) == len(set(asked))  # once each
    assert all(
        length == HUGE_PAGE and advice == hugepages.MADV_COLLAPSE for _, length, advice in kernel.asked
    )
    assert result.tried == len(asked)
    assert result.extents == asked[1::2]
    assert result.refused == {errno.EAGAIN: len(asked[0::2])}
    assert result.failed is None
    assert region[:] == b"\5" * (6 * HUGE_PAGE)
    region.close()
