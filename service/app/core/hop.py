"""The search path's hop off the event loop: warm worker threads fed through one C queue.

A search's blocking part (query embedding, engine query, registry snapshot) runs in a worker thread so the event
loop keeps serving. anyio's ``to_thread.run_sync`` (what FastAPI and Starlette use) does that with a capacity
limiter, a cancel scope, a Python ``queue.Queue`` per worker and several checkpoints: on this 2-CPU machine
~200 µs of the loop's CPU and ~230 µs of wall per hop from an idle loop, against ~60-80 µs and ~100-120 µs for
this pool (docs/benchmarks.md, "Small-collection overhead, attempt 2026-11-26"). Every search pays the hop, and
with one client all of it is on the request's critical path. ``asyncio``'s ``run_in_executor`` sits in between
(~140-160 µs of loop CPU): ``ThreadPoolExecutor.submit`` and ``wrap_future`` are the extra work.

How: callers put ``(loop, future, context, fn, args)`` on a ``queue.SimpleQueue`` (C); worker threads block on it
and hand the result back with ``loop.call_soon_threadsafe``. A thread is started only when no started thread is
idle, up to ``max_threads`` (40, anyio's default limit; the query coalescer needs concurrent callers in threads
to form its batches); started threads stay (blocked on the queue, they cost no CPU). A forked child starts
its own threads (the pool's state is reset after a fork). The caller's contextvars
(the request id in the logs) are copied into the call, as anyio does.

Cancellation: a blocking call cannot be interrupted. A cancelled caller stops waiting at once; the thread
finishes its call and the result is dropped (``run_in_executor``'s behaviour; anyio's default instead keeps the
cancelled caller waiting until the thread returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context, Callable[..., Any], tuple]


class ThreadHop:
    """Runs blocking calls in warm worker threads for coroutines: ``await hop.run(fn, *args)``."""

    def __init__(self, max_threads: int = 40, *, name: str = "search-worker") -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self._name = name
        self._reset()
        # A forked child has none of the parent's threads: it starts its own (a copied count would wait forever).
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        # Started threads free to take a job: the ones waiting on the queue minus the jobs already put for them.
        self._idle = 0
        # Jobs put while every thread was busy and no more could be started; the next thread to finish takes one.
        self._backlog = 0

    @property
    def threads(self) -> int:
        """Worker threads started so far (they are never more than ``max_threads``)."""
        return self._threads

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, in a copy of the caller's context; its result or its exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        start = False
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._threads < self.max_threads:
                self._threads += 1
                start = True
            else:
                self._backlog += 1
        self._jobs.put((loop, future, contextvars.copy_context(), fn, args))
        if start:
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()
        return await future

    def _work(self) -> None:
        jobs, lock = self._jobs, self._lock
        while True:
            loop, future, context, fn, args = jobs.get()
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # handed to the caller, as a coroutine would raise it
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            del fn, args, context
            # Free again BEFORE the result is handed over: the caller's next search must find this thread idle
            # rather than start another one.
            with lock:
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1
            # A closed loop (RuntimeError): its caller is gone, nobody waits for this result any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, future, outcome)
            del future, outcome


def _deliver(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # the caller was cancelled: the result is dropped
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


# One pool per process for every search (SearchService, CachedSearch): threads are shared, like anyio's.
SEARCH_THREADS = ThreadHop()
