"""HTML extraction speed: the service's html_to_text (block segmentation inside lexbor) side by side with the
node-by-node tree walk it replaced (tests/service/html_reference.py) and BeautifulSoup's html.parser (the
first implementation), on the same generated page, in this process and through the extraction worker pool.

    .venv/bin/python bench/extract_html.py [--sections 100] [--reps 15] [--write docs/benchmarks.md]
    .venv/bin/python bench/extract_html.py --budget [--reps 20]

In-process: the three run interleaved (A, B, C, A, B, C...), median wall time of ``--reps`` each (BeautifulSoup,
~100x slower, only ``--bs4-reps``); no tracing while timing (tracemalloc slowed the walk's per-node Python
objects several-fold in the first version of this script). Through the workers: the service's Extractor (pebble
pool on the forkserver, budgets on) against a pool built the same way running the walk, interleaved. Memory:
each implementation in a fresh process, max RSS growth, on a larger page (``--memory-sections``). ``--write`` puts the table, with the machine, date and
load, between the extract-html markers in the file.

``--budget`` measures what the extraction budgets (service.app.ingest.sandbox) cost and rest on: the wall time
per document in-process against through a budgeted worker, interleaved document by document (median of
``--reps``), and the CPU time of pathological HTML (nesting, misnested formatting, lists...) at the sizes the
in-process threshold (EXTRACT_INLINE_MAX_BYTES) may take, which bounds what a document parsed without a
budget can cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bs4 import BeautifulSoup  # noqa: E402
from bs4.element import NavigableString, Tag  # noqa: E402
from sections import replace_section  # noqa: E402

from service.app.ingest.extract import BLOCK_TAGS, DROPPED_TAGS, html_to_text  # noqa: E402
from tests.service.html_reference import benchmark_page, walk_html_to_text  # noqa: E402

START = "<!-- extract-html:start -->"
END = "<!-- extract-html:end -->"


def bs4_html_to_text(html: str) -> str:
    """The extraction the service used before (BeautifulSoup, html.parser), kept here as the baseline."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(DROPPED_TAGS):
        tag.decompose()
    blocks: list[str] = []
    current: list[str] = []

    def flush() -> None:
        line = re.sub(r"\s+", " ", "".join(current)).strip()
        if line:
            blocks.append(line)
        current.clear()

    marker = object()
    stack: list[object] = list(reversed(list(soup.children)))
    while stack:
        node = stack.pop()
        if node is marker:
            flush()
        elif isinstance(node, NavigableString):
            if type(node) is NavigableString:
                current.append(str(node))
        elif isinstance(node, Tag):
            if node.name in BLOCK_TAGS:
                flush()
                stack.append(marker)
            stack.extend(reversed(list(node.children)))
    flush()
    return "\n\n".join(blocks)


PATHOLOGICAL = {
    "nested <div>": "<div>x",
    "nested <span>": "<span>x",
    "misnested <b><i>": "<b><i>x</b>",
    "<a> around <p>": "<a>x<p>",
    "table cells": "<table><tr><td>",
    "<li> runs": "<li>x",
    "<p> runs": "<p>x",
    "50 attributes": "<p " + " ".join(f"a{i}=1" for i in range(50)) + ">",
    "plain text": "hello world ",
}


