"""Group commit (service.app.store.group_sync): which callers one flush covers, and what a failed flush fails.

Threads are ordered with events and the syncer's own arrival count, never with sleeps: a flush is held inside
its call until the test lets it go, so "arrived while a flush ran" is a fact of the test, not a race.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

import pytest

from service.app.store.group_sync import GroupSync

WAIT = 60  # seconds: a hang guard only (a correct run never waits on it)


class HeldFlush:
    """A flush that records each round and, while ``hold`` is set, waits to be released (or failed)."""

    def __init__(self) -> None:
        self.rounds: list[int] = []  # the data version each round started on (what it can cover)
        self.data = 0  # bumped by a "write" before its caller syncs
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_next = False
        self.hold = True

    def __call__(self) -> None:
        self.rounds.append(self.data)
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(WAIT)
        if self.fail_next:
            self.fail_next = False
            raise OSError(errno.EIO, "Input/output error")


def run(target: Callable[[], None], outcome: dict[str, BaseException | None], name: str) -> threading.Thread:
    def body() -> None:
        try:
            target()
            outcome[name] = None
        except BaseException as error:  # recorded for the test to assert on
            outcome[name] = error

    thread = threading.Thread(target=body, name=name)
    thread.start()
    return thread


def write_then_sync(flush: HeldFlush, syncer: GroupSync, name: str) -> Callable[[], None]:
    def call() -> None:
        with flush.lock:
            flush.data += 1
            written = flush.data
        syncer.sync()
        # Nothing returns before a round that started after its write: that round saw the write's data.
        assert any(r >= written for r in flush.rounds), (name, written, flush.rounds)

    return call


def test_a_write_made_while_a_flush_runs_waits_for_the_next_flush() -> None:
    flush = HeldFlush()
    syncer = GroupSync(flush)
    outcome: dict[str, BaseException | None] = {}
    first = run(write_then_sync(flush, syncer, "first"), outcome, "first")
    assert flush.entered.wait(WAIT)  # the first caller leads a flush that started on data version 1
    second = run(write_then_sync(flush, syncer, "second"), outcome, "second")
    syncer.wait_for_arrivals(2)  # the second write is applied and its caller waits behind the running flush
    assert flush.rounds == [1]
    flush.release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert outcome == {"first": None, "second": None}
    # The running flush did not cover the second write: a second round ran, on data that includes it.
    assert flush.rounds == [1, 2]
    assert syncer.flushes == 2


def test_callers_that_arrive_during_one_flush_share_the_next_one() -> None:
    flush = HeldFlush()
    syncer = GroupSync(flush)
    outcome: dict[str, BaseException | None] = {}
    leader = run(write_then_sync(flush, syncer, "leader"), outcome, "leader")
    assert flush.entered.wait(WAIT)
    followers = [run(write_then_sync(flush, syncer, f"w{i}"), outcome, f"w{i}") for i in range(6)]
    syncer.wait_for_arrivals(7)
    flush.release.set()
    for thread in [leader, *followers]:
        thread.join(WAIT)
    assert all(error is None for error in outcome.values()), outcome
    assert len(outcome) == 7
    # Six writers, one more flush between them: it started after all six had written.
    assert flush.rounds == [1, 7]


def test_a_failed_flush_fails_every_caller_it_covered_and_a_later_one_syncs_afresh() -> None:
    flush = HeldFlush()
    syncer = GroupSync(flush)
    outcome: dict[str, BaseException | None] = {}
    flush.fail_next = True
    leader = run(write_then_sync(flush, syncer, "leader"), outcome, "leader")
    assert flush.entered.wait(WAIT)
    # Arrives during the failing flush: not covered by it, so it is flushed by the next round and succeeds.
    late = run(write_then_sync(flush, syncer, "late"), outcome, "late")
    syncer.wait_for_arrivals(2)
    flush.release.set()
    leader.join(WAIT)
    late.join(WAIT)
    assert isinstance(outcome["leader"], OSError)
    assert outcome["late"] is None
    assert flush.rounds == [1, 2]


def test_every_waiter_a_failed_flush_covered_fails() -> None:
    """After a failed fsync the kernel may have dropped the dirty pages: none of the writes it covered is
    acknowledged, whoever led it."""
    flush = HeldFlush()
    syncer = GroupSync(flush)
    outcome: dict[str, BaseException | None] = {}
    gate = threading.Event()
    # A first flush, held: callers 2-4 queue behind it; the flush they share (round 2) fails.
    first = run(syncer.sync, outcome, "first")
    assert flush.entered.wait(WAIT)
    covered = [run(syncer.sync, outcome, f"c{i}") for i in range(3)]
    syncer.wait_for_arrivals(4)
    flush.fail_next = False

    real_call = flush.__call__

    def second_round_fails() -> None:
        real_call()
        if len(flush.rounds) == 2:
            gate.set()
            raise OSError(errno.EIO, "Input/output error")

    syncer._flush = second_round_fails
    flush.release.set()
    for thread in [first, *covered]:
        thread.join(WAIT)
    assert gate.is_set()
    assert outcome["first"] is None
    assert [type(outcome[f"c{i}"]) for i in range(3)] == [OSError] * 3
    # The disk is back: a new caller is flushed and succeeds.
    syncer.sync()
    assert len(flush.rounds) == 3


def test_a_flush_error_other_than_os_error_reaches_the_caller_too() -> None:
    def broken() -> None:
        raise RuntimeError("engine closed")

    syncer = GroupSync(broken)
    with pytest.raises(RuntimeError, match="engine closed"):
        syncer.sync()
    with pytest.raises(RuntimeError, match="engine closed"):
        syncer.sync()  # each caller gets its own flush attempt
