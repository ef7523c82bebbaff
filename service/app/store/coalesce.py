"""Call coalescing: concurrent single-item calls in one process run as ONE batch call (leader/follower).

Why: one ONNX Runtime run of the query model has a large fixed cost next to its per-token cost, so a batch of
queries costs much less CPU per query than the same queries run one by one (docs/benchmarks.md: on 2 cores,
one intra-op thread, 13.4 ms of CPU per query at batch 1, 8.5 at batch 4, 7.6 at batch 8). Searches arrive one
text at a time, from the threadpool, so the batch has to be formed here.

How, without adding latency to anyone:

- A caller that finds a free run slot (fewer than ``max_runs`` runs in progress) is the LEADER: it runs its own
  item at once, in its own thread. A lone client therefore never waits on a timer, a queue or another thread:
  it creates no waiting primitive at all (tested).
- A caller that finds every run slot busy is a FOLLOWER: it queues and sleeps on its own event.
- When a run ends, its leader hands the slot on: if calls are queued, the first of them is promoted to leader
  of a batch of up to ``max_batch`` queued calls and woken; it runs them all in one call, in its thread. The old
  leader returns its own result straight away (it never runs other callers' batches). So under load the batch
  grows by itself to what queued during one run, and with no load every batch is one call.

Errors: a batch that raises fails every call in it. The leader re-raises the exception itself; each follower
raises its own ``BatchRunError`` whose ``__cause__`` is that exception (one exception object is never raised
in several threads). Nothing is left behind: the next batch runs normally. A caller that gives up (``timeout``,
or an exception such as KeyboardInterrupt while it waits) leaves without breaking the others: queued, it is
taken out of the queue; already in a running batch, its result is dropped. A call promoted to leader runs its
batch even past its timeout (the others depend on it, and a run is short); interrupted before it started, it
promotes the next call of its batch (or frees the slot) before it leaves.

Isolation: one coalescer per model (the embedder owns it), so a batch never mixes two models' texts.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_QUEUED, _TAKEN, _LEAD, _DONE = "queued", "taken", "lead", "done"
# Every waiting primitive a caller can block on is made here (tests replace it to prove a lone caller makes none).
_new_event = threading.Event


class BatchRunError(RuntimeError):
    """The batch this call was coalesced into failed; ``__cause__`` is what the batch raised."""


class _Call(Generic[T, R]):
    __slots__ = ("batch", "error", "event", "item", "result", "state")

    def __init__(self, item: T) -> None:
        self.item = item
        self.state = _LEAD
        self.result: R | None = None
        self.error: BaseException | None = None
        self.event: threading.Event | None = None
        self.batch: list[_Call[T, R]] = []


class BatchCoalescer(Generic[T, R]):
    """Runs ``run(items) -> results`` (same length, same order) for concurrent ``submit(item)`` calls."""

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 16,
        max_runs: int = 1,
    ) -> None:
        if max_batch < 1 or max_runs < 1:
            raise ValueError("max_batch and max_runs must be at least 1")
        self._run = run
        self.max_batch = max_batch
        self.max_runs = max_runs
        self._lock = threading.Lock()
        self._queued_changed = threading.Condition(self._lock)
        self._queue: deque[_Call[T, R]] = deque()
        self._running = 0
        # Counters (read without the lock for reports and tests; updated under it).
        self.runs = 0  # batch calls made
        self.calls = 0  # items run in them
        self.waits = 0  # callers that had to queue

    @property
    def queued(self) -> int:
        """Calls waiting for a run slot right now."""
        return len(self._queue)

    def wait_until_queued(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` calls are queued (for tests and benchmarks that need a full batch)."""
        with self._queued_changed:
            return self._queued_changed.wait_for(lambda: len(self._queue) >= count, timeout)

    def wait_until_waited(self, count: int, timeout: float) -> bool:
        """Block until ``count`` callers in all have had to queue (``waits``; for tests: whatever ran since)."""
        with self._queued_changed:
            return self._queued_changed.wait_for(lambda: self.waits >= count, timeout)

    def submit(self, item: T, timeout: float | None = None) -> R:
        """``run([item])[0]``, possibly computed in one batch with concurrent callers' items.

        ``timeout``: seconds to wait for a busy run slot and the batch; past it, TimeoutError (the item's batch,
        if it already started, still completes for the others). A caller that leads never times out: the run is
        its own thread's work.
        """
        call: _Call[T, R] = _Call(item)
        with self._lock:
            queued = self._running >= self.max_runs
            if not queued:
                # Invariant: calls queue only while every slot is busy, so nothing is waiting here.
                self._running += 1
                call.batch = [call]
            else:
                call.state = _QUEUED
                call.event = _new_event()
                self._queue.append(call)
                self.waits += 1
                self._queued_changed.notify_all()
        # Decided under the lock: once released, a finishing run may already have taken (or promoted) this call.
        if queued:
            self._follow(call, timeout)
        if call.state == _LEAD:
            self._lead(call.batch)
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    # --- internals --------------------------------------------------------------------------------------------

    def _follow(self, call: _Call[T, R], timeout: float | None) -> None:
        """Wait until the call is done or promoted; on timeout or interruption, leave without stranding anyone."""
        event = call.event
        assert event is not None
        try:
            finished = event.wait(timeout)
        except BaseException:
            self._leave(call)
            raise
        if finished:
            return
        with self._lock:
            if call.state == _QUEUED:
                self._queue.remove(call)
            if call.state in (_QUEUED, _TAKEN):  # a running batch writes a result nobody reads
                raise TimeoutError(f"no result within {timeout} s")
            # _LEAD (promoted just now: run the batch, it is this thread's work) or _DONE: carry on.

    def _leave(self, call: _Call[T, R]) -> None:
        """An interrupted follower goes; a promoted one first passes its batch on (caller holds no lock)."""
        with self._lock:
            if call.state == _QUEUED:
                self._queue.remove(call)
            elif call.state == _LEAD:
                others = [other for other in call.batch if other is not call]
                if others:
                    self._promote(others)
                else:
                    self._hand_over_locked()
            # _TAKEN: the running batch writes a result nobody reads; _DONE: nothing to undo.

    def _lead(self, batch: list[_Call[T, R]]) -> None:
        try:
            self._run_batch(batch)
        finally:
            with self._lock:
                self.runs += 1
                self.calls += len(batch)
                self._hand_over_locked()
            for other in batch:
                other.state = _DONE
                if other.event is not None:
                    other.event.set()

    def _run_batch(self, batch: list[_Call[T, R]]) -> None:
        try:
            results = self._run([call.item for call in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items gave {len(results)} results")
        except BaseException as exc:
            leader = batch[0]
            leader.error = exc
            for other in batch[1:]:
                error = BatchRunError(
                    f"the batch of {len(batch)} this call was coalesced into failed: {exc!r}"
                )
                error.__cause__ = exc
                other.error = error
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: the leader's thread stops; the followers were told
            return
        for call, result in zip(batch, results, strict=True):
            call.result = result

    def _hand_over_locked(self) -> None:
        """Give the finished run's slot to the queued calls (caller holds the lock)."""
        if not self._queue:
            self._running -= 1
            return
        size = min(self.max_batch, len(self._queue))
        self._promote([self._queue.popleft() for _ in range(size)])

    @staticmethod
    def _promote(batch: list[_Call[T, R]]) -> None:
        leader = batch[0]
        for other in batch[1:]:
            other.state = _TAKEN
        leader.state = _LEAD
        leader.batch = batch
        assert leader.event is not None
        leader.event.set()