def budget(reps: int) -> None:
    from service.app.core.config import Settings
    from service.app.ingest.sandbox import Extractor

    print("worst-case CPU of HTML parsed in-process (ms of CPU, this process):")
    sizes = (4096, 16384, 65536)
    print(f"{'pattern':<20}" + "".join(f"{size // 1024:>8} KiB" for size in sizes))
    for name, unit in PATHOLOGICAL.items():
        cells = []
        for size in sizes:
            html = (unit * (size // len(unit) + 1))[:size]
            started = time.process_time()
            html_to_text(html)
            cells.append(f"{(time.process_time() - started) * 1000:12.1f}")
        print(f"{name:<20}" + "".join(cells))

    async def compare() -> None:
        extractor = Extractor(Settings(_env_file=None))
        try:
            await extractor.html(
                benchmark_page(5) * 2
            )  # start the forkserver and the workers outside the measurement
            print("\nwall time per document, median of", reps, "(interleaved):")
            print(f"{'document':>12} {'in-process':>12} {'worker':>12} {'overhead':>10}")
            for sections in (1, 4, 16, 64, 256):
                html = benchmark_page(sections)
                inline: list[float] = []
                isolated: list[float] = []
                for _ in range(reps):
                    started = time.perf_counter()
                    html_to_text(html)
                    inline.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await extractor._run_isolated("html", html, "text/html")
                    isolated.append(time.perf_counter() - started)
                a, b = statistics.median(inline), statistics.median(isolated)
                print(
                    f"{len(html.encode()) / 1024:>8.0f} KiB {a * 1000:>9.1f} ms {b * 1000:>9.1f} ms "
                    f"{(b - a) * 1000:>7.1f} ms"
                )
        finally:
            extractor.close()

    asyncio.run(compare())


IMPLEMENTATIONS: dict[str, Callable[[str], str]] = {
    "service": html_to_text,
    "walk": walk_html_to_text,
    "bs4": bs4_html_to_text,
}
LABELS = {
    "service": "`html_to_text`: segmentation in lexbor (now)",
    "walk": "tree walk in Python over lexbor (before)",
    "bs4": "BeautifulSoup html.parser (first)",
}


def in_process(html: str, reps: int, bs4_reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds per implementation, interleaved. CPU time is the steadier figure on a
    shared machine (a process waiting for a core accrues wall time, not CPU time)."""
    wall: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    cpu: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for rep in range(reps):
        for name, extract in IMPLEMENTATIONS.items():
            if name == "bs4" and rep >= bs4_reps:
                continue
            started, started_cpu = time.perf_counter(), time.process_time()
            extract(html)
            cpu[name].append(time.process_time() - started_cpu)
            wall[name].append(time.perf_counter() - started)
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


def _walk_in_worker(html: str) -> str:
    return walk_html_to_text(html)


def through_workers(html: str, reps: int) -> dict[str, float]:
    """Median wall seconds per document through a budgeted worker: the service's Extractor, and the walk in a
    pool started the same way (forkserver, the sandbox's initializer), interleaved."""
    from pebble import ProcessPool

    from service.app.core.config import Settings
    from service.app.ingest.sandbox import Extractor, _init_worker

    async def run() -> dict[str, float]:
        settings = Settings(_env_file=None, extract_workers=1)
        extractor = Extractor(settings)
        pool = ProcessPool(
            max_workers=1,
            initializer=_init_worker,
            initargs=(settings.extract_memory_mb * 1024 * 1024,),
            context=extractor._context(),
        )
        times: dict[str, list[float]] = {"service": [], "walk": []}
        try:
            await extractor._run_isolated("html", html, "text/html")  # start the workers outside the timing
            await asyncio.wrap_future(pool.schedule(_walk_in_worker, args=(html,)))
            for _ in range(reps):
                started = time.perf_counter()
                await extractor._run_isolated("html", html, "text/html")
                times["service"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await asyncio.wrap_future(pool.schedule(_walk_in_worker, args=(html,)))
                times["walk"].append(time.perf_counter() - started)
        finally:
            extractor.close()
            pool.stop()
            pool.join(timeout=10)
        return {name: statistics.median(values) for name, values in times.items()}

    return asyncio.run(run())


def memory_of(name: str, sections: int) -> float:
    """Max RSS growth (MB) of one extraction in a fresh process."""
    output = subprocess.run(
        [sys.executable, __file__, "--memory-of", name, "--sections", str(sections)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output.split()[-1])


def _measure_memory(name: str, sections: int) -> None:
    html = benchmark_page(sections)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    IMPLEMENTATIONS[name](html)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def report(sections: int, reps: int, bs4_reps: int, worker_reps: int, memory_sections: int) -> str:
    html = benchmark_page(sections)
    megabytes = len(html.encode()) / 1e6
    texts = {name: extract(html) for name, extract in IMPLEMENTATIONS.items()}
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    inline, inline_cpu = in_process(html, reps, bs4_reps)
    pooled = through_workers(html, worker_reps)
    memory = {name: memory_of(name, memory_sections) for name in ("service", "walk")}
    load_after = os.getloadavg()
    rows = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, niced, load "
        f"average {load_before[0]:.1f} before and {load_after[0]:.1f} after (shared machine: compare within the "
        f"table). Page: `benchmark_page({sections})`, {megabytes:.2f} MB; medians of {reps} interleaved runs "
        f"in-process ({bs4_reps} for BeautifulSoup) and {worker_reps} through a worker (wall time: pickling, "
        f"the pipe and the worker's parse). Memory: max RSS growth of one extraction of "
        f"`benchmark_page({memory_sections})` ({len(benchmark_page(memory_sections).encode()) / 1e6:.1f} MB) in "
        "a fresh process (not BeautifulSoup's: minutes at that size).",
        "",
        "| Implementation | In-process wall | MB/s | In-process CPU | MB/s | Through a worker | MB/s "
        "| Max RSS growth | Same text as the walk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in IMPLEMENTATIONS:
        worker = (
            f"{pooled[name] * 1000:,.1f} ms | {megabytes / pooled[name]:.1f}" if name in pooled else "- | -"
        )
        rows.append(
            f"| {LABELS[name]} | {inline[name] * 1000:,.1f} ms | {megabytes / inline[name]:.1f} | "
            f"{inline_cpu[name] * 1000:,.1f} ms | {megabytes / inline_cpu[name]:.1f} | {worker} | "
            f"{f'{memory[name]:.0f} MB' if name in memory else '-'} | "
            f"{'yes' if texts[name] == texts['walk'] else 'no'} |"
        )
    rows += [
        "",
        f"Speed-up of `html_to_text`: {inline['walk'] / inline['service']:.1f}x the walk "
        f"({inline_cpu['walk'] / inline_cpu['service']:.1f}x in CPU time) and "
        f"{inline['bs4'] / inline['service']:.0f}x BeautifulSoup in-process, "
        f"{pooled['walk'] / pooled['service']:.1f}x the walk through a worker.",
    ]
    return "\n".join([START, "", *rows, "", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", type=int, default=100)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--bs4-reps", type=int, default=3)
    parser.add_argument("--worker-reps", type=int, default=15)
    parser.add_argument("--memory-sections", type=int, default=2000, help="page size for the memory column")
    parser.add_argument(
        "--write", type=Path, help="put the table into this Markdown file (extract-html markers)"
    )
    parser.add_argument("--budget", action="store_true", help="measure the extraction budgets' costs instead")
    parser.add_argument("--memory-of", choices=sorted(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        _measure_memory(args.memory_of, args.sections)
        return
    if args.budget:
        budget(args.reps)
        return
    table = report(args.sections, args.reps, args.bs4_reps, args.worker_reps, args.memory_sections)
    print(table)
    if args.write:
        replace_section(args.write, table, START, END)


if __name__ == "__main__":
    main()
