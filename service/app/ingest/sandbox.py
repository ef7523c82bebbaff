"""Extraction under a budget: HTML and PDF are parsed in worker processes with hard CPU, memory and time limits.

A parser cost is a property of the document, not of its size alone: lexbor's tree building is quadratic in
nesting depth (120 KB of ``<div>`` nested 20,000 deep costs ~1 s of CPU, 1 MB ~30 s) and a dense page needs about
100 MB of memory per MB of HTML; a small PDF can inflate a compressed stream to gigabytes. A thread cannot be
stopped or capped, so `Extractor` runs these extractions in a pool of EXTRACT_WORKERS processes (pebble, which
kills a worker on a per-task wall timeout or cancellation and replaces a worker that died), each child started
from the multiprocessing forkserver with the extraction code preloaded and limited by the kernel:

- RLIMIT_AS = EXTRACT_MEMORY_MB: an allocation past it fails inside the child (MemoryError, or lexbor's
  "Can't parse HTML"), the child exits with EXIT_OVER_MEMORY (and is replaced) and the request gets a 422
  naming EXTRACT_MEMORY_MB;
- RLIMIT_CPU, soft limit moved to (CPU used so far + EXTRACT_CPU_SECONDS) before each document: the kernel sends
  SIGXCPU, whose default action ends the child even inside C code; the 422 names EXTRACT_CPU_SECONDS;
- EXTRACT_TIMEOUT_SECONDS of wall time (the pool kills the child): a child that got too little CPU in that time
  says the machine is overloaded, not that the document is bad, so that is a 503 with Retry-After;
- a child that dies otherwise (killed by an operator or the OOM killer) fails only its own document with a 503;
  the pool starts a replacement. A crash signal (SIGSEGV/SIGBUS/SIGABRT) blames the document: 422.

At most EXTRACT_WORKERS extractions run at once; more wait (without blocking the event loop) for a free worker.
Cheap cases stay in-process, in a thread: plain text and Markdown (decoding is linear) and HTML of at most
EXTRACT_INLINE_MAX_BYTES (measured worst case at the 16 KiB default: tens of milliseconds of CPU and a few MB;
bench/extract_html.py, docs/benchmarks.md), since a round trip through a worker costs more than parsing them.
The event loop never parses. Async ingestion extracts in the request too (jobs carry text), so a document over a
budget is refused before any 202 and no job is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, TimeoutError
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from anyio import CapacityLimiter, to_thread

from service.app.core.config import Settings
from service.app.core.errors import InvalidInput, RagError, ServiceUnavailable, UnsupportedMediaType
from service.app.core.metrics import EXTRACTIONS
from service.app.ingest import extract

if TYPE_CHECKING:
    # pebble is imported with the first pool (the first document that needs a worker), not at start-up.
    from pebble import ProcessExpired, ProcessPool

logger = logging.getLogger(__name__)

# A worker is replaced after this many documents: it returns what the allocator keeps after large documents
# (the address-space limit stays per document either way); a fork from the forkserver costs milliseconds.
WORKER_MAX_TASKS = 100
# Crash signals that come from the document's parse, not from outside the worker.
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL}
_PR_SET_PDEATHSIG = 1
# The exit status of a worker whose document went over EXTRACT_MEMORY_MB (see _extract_in_child); outside
# Python's own 1 and 2 and the shell's 126 and above.
EXIT_OVER_MEMORY = 97
# The errors a child may report; anything else it raises is a bug (500 in the parent, logged).
_CHILD_ERRORS: dict[str, type[RagError]] = {
    "InvalidInput": InvalidInput,
    "UnsupportedMediaType": UnsupportedMediaType,
}


class ExtractionLimitExceeded(InvalidInput):
    """The document needs more CPU time or memory to extract than its budget allows (422)."""

    code = "extraction_limit_exceeded"


@contextlib.contextmanager
def _counted(where: str) -> Iterator[None]:
    """Count the extraction in rag_extractions_total by where it ran and how it ended."""
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except ExtractionLimitExceeded as exc:
        outcome = str(exc.details.get("limit", "limit")).lower()
        raise
    except RagError as exc:
        outcome = "unavailable" if exc.status_code >= 500 else "invalid"
        raise
    finally:
        EXTRACTIONS.labels(where=where, outcome=outcome).inc()


def cpu_limit_error(seconds: int) -> ExtractionLimitExceeded:
    return ExtractionLimitExceeded(
        f"extracting the document's text needs more than EXTRACT_CPU_SECONDS ({seconds} s of CPU); "
        "simplify or split the document, or raise EXTRACT_CPU_SECONDS",
        limit="EXTRACT_CPU_SECONDS",
        value=seconds,
    )


def memory_limit_error(megabytes: int) -> ExtractionLimitExceeded:
    return ExtractionLimitExceeded(
        f"extracting the document's text needs more than EXTRACT_MEMORY_MB ({megabytes} MB); "
        "simplify or split the document, or raise EXTRACT_MEMORY_MB (and the pod's memory limit with it)",
        limit="EXTRACT_MEMORY_MB",
        value=megabytes,
    )


# --------------------------------------------------------------------------------------------- in the child
def _init_worker(memory_bytes: int) -> None:
    """Run once in each worker: die with the forkserver (so with the API), cap the address space, no cores."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # SIGXCPU's default action ends the process even while it is inside C code; the parent reads the signal.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)


