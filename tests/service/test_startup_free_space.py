"""The start-up free-space check covers what opening the store writes (EYES10 S6b), and an optimizer pass the
full disk refuses is one log line, not a traceback.

Opening a shard makes its preallocated files real and replays its WAL (600 chunks: 11 -> 58 MB at a restart),
so a check before the open alone let a service come up below READY_MIN_FREE_BYTES, refusing every write. Growing
a real volume's usage by a chosen amount needs a filesystem of a chosen size (a tmpfs mount, which CI may not
allow), so the volume's free space is what `_free_bytes` reports: above the threshold before the open and below it
after, as on the VM; everything else (the shard, its lock, the engine) is real.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.app.store.edge import EdgeVectorStore, EmbeddedStoreError
from tests.service.support import make_settings
from tests.service.test_edge_store import DIM, points


def _store(tmp_path: Path) -> EdgeVectorStore:
    return EdgeVectorStore.from_settings(
        make_settings(tmp_path, vector_store="edge"), model_name="m", dimension=DIM
    )


def test_a_start_whose_open_takes_the_disk_below_the_threshold_is_refused_and_leaves_the_store_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _store(tmp_path)
    first.ensure_collection()
    first.upsert(points("a", 7))
    first.close()

    store = _store(tmp_path)
    threshold = store.min_free_bytes
    assert threshold > 0
    # Before the open there is room (the check in `_open` passes); the load then uses it up.
    monkeypatch.setattr(
        EdgeVectorStore,
        "_free_bytes",
        lambda self: threshold + 40 * 2**20 if self._shard is None else threshold - 2**20,
    )
    with pytest.raises(EmbeddedStoreError) as refused:
        store.ensure_collection()
    message = str(refused.value)
    assert "\n" not in message
    assert "wrote 41 MiB" in message
    assert "below READY_MIN_FREE_BYTES" in message
    assert "free space on the volume" in message
    monkeypatch.undo()

    reopened = _store(tmp_path)  # the refused open released the shard and its lock; nothing was lost
    reopened.ensure_collection()
    try:
        assert reopened.count("t", "a") == 7
    finally:
        reopened.close()


def test_an_optimizer_pass_refused_by_a_full_disk_is_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path)
    store.ensure_collection()
    try:
        optimizer = store._optimizer
        assert optimizer is not None
        assert optimizer.finished.wait(60), "the start-up pass"
        store.min_free_bytes = 2**62  # the real statvfs reading is below it: "nearly full"
        optimizer.finished.clear()
        with caplog.at_level(logging.INFO, logger="service.app.store.edge"):
            optimizer.wrote(1)
            assert optimizer.finished.wait(60), "the refused pass"
        lines = [r for r in caplog.records if "optimization" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert lines[0].levelname == "ERROR"
        assert "disk is nearly full" in lines[0].getMessage()
        assert lines[0].exc_info is None  # the cause, not a traceback
    finally:
        store.close()
