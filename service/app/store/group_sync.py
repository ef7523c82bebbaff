"""Group commit: one flush to disk covers every caller that asked for one before it started.

Why: with WRITE_DURABILITY=power_loss every write waits for the edge store's WAL to be fsynced before it is
acknowledged. Concurrent writers (several clients, the ingestion jobs) each doing their own fsyncs queue them on
the device one after the other, although one fsync puts every page written before it began on disk. So callers
take turns: one runs the flush (the leader) while the others wait; a waiter whose write was applied before that
flush started is covered by it and returns when it succeeds, one that arrived later runs (or waits for) the
next flush. Nothing returns before a flush that started after its write finished.

A caller's write must be applied before it calls `GroupSync.sync` (its place in line is taken on entry). A
flush that fails fails every caller it covered that no earlier flush covered (after a failed fsync the kernel
may have dropped the dirty pages: a later successful fsync proves nothing about them); later callers are
flushed afresh.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class GroupSync:
    """Serialises ``flush`` calls and lets every caller that arrived before a flush started share it."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._arrived = 0  # callers so far, numbered from 1 in the order they entered `sync`
        self._synced = 0  # every caller numbered up to this one is on disk
        self._running = False
        # (low, high, error): a flush that failed, and the callers it covered that were not on disk before it.
        self._failed: list[tuple[int, int, BaseException]] = []
        self._waiting: set[int] = set()
        self.flushes = 0  # flushes started (tests and metrics: how many fsync rounds the callers cost)

    @property
    def arrived(self) -> int:
        return self._arrived

    def wait_for_arrivals(self, count: int) -> None:
        """Block until ``count`` callers have entered `sync` (tests: order a writer behind a running flush)."""
        with self._cond:
            self._cond.wait_for(lambda: self._arrived >= count)

    def sync(self) -> None:
        """Return once a flush that started after this call began has succeeded; raise its error if it failed."""
        with self._cond:
            self._arrived += 1
            mine = self._arrived
            self._cond.notify_all()
            self._waiting.add(mine)
            try:
                while True:
                    for low, high, error in self._failed:
                        if low < mine <= high:
                            raise error
                    if self._synced >= mine:
                        return
                    if not self._running:
                        break
                    self._cond.wait()
            finally:
                self._waiting.discard(mine)
                self._prune()
            # The leader: this flush covers every caller that has arrived so far (their writes are applied).
            self._running = True
            low, high = self._synced, self._arrived
            self.flushes += 1
        try:
            self._flush()
        except BaseException as error:
            with self._cond:
                self._running = False
                self._failed.append((low, high, error))
                self._prune()
                self._cond.notify_all()
            raise
        with self._cond:
            self._running = False
            self._synced = max(self._synced, high)
            self._cond.notify_all()

    def _prune(self) -> None:
        """Forget failures no waiting caller can still be covered by (callers arrive in increasing numbers)."""
        oldest = min(self._waiting, default=self._arrived + 1)
        self._failed = [entry for entry in self._failed if entry[1] >= oldest]
