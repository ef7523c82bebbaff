"""`start_in_thread(load)`: run one start-up step in a daemon thread and hand back its `Future`.

Start-up has steps that do not depend on each other: loading the embedding model (ONNX Runtime builds its
session without holding the GIL) can run while the main thread imports the web stack, migrates the registry
and opens the store. The caller waits on the future where it needs the result, and `result()` re-raises the
step's own exception there, so a failed step fails start-up with the same error as when it ran inline.

A daemon thread rather than a `ThreadPoolExecutor`: the executor's threads are joined at interpreter exit, so a
start-up that fails elsewhere would first wait for a model it will never use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def start_in_thread(load: Callable[[], T], *, name: str) -> Future[T]:
    """Start ``load()`` in a daemon thread named ``name``; its future holds the result or the exception."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(load())
        except BaseException as exc:  # handed to whoever waits, as if the call had been made there
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
