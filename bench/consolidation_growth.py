"""What each consolidation costs under steady ingest once the shard holds a merged segment, per layout.

    python bench/consolidation_growth.py --cache DIR --work DIR --base 100000 --step 10240 --rounds 3 \\
        --layout one:64:102400 --layout five:32:30720

Per layout (``name:m:cap``: links per point and ``EDGE_CONSOLIDATE_SEGMENT_POINTS``), on the same points (bench/
scale.py's corpus replicated by bench/segment_builds.py's draw ``--seed``): a fresh process writes ``--base``
points through ``EdgeVectorStore``'s bounded indexing (int8, the service's ``EDGE_SEGMENT_POINTS`` and chunk), a
fresh process consolidates them (``EdgeVectorStore.consolidate()``: the real child and swap). Then ``--rounds``
times: a fresh process writes ``--step`` more points the same way, and a fresh process asks
``consolidation_due()`` and consolidates. Each consolidation is measured from its small fresh parent
(``RUSAGE_CHILDREN``: the child's CPU seconds and peak RSS; a large parent would inflate the RSS with its fork
image) with its wall seconds, whether it merged ("swapped") or found nothing within the cap ("unchanged"), the
segments before and after, and how many of the segment directories before it are still there after it (a merged
segment left alone survives; one taken into the merge does not).

A layout spec may end in ``:always`` (stop 19's decision: every due consolidation starts a child, whatever
`merge_worthwhile` says) and ``--interleave`` runs the layouts' rounds alternately on copies of ONE base shard
(written and first merged once, by the first layout), so a loaded machine weighs on both alike; a last line per
layout sums the child CPU per 1,000 points written and the highest child peak RSS over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import segment_builds  # noqa: E402

from service.app.store import edge  # noqa: E402
from service.app.store.edge import EdgeVectorStore  # noqa: E402
from service.app.store.vectors import ChunkPoint  # noqa: E402


def segment_dirs(shard: Path) -> set[str]:
    return {p.name for p in (shard / "segments").iterdir()} if (shard / "segments").is_dir() else set()


def write(args: argparse.Namespace) -> None:
    """(Fresh process) points [start, start+count) of the draw, through the service's bounded indexing."""
    import scale

    vectors, tenants, _ = segment_builds.corpus(args.cache, args.seed, args.start + args.count, 0)
    edge.HNSW_M = args.m
    store = EdgeVectorStore(
        Path(args.dest), collection="c", dimension=384, optimize_idle_seconds=None, quantization=True
    )
    store.ensure_collection()
    started, cpu = time.perf_counter(), time.process_time()
    for first in range(args.start, args.start + args.count, store.optimize_chunk_points):
        last = min(first + store.optimize_chunk_points, args.start + args.count)
        store.upsert(
            [
                ChunkPoint(
                    tenant_id=str(tenants[i]),
                    document_id=f"doc-{i // 10}",
                    version=1,
                    chunk_index=i % 10,
                    text="stdlib text " * 20,
                    vector=vectors[i].tolist(),
                    metadata={"source": "stdlib"},
                    content_hash="bench",
                    model=scale.MODEL,
                )
                for i in range(first, last)
            ]
        )
        store.optimize()
    segments = store.shard.info().segments_count
    store.close()
    print(
        json.dumps(
            {
                "write_seconds": time.perf_counter() - started,
                "write_cpu_seconds": time.process_time() - cpu,
                "segments": segments,
            }
        ),
        flush=True,
    )


def merge(args: argparse.Namespace) -> None:
    """(Fresh process) one consolidation at ``--cap`` with ``--m`` links; its costs and what it left."""
    edge.HNSW_M = args.m
    edge.HNSW_EF_CONSTRUCT += args.ef_delta  # another ef_construct than the segments': no graph is reused
    store = EdgeVectorStore(
        Path(args.dest),
        collection="c",
        dimension=384,
        optimize_idle_seconds=None,
        consolidate_idle_seconds=3600,
        consolidate_segment_points=args.cap,
        quantization=True,
    )
    store.ensure_collection()
    if args.always:  # stop 19's decision: a child whenever a consolidation is due
        store._merge_worthwhile = lambda: True  # type: ignore[method-assign]
    info = store.shard.info()
    before = segment_dirs(Path(args.dest))
    due = store.consolidation_due()
    started = time.perf_counter()
    swapped = store.consolidate()
    seconds = time.perf_counter() - started
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_info = store.shard.info()
    store.close()
    after = segment_dirs(Path(args.dest))
    print(
        json.dumps(
            {
                "points": info.points_count,
                "due": due,
                "swapped": swapped,
                "seconds": seconds,
                "child_cpu_seconds": child.ru_utime + child.ru_stime,
                "child_peak_rss_mb": child.ru_maxrss / 1024,
                "segments_before": info.segments_count,
                "segments_after": after_info.segments_count,
                "dirs_kept": len(before & after),
                "dirs_before": len(before),
            }
        ),
        flush=True,
    )