def _extract_in_child(kind: str, payload: Any, content_type: str, cpu_seconds: int) -> tuple[str, Any]:
    """One document in a worker: ("ok", text) or ("error", (class name, message, details)); over the memory
    budget the worker exits with EXIT_OVER_MEMORY."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + cpu_seconds if hard == resource.RLIM_INFINITY else min(used + cpu_seconds, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    try:
        if kind == "html":
            return "ok", extract.html_to_text(payload)
        return "ok", extract.extract_text(payload, content_type)
    # Over its memory budget the worker reports by exiting, and is replaced. Not by replying: with the failed
    # document still filling the address space, the reply (even the tuple of classes an `except (A, B)` builds)
    # can raise MemoryError of its own, which killed the worker inside pebble (a 503, not the 422); and a process
    # in which an allocation failed inside lexbor is not trusted with another document (measured with a
    # CSS-selector variant of html_to_text: the next parse in that worker crashed with SIGSEGV now and then,
    # a 422 blaming an innocent document). os._exit allocates nothing.
    except MemoryError:
        os._exit(EXIT_OVER_MEMORY)
    except extract.HtmlParseError:
        os._exit(EXIT_OVER_MEMORY)
    except RagError as exc:
        # The parent rebuilds the error by name; every extraction error is one of these two statuses.
        name = "UnsupportedMediaType" if isinstance(exc, UnsupportedMediaType) else "InvalidInput"
        return "error", (name, exc.message, exc.details)
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))


# --------------------------------------------------------------------------------------------- in the API
#: A -W option for the interpreters multiprocessing starts (the resource tracker, the forkserver): they take
#: this process's sys.warnoptions on their command line.
QUIET_TRACKER_WARNING = "ignore:resource_tracker:UserWarning"


def quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker without its leak warning (EYES7 L4).

    The pool's queues use named POSIX semaphores, registered with the resource tracker: a process of its own
    that unlinks whatever its parent did not. After a ``kill -9`` (or the OOM killer) of the service it unlinks
    them, as it should, and warns "There appear to be 2 leaked semaphore objects to clean up at shutdown" on the
    service's stderr: an alarming line, after the process's own log, about a clean-up that worked. The warning
    is ignored in the tracker only (this process read its warning options at start-up), before it starts.
    """
    if QUIET_TRACKER_WARNING not in sys.warnoptions:
        sys.warnoptions.append(QUIET_TRACKER_WARNING)


