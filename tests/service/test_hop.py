"""The search path's thread hop (service.app.core.hop): results, errors, context, concurrency, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading

import pytest

from service.app.core.hop import ThreadHop

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def test_returns_the_result_off_the_loop_thread() -> None:
    hop = ThreadHop(4)

    async def main() -> tuple[int, int]:
        return await hop.run(lambda a, b: (a + b, threading.get_ident()), 2, 3)

    total, ident = asyncio.run(main())
    assert total == 5
    assert ident != threading.get_ident()


def test_an_exception_reaches_the_caller_and_the_thread_serves_on() -> None:
    hop = ThreadHop(1)

    def fail() -> None:
        raise ValueError("bad input")

    async def main() -> str:
        with pytest.raises(ValueError, match="bad input"):
            await hop.run(fail)
        return await hop.run(str.upper, "still here")

    assert asyncio.run(main()) == "STILL HERE"
    assert hop.threads == 1


def test_the_callers_context_is_copied_into_the_call() -> None:
    hop = ThreadHop(2)

    async def main() -> str | None:
        REQUEST_ID.set("req-42")
        return await hop.run(REQUEST_ID.get)

    assert asyncio.run(main()) == "req-42"


def test_concurrent_calls_run_in_parallel_up_to_max_threads_and_the_rest_wait() -> None:
    # 6 calls that can only finish together (a barrier of 4 parties, then 2 more) on a pool of 4: the first 4
    # must run at once (a pool that ran fewer would never pass the barrier), the last 2 queue and still finish.
    hop = ThreadHop(4)
    barrier = threading.Barrier(4, timeout=30)
    running: list[str] = []

    def call(index: int) -> int:
        running.append(threading.current_thread().name)
        if index < 4:
            barrier.wait()
        return index

    async def main() -> list[int]:
        return list(await asyncio.gather(*(hop.run(call, i) for i in range(6))))

    assert asyncio.run(main()) == list(range(6))
    assert hop.threads == 4
    assert len(set(running)) <= 4


def test_threads_are_reused_when_idle() -> None:
    hop = ThreadHop(8)

    async def main() -> set[int]:
        idents = set()
        for _ in range(20):
            idents.add(await hop.run(threading.get_ident))
        return idents

    assert len(asyncio.run(main())) == 1
    assert hop.threads == 1


def test_a_cancelled_caller_stops_waiting_and_the_pool_stays_usable() -> None:
    hop = ThreadHop(1)
    release = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        release.wait(30)
        finished.set()
        return "late"

    async def main() -> str:
        task = asyncio.ensure_future(hop.run(slow))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # the one thread finishes the cancelled call (its result dropped), then takes the next
        return await hop.run(lambda: "next")

    assert asyncio.run(main()) == "next"
    assert finished.is_set()


def test_backlogged_calls_do_not_lose_threads() -> None:
    # Calls beyond max_threads queue; afterwards the pool must still start no more than max_threads and run
    # later bursts in parallel (a miscount of idle threads would serialise them or start too many).
    hop = ThreadHop(2)

    async def burst(size: int) -> None:
        await asyncio.gather(*(hop.run(sum, [i]) for i in range(size)))

    async def main() -> None:
        for _ in range(20):
            await burst(7)
        barrier = threading.Barrier(2, timeout=30)
        await asyncio.gather(hop.run(barrier.wait), hop.run(barrier.wait))

    asyncio.run(main())
    assert hop.threads == 2


def test_max_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ThreadHop(0)


def test_a_forked_child_starts_its_own_threads() -> None:
    # The parent's threads do not exist in a child: a child that inherited the idle count would queue its job
    # for a thread that is not there and wait forever.
    hop = ThreadHop(2)
    assert asyncio.run(hop.run(lambda: "parent")) == "parent"
    assert hop.threads == 1
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its call completes
        try:
            result = asyncio.run(asyncio.wait_for(hop.run(lambda: "child"), timeout=30))
            os._exit(0 if result == "child" and hop.threads == 1 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert asyncio.run(hop.run(lambda: "parent again")) == "parent again"
