"""Chunking speed on hostile text: MB/s of ``Chunker.split`` per kind of text, the current sentence scanner side
by side with the backtracking one it replaced.

    .venv/bin/python bench/chunking.py [--sizes 65536,1048576] [--reps 3] [--write docs/benchmarks.md]

Each kind of text (prose, a run of one letter, base64, CJK, runs of dots, letters mixed with punctuation) is
split by the service's Chunker (the offline model's tokenizer, CHUNK_SIZE 200) with the current
``SENTENCE_END`` and with the previous pattern swapped in, interleaved (A, B, A, B...), best CPU time of
``--reps`` (CPU, not wall time, so other jobs on a shared machine move the numbers less; the tokenizer is
pinned to one thread with RAYON_NUM_THREADS=1). The previous pattern is quadratic on a run of sentence marks not
followed by whitespace; it is timed only up to ``--old-max-quadratic`` bytes on such text and its cost at the
larger sizes is printed as an extrapolation. ``--write`` puts the table, with the machine, date and load,
between the chunking markers in the file.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import random
import re
import string
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sections import replace_section  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from service.app.core.config import DEFAULT_MODEL_DIR  # noqa: E402
from service.app.ingest import chunking  # noqa: E402

START = "<!-- chunking:start -->"
END = "<!-- chunking:end -->"
# The sentence scanner before 2026-11-26: backtracks over a run of marks once per starting position.
OLD_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)|\n")
QUADRATIC_KINDS = {"dots"}


def texts(size: int) -> dict[str, str]:
    """``size`` characters of each kind of text (CJK: ``size // 3`` characters, about ``size`` UTF-8 bytes)."""
    rng = random.Random(13)
    prose = (REPO / "README.md").read_text(encoding="utf-8")
    return {
        "prose (README)": (prose * (size // len(prose) + 1))[:size],
        "one letter, no space": "a" * size,
        "base64": base64.b64encode(rng.randbytes(size * 3 // 4)).decode()[:size],
        "CJK": "".join(chr(0x4E00 + rng.randrange(2000)) for _ in range(size // 3)),
        "dots": "." * size,
        "letters + punctuation": "".join(rng.choice(string.ascii_letters + "-./_:") for _ in range(size)),
    }


def cpu_seconds(split: Callable[[str], object], text: str, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        split(text)
        best = min(best, time.process_time() - start)
    return best


def measure(chunker: chunking.Chunker, text: str, reps: int, pattern: re.Pattern[str]) -> float:
    saved = chunking.SENTENCE_END
    chunking.SENTENCE_END = pattern
    try:
        return cpu_seconds(chunker.split, text, reps)
    finally:
        chunking.SENTENCE_END = saved


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def report(sizes: list[int], reps: int, old_max: int) -> str:
    tokenizer = Tokenizer.from_file(str(REPO / DEFAULT_MODEL_DIR / "tokenizer.json"))
    chunker = chunking.Chunker(tokenizer, max_tokens=256, chunk_size=200, chunk_overlap=40)
    load_before = os.getloadavg()
    rows = []
    for size in sizes:
        for kind, text in texts(size).items():
            megabytes = len(text.encode()) / 1e6
            new = old = float("inf")
            quadratic = kind in QUADRATIC_KINDS and size > old_max
            for _ in range(reps):  # interleaved: A, B, A, B ...
                new = min(new, measure(chunker, text, 1, chunking.SENTENCE_END))
                if not quadratic:
                    old = min(old, measure(chunker, text, 1, OLD_SENTENCE_END))
            if quadratic:
                probe = texts(old_max)[kind]
                probe_seconds = measure(chunker, probe, 1, OLD_SENTENCE_END)
                old = probe_seconds * (len(text) / len(probe)) ** 2
            old_cell = f"{megabytes / old:.3g}" + (
                f" ({_duration(old)} for this text, extrapolated: quadratic)" if quadratic else ""
            )
            rows.append(
                f"| {kind} | {megabytes:.2f} | {len(chunker.split(text))} | {megabytes / new:.2f} | "
                f"{old_cell} | {old / new:.1f}x |"
            )
            print(rows[-1], flush=True)
    load_after = os.getloadavg()
    header = (
        f"{START}\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
        f"load {load_before[0]:.1f} before, {load_after[0]:.1f} after; best CPU time of {reps}, tokenizer on "
        "one thread.\n\n"
        "| text | MB | chunks | MB/s (now) | MB/s (backtracking scanner) | speed-up |\n"
        "|---|---:|---:|---:|---:|---:|\n"
    )
    return header + "\n".join(rows) + f"\n{END}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="65536,1048576", help="text sizes in bytes, comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--old-max-quadratic",
        type=int,
        default=16384,
        help="largest quadratic input timed with the old scanner",
    )
    parser.add_argument("--write", type=Path, help="put the table into this Markdown file (chunking markers)")
    args = parser.parse_args()
    table = report([int(s) for s in args.sizes.split(",")], args.reps, args.old_max_quadratic)
    print(table)
    if args.write:
        replace_section(
            args.write, table, START, END, heading="## Chunking hostile text (`bench/chunking.py`)"
        )


if __name__ == "__main__":
    main()
