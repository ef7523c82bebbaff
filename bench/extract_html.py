"""HTML extraction speed and peak memory: the service's html_to_text (selectolax/lexbor) against the previous
BeautifulSoup html.parser walk, on the same generated page, run side by side in this process.

    .venv/bin/python bench/extract_html.py [--sections 400]
    .venv/bin/python bench/extract_html.py --budget [--reps 20]

Prints MB/s, seconds and peak Python allocation (tracemalloc; lexbor's own C memory is not traced, so the RSS
growth is printed too) for each, the speed-up, and whether both give the same text. Results: docs/benchmarks.md.

``--budget`` measures what the extraction budgets (service.app.ingest.sandbox) cost and rest on: the wall time
per document in-process against through a budgeted worker, interleaved document by document (median of
``--reps``), and the CPU time of pathological HTML (nesting, misnested formatting, lists...) at the sizes the
in-process threshold (EXTRACT_INLINE_MAX_BYTES) may take, which bounds what a document parsed without a
budget can cost.
"""

from __future__ import annotations

import argparse
import re
import resource
import time
import tracemalloc
from collections.abc import Callable

from bs4 import BeautifulSoup
from bs4.element import NavigableString, Tag

from service.app.ingest.extract import BLOCK_TAGS, DROPPED_TAGS, html_to_text


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


def page(sections: int) -> str:
    para = (
        "<p>Basalt columns form when <b>thick</b> lava flows cool slowly and <a href='#'>contract</a>.</p>\n"
    )
    body = "".join(
        f"<section><h2>Section {i}</h2>{para * 20}<ul>{'<li>item &amp; more</li>' * 10}</ul>"
        "<table><tr><td>cell</td><td>cell</td></tr></table></section>"
        for i in range(sections)
    )
    return f"<html><head><style>p{{}}</style><script>var x=1;</script></head><body>{body}</body></html>"


def measure(name: str, extract: Callable[[str], str], html: str) -> tuple[float, str]:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    text = extract(html)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    size = len(html.encode()) / 1e6
    print(
        f"{name:<28} {size / elapsed:8.2f} MB/s  {elapsed:7.2f} s  peak Python alloc {peak / 1e6:6.0f} MB  "
        f"max RSS growth {rss_growth / 1024:6.0f} MB"
    )
    return elapsed, text


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
    import asyncio
    import statistics

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
            await extractor.html(page(5) * 2)  # start the forkserver and the workers outside the measurement
            print("\nwall time per document, median of", reps, "(interleaved):")
            print(f"{'document':>12} {'in-process':>12} {'worker':>12} {'overhead':>10}")
            for sections in (1, 4, 16, 64, 256):
                html = page(sections)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", type=int, default=400)
    parser.add_argument("--budget", action="store_true", help="measure the extraction budgets' costs instead")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    if args.budget:
        budget(args.reps)
        return
    html = page(args.sections)
    print(f"page: {len(html.encode()) / 1e6:.2f} MB")
    new, new_text = measure("selectolax (service)", html_to_text, html)
    old, old_text = measure("BeautifulSoup html.parser", bs4_html_to_text, html)
    print(f"speed-up: {old / new:.1f}x; same text: {new_text == old_text}")


if __name__ == "__main__":
    main()