def step(
    args: argparse.Namespace,
    what: str,
    dest: Path,
    m: int,
    cap: int,
    start: int,
    count: int,
    ef_delta: int = 0,
    always: bool = False,
) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            what,
            *("--cache", str(args.cache), "--work", str(args.work), "--seed", str(args.seed)),
            *(
                "--dest",
                str(dest),
                "--m",
                str(m),
                "--cap",
                str(cap),
                "--start",
                str(start),
                "--count",
                str(count),
            ),
            *("--ef-delta", str(ef_delta)),
            *(["--always"] if always else []),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="base.npy (bench/scale.py's --cache)")
    parser.add_argument("--work", type=Path, required=True, help="scratch (one shard per layout; removed)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--base", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=edge.SEGMENT_POINTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--layout",
        action="append",
        default=[],
        help="name:m:cap, or name:m:cap:rebuild (every other merge's ef_construct one higher: no graph reused)",
    )
    for hidden in ("--write-one", "--merge-one"):
        parser.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--dest", "--m", "--cap", "--start", "--count"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--ef-delta", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--always", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--interleave", action="store_true", help="alternate the layouts' rounds (one base)")
    args = parser.parse_args()
    if args.write_one or args.merge_one:
        args.m, args.cap, args.start, args.count = (
            int(args.m),
            int(args.cap),
            int(args.start),
            int(args.count),
        )
        (write if args.write_one else merge)(args)
        return
    layouts = [
        (n, int(m), int(c), "rebuild" in rest, "always" in rest)
        for n, m, c, *rest in (s.split(":") for s in args.layout or ["one:64:102400"])
    ]
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; base {args.base:,}, step {args.step:,}"
    )
    print(
        "| layout | points before | due | outcome | child CPU s | wall s | child peak RSS MB | segments | kept dirs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    if args.interleave:
        interleaved(args, layouts)
        return
    for name, m, cap, rebuild, always in layouts:
        shard = args.work / name / "c"
        shutil.rmtree(shard.parent, ignore_errors=True)
        shard.parent.mkdir(parents=True)
        written = step(args, "--write-one", shard, m, cap, 0, args.base)
        print(f"<!-- {name} base write: {json.dumps(written)} -->", flush=True)
        total = args.base
        for round_ in range(args.rounds + 1):
            if round_:
                written = step(args, "--write-one", shard, m, cap, total, args.step)
                total += args.step
                print(f"<!-- {name} write {round_}: {json.dumps(written)} -->", flush=True)
            got = step(
                args,
                "--merge-one",
                shard,
                m,
                cap,
                0,
                0,
                ef_delta=round_ % 2 if rebuild else 0,
                always=always,
            )
            row(name, m, cap, got)
        shutil.rmtree(shard.parent, ignore_errors=True)


def row(name: str, m: int, cap: int, got: dict) -> None:
    print(
        f"| {name} (m {m}, cap {cap:,}) | {got['points']:,} | {got['due']} "
        f"| {'swapped' if got['swapped'] else 'not swapped'} | {got['child_cpu_seconds']:.1f} "
        f"| {got['seconds']:.1f} | {got['child_peak_rss_mb']:.0f} "
        f"| {got['segments_before']} -> {got['segments_after']} | {got['dirs_kept']}/{got['dirs_before']} "
        f"| load {got['load']} |",
        flush=True,
    )


def interleaved(args: argparse.Namespace, layouts: list[tuple[str, int, int, bool, bool]]) -> None:
    """One base (the first layout's write and first merge), copied per layout; then round by round, each layout
    in turn writes the same ``--step`` points and consolidates."""
    first = args.work / layouts[0][0] / "c"
    for name, *_ in layouts:
        shutil.rmtree(args.work / name, ignore_errors=True)
    first.parent.mkdir(parents=True)
    name, m, cap, _, always = layouts[0]
    print(f"<!-- base write: {json.dumps(step(args, '--write-one', first, m, cap, 0, args.base))} -->")
    row(f"{name} (first merge)", m, cap, step(args, "--merge-one", first, m, cap, 0, 0, always=always))
    for name, *_ in layouts[1:]:
        shutil.copytree(first.parent, args.work / name, copy_function=edge.copy_sparse)
    totals = {name: [0.0, 0.0, 0, 0] for name, *_ in layouts}  # child CPU, peak RSS, children, written
    total = args.base
    for _ in range(args.rounds):
        for name, m, cap, _, always in layouts:
            shard = args.work / name / "c"
            step(args, "--write-one", shard, m, cap, total, args.step)
            got = step(args, "--merge-one", shard, m, cap, 0, 0, always=always)
            row(name, m, cap, got)
            summary = totals[name]
            summary[0] += got["child_cpu_seconds"]
            summary[1] = max(summary[1], got["child_peak_rss_mb"])
            summary[2] += got["child_peak_rss_mb"] > 0
            summary[3] += args.step
        total += args.step
    for name, (cpu, rss, children, written) in totals.items():
        print(
            f"<!-- {name}: {cpu:.1f} s child CPU over {written:,} points written "
            f"({cpu / written * 1000:.2f} s per 1,000), {children} children, peak RSS {rss:.0f} MB -->"
        )
    for name, *_ in layouts:
        shutil.rmtree(args.work / name, ignore_errors=True)


if __name__ == "__main__":
    main()