class Extractor:
    """Text extraction within the per-document budgets of the settings (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.cpu_seconds = settings.extract_cpu_seconds
        self.memory_mb = settings.extract_memory_mb
        self.timeout_seconds = settings.extract_timeout_seconds
        self.inline_max_bytes = settings.extract_inline_max_bytes
        self.workers = settings.extract_workers
        self._slots = asyncio.Semaphore(self.workers)
        self._inline = CapacityLimiter(self.workers)
        self._lock = threading.Lock()
        self._pool: ProcessPool | None = None
        self._closed = False

    # ---- the pool
    def _context(self) -> Any:
        quiet_resource_tracker()
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that imported the parsers once: a new worker costs a fork, not an import.
        # "__main__": a main run as a script (not `python -m`) is imported once there, not again per worker.
        context.set_forkserver_preload(["__main__", "service.app.ingest.sandbox"])
        return context

    def pool(self) -> ProcessPool:
        """The worker pool, started on first use and replaced when pebble gave up on it (all workers lost)."""
        from pebble import ProcessPool

        with self._lock:
            if self._closed:
                raise ServiceUnavailable("the service is shutting down; retry on another replica")
            if self._pool is None or not self._pool.active:
                if self._pool is not None:
                    logger.warning("extraction pool broken; starting a new one")
                    self._discard(self._pool)
                self._pool = ProcessPool(
                    max_workers=self.workers,
                    max_tasks=WORKER_MAX_TASKS,
                    initializer=_init_worker,
                    initargs=(self.memory_mb * 1024 * 1024,),
                    context=self._context(),
                )
            return self._pool

    @staticmethod
    def _discard(pool: ProcessPool) -> None:
        pool.stop()
        with contextlib.suppress(Exception):
            pool.join(timeout=10)

    def worker_pids(self, *, busy: bool = False) -> list[int]:
        """Process ids of the live workers, or (``busy``) of those extracting a document now.

        Operability and tests; pebble keeps no public view of its workers, hence the private attributes.
        """
        pool = self._pool
        if pool is None:
            return []
        manager = pool._pool_manager
        if busy:
            tasks = list(manager.task_manager.tasks.values())
            return sorted({task.worker_id for task in tasks if task.started and task.worker_id})
        return [pid for pid, process in list(manager.worker_manager.workers.items()) if process.is_alive()]

    def close(self) -> None:
        """Stop the workers (running extractions are killed); later extractions get 503."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            self._discard(pool)

    # ---- extraction
    async def html(self, html: str) -> str:
        """Visible text of an HTML string (a JSON document's text)."""
        if len(html) <= self.inline_max_bytes:
            return await self._run_inline(extract.html_to_text, html)
        return await self._run_isolated("html", html, "text/html")

    async def document(self, data: bytes, content_type: str) -> str:
        """Text of an uploaded document; ``content_type`` may carry a charset parameter."""
        kind = extract.normalize_content_type(content_type)
        if kind in ("text/plain", "text/markdown") or (
            kind == "text/html" and len(data) <= self.inline_max_bytes
        ):
            return await self._run_inline(extract.extract_text, data, content_type)
        return await self._run_isolated("document", data, content_type)

    async def _run_inline(self, function: Any, *args: Any) -> str:
        with _counted("inline"):
            return str(await to_thread.run_sync(function, *args, limiter=self._inline))

    async def _run_isolated(self, kind: str, payload: Any, content_type: str) -> str:
        async with self._slots:
            with _counted("worker"):
                return await self._schedule(kind, payload, content_type)

    async def _schedule(self, kind: str, payload: Any, content_type: str) -> str:
        from pebble import ProcessExpired

        future = self.pool().schedule(
            _extract_in_child,
            args=(kind, payload, content_type, self.cpu_seconds),
            timeout=self.timeout_seconds,
        )
        try:
            # Cancelling the awaiting request (client gone) cancels the future, and pebble kills the worker.
            status, value = await asyncio.wrap_future(future)
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"text extraction did not finish within EXTRACT_TIMEOUT_SECONDS ({self.timeout_seconds:g} s) "
                "although it stayed under its CPU budget: the extraction workers are overloaded; retry later",
                retry_after=int(self.timeout_seconds),
            ) from exc
        except ProcessExpired as exc:
            raise self._expired(exc) from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the request itself was cancelled (client gone): cancelling the future killed the worker
            # The pool cancelled the task (it was stopped under it): not the caller's cancellation.
            raise ServiceUnavailable("the extraction was cancelled by the worker pool; retry") from None
        except (BrokenProcessPool, CancelledError) as exc:
            if self._closed:
                raise ServiceUnavailable("the service is shutting down; retry on another replica") from exc
            raise ServiceUnavailable("the extraction workers failed; retry") from exc
        if status == "ok":
            return str(value)
        name, message, details = value
        raise _CHILD_ERRORS.get(name, InvalidInput)(message, **details)

    def _expired(self, exc: ProcessExpired) -> RagError:
        code = exc.exitcode
        if code == -signal.SIGXCPU:
            return cpu_limit_error(self.cpu_seconds)
        if code == EXIT_OVER_MEMORY:
            return memory_limit_error(self.memory_mb)
        if code is not None and -code in _CRASH_SIGNALS:
            return InvalidInput(
                f"the document crashed the text extractor (signal {signal.Signals(-code).name}); "
                "it cannot be ingested as it is"
            )
        logger.warning("an extraction worker died (exit code %s); its document gets a 503", code)
        return ServiceUnavailable(
            f"the extraction worker died (exit code {code}) before finishing this document; retry"
        )
