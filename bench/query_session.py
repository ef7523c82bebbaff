"""ONNX Runtime session options for the int8 query graph: CPU per query with distinct texts (docs/benchmarks.md).

    python bench/query_session.py --texts 300 --rounds 3

One session per variant of the service's options (``FastEmbedEmbedder._session_options(1)``: one intra-op thread,
no spinning, every graph optimisation, sequential execution, the dynamic block base) on ``model_query_int8.onnx``.
Texts are distinct query-like sentences (bench/scale.py's: first sentences of standard-library docstrings),
tokenized once outside the timing; each round runs every text once through every variant, the variants in a
shuffled order per text, so the load of other processes hits all alike. Reported: CPU per run (the calling
thread's ``time.thread_time`` over the run, plus the CPU of that variant's own intra-op pool threads from
``/proc/self/task/*/schedstat`` over the run and a ``--settle-ms`` pause after it, so what a spinning thread burns
after the run is counted, and counted for its own variant: until stop 20 this was ``time.process_time`` of the
whole process around the run alone, so a spinning variant's tail landed on whichever variant ran next), p50 and
mean, and the wall p50;
plus the largest difference of any vector from the baseline's (the options must not change the numbers).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402

from service.app.store.embedder import QUERY_INT8_FILE, FastEmbedEmbedder  # noqa: E402


def variants() -> dict[str, ort.SessionOptions]:
    def base() -> ort.SessionOptions:
        return FastEmbedEmbedder._session_options(1)

    out: dict[str, ort.SessionOptions] = {"service (1 thread)": base()}
    o = base()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    out["graph EXTENDED"] = o
    o = base()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    out["graph BASIC"] = o
    o = base()
    o.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    out["execution PARALLEL"] = o
    o = base()
    o.enable_mem_pattern = False
    out["no mem pattern"] = o
    o = base()
    o.enable_cpu_mem_arena = False
    out["no CPU arena"] = o
    o = base()
    o.add_session_config_entry("session.set_denormal_as_zero", "1")
    out["denormal as zero"] = o
    o = base()
    o.add_session_config_entry("session.intra_op.allow_spinning", "1")
    out["spinning on"] = o
    o = FastEmbedEmbedder._session_options(2)
    out["2 threads"] = o
    o = FastEmbedEmbedder._session_options(2)
    o.add_session_config_entry("session.intra_op.allow_spinning", "1")
    out["2 threads, spinning"] = o
    # onnxruntime 1.31's bounded spin (stop 20): the second thread spins at most this long between parallel
    # sections, so it stays awake through a run's ~36 GEMMs and sleeps soon after the run ends.
    for microseconds in (50, 200):
        o = FastEmbedEmbedder._session_options(2)
        o.add_session_config_entry("session.intra_op.allow_spinning", "1")
        o.add_session_config_entry("session.intra_op.spin_duration_us", str(microseconds))
        out[f"2 threads, spin {microseconds} us"] = o
    return out


def thread_ids() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def threads_cpu(tids: list[int]) -> float:
    """CPU seconds the given threads of this process have run (schedstat: nanoseconds, not 10 ms ticks)."""
    total = 0
    for tid in tids:
        with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as stat:
            total += int(stat.read().split()[0])
    return total / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=2.0,
        help="pause inside each run's CPU window, so a spinning variant's tail is counted as its own",
    )
    parser.add_argument("--only", default="", help="variant names separated by ';' (names contain commas)")
    args = parser.parse_args()
    embedder = FastEmbedEmbedder(scale.MODEL, model_path=scale.MODEL_DIR, query_precision="int8")
    tokenizer = embedder._model.model.tokenizer
    docs = scale.stdlib_docstrings(args.texts * 2, random.Random(args.seed))
    texts = list(dict.fromkeys(doc.split(".")[0][:200] for doc in docs))[: args.texts]
    feeds = []
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds.append(
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        )
    path = str(scale.MODEL_DIR / QUERY_INT8_FILE)
    chosen = variants()
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(";")}
    sessions, pools = {}, {}
    for name, o in chosen.items():
        before = thread_ids()
        sessions[name] = ort.InferenceSession(path, sess_options=o, providers=["CPUExecutionProvider"])
        pools[name] = sorted(thread_ids() - before)  # the session's intra-op pool threads (none at 1 thread)
    output = ["last_hidden_state"]
    for session in sessions.values():  # first-run costs out of the way
        session.run(output, feeds[0])
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    drift: dict[str, float] = dict.fromkeys(sessions, 0.0)
    reference = [next(iter(sessions.values())).run(output, f)[0] for f in feeds]
    rng = random.Random(args.seed)
    load_before = os.getloadavg()[0]
    names = list(sessions)
    for _ in range(args.rounds):
        for i, feed in enumerate(feeds):
            rng.shuffle(names)
            for name in names:
                own = pools[name]
                c0, p0, w0 = time.thread_time(), threads_cpu(own), time.perf_counter()
                out = sessions[name].run(output, feed)[0]
                wall[name].append(time.perf_counter() - w0)
                c1 = time.thread_time()
                # A spinning pool thread keeps burning CPU after the run returns: its tail is this variant's.
                time.sleep(args.settle_ms / 1000)
                cpu[name].append(c1 - c0 + threads_cpu(own) - p0)
                drift[name] = max(drift[name], float(np.abs(out - reference[i]).max()))
    tokens = [f["input_ids"].shape[1] for f in feeds]
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"onnxruntime {ort.__version__}, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after; "
        f"{len(feeds)} distinct texts (median {int(np.median(tokens))} tokens) x {args.rounds} rounds"
    )
    base = float(np.median(cpu["service (1 thread)"])) if "service (1 thread)" in cpu else None
    print("| variant | CPU ms p50 | CPU ms mean | ratio (p50) | wall ms p50 | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name in sessions:
        p50 = float(np.median(cpu[name]))
        ratio = f"{p50 / base:.2f}x" if base else "-"
        print(
            f"| {name} | {p50 * 1000:.3f} | {np.mean(cpu[name]) * 1000:.3f} | {ratio} "
            f"| {np.median(wall[name]) * 1000:.3f} | {drift[name]:.1e} |"
        )


if __name__ == "__main__":
    main()
