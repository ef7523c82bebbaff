"""Collapse the memory a block of code allocates into transparent huge pages (Linux, best effort).

Why: one int8 query embedding streams the model's ~11 MB of int8 weights through AMX tile loads (perf: the
hottest instructions are ``tdpbusd`` waiting on the ``tileloadd`` of a weight tile; ONNX Runtime's profiler: the
weight-reading kernels are what a cache-cold run adds; docs/benchmarks.md "The query embedding, stop 19"). With
4 KiB pages the ~75 MB the session allocates span ~19,000 pages, far more than the TLB holds, so each run also
walks page tables. Hosts run THP in ``madvise`` mode by default (this one does), so ONNX Runtime's buffers,
allocated through malloc, stay on 4 KiB pages unless asked. Asked here, once, right after the session is built:
``MADV_COLLAPSE`` (Linux 6.1+) of every 2 MiB extent of anonymous memory that became resident while it was
built. Measured: the session's runs at 0.82-0.93x the wall time (cache-cold, as a server's are) and 0.87-0.91x
back to back, against 0.96-1.05x for an A/A run of the same harness.

How the session's memory is found: malloc reuses freed heap space, so "new mappings" miss most of it; instead
``malloc_trim(0)`` first returns the heap's free pages to the kernel, and the extents whose resident page count
(``/proc/self/pagemap``) grew by at least ``MIN_NEW_PAGES`` and are now nearly full (``MIN_PRESENT_PAGES`` of 512)
are collapsed. Memory other threads touch meanwhile may be collapsed too; that only changes its page size.
``MADV_COLLAPSE`` alone (no ``MADV_HUGEPAGE``) leaves the mappings' flags as they were: later faults and
khugepaged behave as before, and a nearly full extent gains at most a few pages of RSS.

What it does not change: any number the model computes (the same bytes on other pages), or anything on a host
with THP ``never``, without ``MADV_COLLAPSE`` (older kernels) or not on Linux: nothing is done there. Every
failure is ignored: this is a speed hint. Cost: the collapse copies each extent once (~75 MB for MiniLM's int8
graph: ~0.1-0.3 s of start-up CPU on this machine); each collapse may also enter the kernel's direct reclaim and
compaction, so the collapses stop after ``MAX_COLLAPSE_SECONDS`` (what is left stays on 4 KiB pages).

The embedded store's shard uses the two halves apart (``new_memory`` around its load, then ``collapse`` on a thread
of its own, so neither start-up nor a consolidation's swap waits for the kernel): service.app.store.edge,
SHARD_HUGE_PAGES.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PAGE = 4096
HUGE_PAGE = 2 * 1024 * 1024
PAGES_PER_HUGE = HUGE_PAGE // PAGE
MADV_COLLAPSE = 25
# An extent is collapsed when the block made at least this many of its pages resident and it is now this full.
MIN_NEW_PAGES = 64
MIN_PRESENT_PAGES = 500
# A mapping larger than this is not scanned (its pagemap alone would be 8 bytes per 4 KiB: 16 MiB for 8 GiB): a
# runtime's reservation, not buffers a session just filled.
MAX_SCANNED_MAPPING = 8 * 1024**3
# The collapses stop once they took this long: each may enter direct reclaim and compaction for its 2 MiB page
# (madvise(2): whatever the mappings' flags), which on a fragmented, memory-pressed node can take far longer than the
# ~0.1-0.3 s the copies cost here, and the wrapped block (the query session's build) waits for them.
MAX_COLLAPSE_SECONDS = 2.0
_clock = time.monotonic
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")

Range = tuple[int, int]


@dataclass
class HugePages:
    """What ``huge_pages_for_new_memory`` did: the 2 MiB extents it collapsed (their start addresses)."""

    extents: list[int] = field(default_factory=list)
    tried: int = 0  # extents it asked the kernel to collapse
    refused: dict[int, int] = field(default_factory=dict)  # errno -> extents the kernel did not collapse
    failed: str | None = None  # what stopped it early (never raised: a speed hint must not fail the block)

    @property
    def collapsed_bytes(self) -> int:
        return len(self.extents) * HUGE_PAGE


def thp_mode(path: Path | None = None) -> str | None:
    """The host's THP mode (``always``, ``madvise``, ``never``), or None where it cannot be read."""
    try:
        text = (path or THP_ENABLED).read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def anonymous_ranges(maps: Path = Path("/proc/self/maps")) -> list[Range]:
    """This process's writable private anonymous mappings (malloc's: mmapped chunks, arenas, the brk heap)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        parts = line.split()
        anonymous = len(parts) == 5 or (len(parts) == 6 and parts[5] == "[heap]")
        if anonymous and parts[1].startswith("rw") and parts[1].endswith("p"):
            lo, hi = (int(value, 16) for value in parts[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def resident_pages(ranges: list[Range], pagemap: Path = Path("/proc/self/pagemap")) -> dict[int, int]:
    """For every whole 2 MiB extent inside ``ranges``: its start address -> how many of its pages are resident."""
    import numpy as np

    out: dict[int, int] = {}
    try:
        fd = os.open(pagemap, os.O_RDONLY)
    except OSError:
        return out
    try:
        for lo, hi in ranges:
            start = -(-lo // HUGE_PAGE) * HUGE_PAGE
            end = hi // HUGE_PAGE * HUGE_PAGE
            if end <= start or hi - lo > MAX_SCANNED_MAPPING:
                continue
            try:
                raw = os.pread(fd, (end - start) // PAGE * 8, start // PAGE * 8)
            except OSError:
                continue
            entries = np.frombuffer(raw, dtype=np.uint64)[: len(raw) // 8 // PAGES_PER_HUGE * PAGES_PER_HUGE]
            present = (entries >> np.uint64(63)).reshape(-1, PAGES_PER_HUGE).sum(axis=1)  # bit 63: present
            out.update({start + i * HUGE_PAGE: int(count) for i, count in enumerate(present)})
    finally:
        os.close(fd)
    return out


def grown_extents(before: dict[int, int], after: dict[int, int]) -> list[int]:
    """Extents the block filled: at least ``MIN_NEW_PAGES`` more resident pages, now ``MIN_PRESENT_PAGES`` full."""
    return sorted(
        start
        for start, count in after.items()
        if count >= MIN_PRESENT_PAGES and count - before.get(start, 0) >= MIN_NEW_PAGES
    )


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def huge_pages_for_new_memory() -> Iterator[HugePages]:
    """Collapse into huge pages the anonymous memory that the ``with`` block made resident (module docstring)."""
    result = HugePages()
    with new_memory(result) as extents:
        yield result
    collapse(extents, result)


@contextlib.contextmanager
def new_memory(result: HugePages) -> Iterator[list[int]]:
    """The 2 MiB extents of anonymous memory the ``with`` block filled (`grown_extents`), listed when it ends, for
    `collapse` to collapse then or later (e.g. on another thread, so the block's caller does not wait for the
    kernel's compaction). Empty where nothing can be collapsed; a failure to read /proc is kept in
    ``result.failed`` (never raised: a speed hint must not fail the block)."""
    extents: list[int] = []
    libc = _libc()
    if libc is None or thp_mode() not in ("always", "madvise"):
        yield extents
        return
    try:
        # glibc's malloc_trim; musl has none (its free pages are not reused alike)
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
        before = resident_pages(anonymous_ranges())
    except Exception as exc:
        result.failed = f"{type(exc).__name__}: {exc}"
        yield extents
        return
    yield extents
    try:
        extents.extend(grown_extents(before, resident_pages(anonymous_ranges())))
    except Exception as exc:
        result.failed = f"{type(exc).__name__}: {exc}"


def collapse(extents: list[int], result: HugePages) -> HugePages:
    """Ask the kernel to collapse each extent (``MADV_COLLAPSE``), for at most ``MAX_COLLAPSE_SECONDS``; what it
    did is added to ``result``. An extent unmapped or reused since it was listed is refused or collapsed as it is
    now: only its page size changes, never its bytes."""
    libc = _libc()
    if libc is None or not extents:
        return result
    try:
        deadline = _clock() + MAX_COLLAPSE_SECONDS
        for start in extents:
            if _clock() > deadline:
                result.failed = (
                    f"stopped after {MAX_COLLAPSE_SECONDS:g} s (the kernel's reclaim or compaction)"
                )
                break
            result.tried += 1
            if libc.madvise(start, HUGE_PAGE, MADV_COLLAPSE) == 0:
                result.extents.append(start)
            else:  # e.g. ENOMEM/EAGAIN: no free 2 MiB page right now; EINVAL: THP disabled for this process
                error = ctypes.get_errno()
                result.refused[error] = result.refused.get(error, 0) + 1
    except Exception as exc:
        result.failed = f"{type(exc).__name__}: {exc}"
    return result


def huge_page_bytes(extents: list[int], smaps: Path = Path("/proc/self/smaps")) -> int:
    """Bytes of THP-backed memory (``AnonHugePages``) in the mappings holding any of ``extents``."""
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return 0
    total = 0
    holds = False
    for line in lines:
        head = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(value, 16) for value in head.split("-"))
            holds = any(lo <= start < hi for start in extents)
        elif holds and head == "AnonHugePages:":
            total += int(line.split()[1]) * 1024
    return total
