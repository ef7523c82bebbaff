"""The exported MiniLM graph: standard ONNX operators (the old `make model`) against ONNX Runtime's fused kernels.

    python bench/onnx_graph.py --write docs/benchmarks.md

Both graphs are exported from the same weights into a temporary directory (`export_minilm.export(fused=...)`)
and run through the service's own embedder (`FastEmbedEmbedder`: fastembed's tokenizer and pooling, the
service's ONNX session without intra-op spinning), side by side in this one process:

- **where the time goes**: ONNX Runtime's profiler (``SessionOptions.enable_profiling``), kernel time per
  operator type at 17 tokens batch 1 and at 200 tokens batch 4, and the time of a run outside any kernel
  (the executor's per-node overhead); and the residual LayerNorm kernels in isolation (why the exporter writes
  Sum + LayerNormalization rather than SkipLayerNormalization);
- **query latency**: `embed_query` (batch 1) with 1 and 2 intra-op threads, and queries embedded 4 at a time,
  wall and process CPU per query, over the labelled man-page queries (quality/queries.json);
- **document throughput**: chunks/s of `embed_documents` at `EMBEDDING_BATCH_SIZE` 4 on the CI man-page corpus
  chunked by the service's Chunker (ingest-like lengths: mostly ~200 tokens);
- **agreement**: the largest absolute difference of any vector component between the graphs, the smallest
  cosine, and whether exact dense top-k is identical, on the man-page corpus and on the test fixture corpus.

Timings are interleaved (old, new, old, new, ... in blocks), so background load hits both alike; every figure
comes with the new/old ratio and the load average before and after. Results replace the section between the
onnx-graph markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sections import replace_section  # noqa: E402

from service.app.core.config import Settings  # noqa: E402
from service.app.ingest.chunking import Chunker  # noqa: E402
from service.app.store.embedder import FastEmbedEmbedder  # noqa: E402
from service.tools import export_minilm  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
START = "<!-- onnx-graph:start -->"
END = "<!-- onnx-graph:end -->"
HEADING = "## The exported MiniLM graph: standard ONNX operators vs ONNX Runtime's fused kernels"
GRAPHS = ("standard", "fused")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def man_corpus() -> tuple[list[str], list[str]]:
    """(page texts, query texts) of the labelled man-page set: the CI corpus and every labelled query."""
    pages = json.loads((REPO / "quality" / "ci_corpus.json").read_text(encoding="utf-8"))["pages"]
    queries = json.loads((REPO / "quality" / "queries.json").read_text(encoding="utf-8"))["queries"]
    return [page["text"] for page in pages], [query["query"] for query in queries]


def fixture_corpus() -> tuple[list[str], list[str]]:
    """(document texts, query texts) of the service tests' fixture corpus."""
    corpus = json.loads((REPO / "tests" / "service" / "fixtures" / "corpus.json").read_text(encoding="utf-8"))
    texts = [document["text"] for document in corpus["documents"].values()]
    queries = [query if isinstance(query, str) else query["query"] for query in corpus["queries"]]
    return texts, queries


def chunks_of(embedder: FastEmbedEmbedder, texts: list[str]) -> list[str]:
    settings = Settings()
    chunker = Chunker(
        embedder.tokenizer,
        max_tokens=embedder.max_tokens,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
    )
    return [chunk.text for text in texts for chunk in chunker.split(text)]


# --- where the time goes: ONNX Runtime's profiler -------------------------------------------------------------


def profile(models: dict[str, Path], batch: int, seq: int, runs: int, tmp: Path) -> dict[str, dict]:
    """Profile every graph at 1 intra-op thread, their runs interleaved; per graph: run time (min and median),
    kernel time per operator type (each node's minimum over the runs, so preemption by other work on the machine
    drops out) and the node count."""
    sessions = {}
    for name, model in models.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp / f"profile-{name}-{batch}x{seq}")
        sessions[name] = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (batch, seq)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    warmup = 3
    for i in range(warmup + runs):
        for session in sessions.values() if i % 2 else reversed(sessions.values()):
            session.run(None, feed)
    results = {}
    for name, session in sessions.items():
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        run_us = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][warmup:]
        per_node: dict[str, list[int]] = collections.defaultdict(list)
        op_of = {}
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_node[event["name"]].append(event["dur"])
                op_of[event["name"]] = event["args"]["op_name"]
        by_op: collections.Counter[str] = collections.Counter()
        for node, durations in per_node.items():
            by_op[op_of[node]] += min(durations[warmup:])
        results[name] = {
            "run_min": min(run_us) / 1000,
            "run_median": float(np.median(run_us)) / 1000,
            "by_op": {op: us / 1000 for op, us in by_op.most_common()},
            "nodes": len(per_node),
        }
    return results


def profile_table(models: dict[str, Path], tmp: Path, quick: bool) -> list[str]:
    lines = []
    for batch, seq, runs in ((1, 17, 20 if quick else 60), (4, 200, 3 if quick else 8)):
        results = profile(models, batch, seq, runs, tmp)
        lines += [
            f"**{seq} tokens, batch {batch}, 1 intra-op thread** (ONNX Runtime profiler, {runs} runs of each graph "
            "interleaved; kernel time per operator type = the sum over its nodes of each node's fastest run):",
            "",
            "| graph | nodes run | run: fastest / median | kernels (sum of per-node fastest) | by operator |",
            "|---|---|---|---|---|",
        ]
        for name, r in results.items():
            kernels = sum(r["by_op"].values())
            ops = ", ".join(
                f"{op} {ms:.2f} ({ms / kernels:.0%})" for op, ms in r["by_op"].items() if ms >= 0.01 * kernels
            )
            small = sum(ms for ms in r["by_op"].values() if ms < 0.01 * kernels)
            lines.append(
                f"| {name} | {r['nodes']} | {r['run_min']:.2f} / {r['run_median']:.2f} ms | {kernels:.2f} ms | "
                f"{ops}, others {small:.2f} |"
            )
        old, new = results["standard"], results["fused"]
        lines += [
            "",
            f"fused / standard: fastest run {new['run_min'] / old['run_min']:.2f}x, median run "
            f"{new['run_median'] / old['run_median']:.2f}x, kernel sum "
            f"{sum(new['by_op'].values()) / sum(old['by_op'].values()):.2f}x.",
            "",
        ]
    return lines


def residual_norm_kernels(quick: bool) -> list[str]:
    """The residual LayerNorm three ways, in isolation: ONNX Runtime's SkipLayerNormalization kernel (what its
    optimizer fuses Add + Add + LayerNormalization into when it can prove the shapes), Add + Add +
    LayerNormalization with that fusion off, and Sum + LayerNormalization (what the exporter writes)."""
    from onnx import TensorProto, helper, numpy_helper

    hidden, chain = 384, 12
    rng = np.random.default_rng(0)
    constants = [
        numpy_helper.from_array(rng.random(hidden).astype(np.float32), name)
        for name in ("gamma", "beta", "bias")
    ]

    def session(kind: str) -> ort.InferenceSession:
        nodes, x, residual = [], "x", "r"
        for i in range(chain):
            out = "y" if i == chain - 1 else f"y{i}"
            if kind == "SkipLayerNormalization":
                nodes.append(
                    helper.make_node(
                        kind,
                        [x, residual, "gamma", "beta", "bias"],
                        [out],
                        domain="com.microsoft",
                        epsilon=1e-12,
                    )
                )
            else:
                if kind == "Sum + LayerNormalization":
                    nodes.append(helper.make_node("Sum", [x, "bias", residual], [f"s{i}"]))
                else:
                    nodes.append(helper.make_node("Add", [x, "bias"], [f"a{i}"]))
                    nodes.append(helper.make_node("Add", [f"a{i}", residual], [f"s{i}"]))
                nodes.append(
                    helper.make_node(
                        "LayerNormalization", [f"s{i}", "gamma", "beta"], [out], axis=-1, epsilon=1e-12
                    )
                )
            x, residual = out, x
        io = [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s", hidden]) for n in ("x", "r", "y")
        ]
        graph = helper.make_graph(nodes, "residual", io[:2], io[2:], initializer=constants)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        )
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )  # run exactly these nodes
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    kinds = ("SkipLayerNormalization", "Add + Add + LayerNormalization", "Sum + LayerNormalization")
    sessions = {kind: session(kind) for kind in kinds}
    lines = [
        "Residual LayerNorm kernels in isolation (a chain of 12, 1 thread, fastest of "
        f"{10 if quick else 30} interleaved repeats, process CPU per node):",
        "",
        "| shape | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for batch, seq, reps in ((1, 17, 20), (4, 200, 3)):
        feed = {n: rng.random((batch, seq, hidden)).astype(np.float32) for n in ("x", "r")}
        outputs = {kind: s.run(None, feed)[0] for kind, s in sessions.items()}
        for kind in kinds:
            assert np.abs(outputs[kind] - outputs[kinds[1]]).max() < 1e-4, kind  # the same math
        best = dict.fromkeys(kinds, float("inf"))
        for _ in range(10 if quick else 30):
            for kind, s in sessions.items():
                cpu = time.process_time()
                for _ in range(reps):
                    s.run(None, feed)
                best[kind] = min(best[kind], (time.process_time() - cpu) / reps / chain)
        lines.append(
            f"| [{batch}, {seq}, {hidden}] | " + " | ".join(f"{best[k] * 1000:.3f} ms" for k in kinds) + " |"
        )
    return [*lines, ""]


# --- timings through the service's embedder -----------------------------------------------------------------


def interleaved(
    calls: dict[str, object], blocks: list, rounds: int
) -> dict[str, tuple[float, float, int, list]]:
    """{graph: (wall s, process CPU s, items, per-block (wall, CPU))}: each block run by every graph in turn
    (the order alternating from block to block), `rounds` times."""
    totals: dict[str, list] = {name: [0.0, 0.0, 0, []] for name in calls}
    order = list(calls)
    for _ in range(rounds):
        for block in blocks:
            order.reverse()
            for name in order:
                wall, cpu = time.perf_counter(), time.process_time()
                calls[name](block)  # type: ignore[operator]
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                totals[name][0] += wall
                totals[name][1] += cpu
                totals[name][2] += len(block)
                totals[name][3].append((wall, cpu))
    return {name: tuple(values) for name, values in totals.items()}  # type: ignore[misc]


def paired_ratio(result: dict, column: int) -> float:
    """Median over blocks of fused time / standard time on the same block, run back to back."""
    pairs = zip(result["fused"][3], result["standard"][3], strict=True)
    return float(np.median([new[column] / old[column] for new, old in pairs]))


def timing_rows(dirs: dict[str, Path], queries: list[str], chunks: list[str], quick: bool) -> list[str]:
    rows = [
        "| workload | threads | standard: wall / CPU | fused: wall / CPU | fused / standard: wall, CPU |",
        "|---|---|---|---|---|",
    ]
    query_blocks = [queries[i : i + 8] for i in range(0, len(queries), 8)]
    chunk_blocks = [chunks[i : i + 8] for i in range(0, len(chunks), 8)]
    for threads in (1, 2):
        embedders = {
            name: FastEmbedEmbedder(MODEL, model_path=path, threads=threads, batch_size=4)
            for name, path in dirs.items()
        }
        for embedder in embedders.values():  # warm-up: first runs allocate the arenas
            embedder.embed_documents(chunks[:8])
            for text in queries[:8]:
                embedder.embed_query(text)

        def per_query(e: FastEmbedEmbedder):
            return lambda block: [e.embed_query(text) for text in block]

        def batched(e: FastEmbedEmbedder):
            return lambda block: e.embed_documents(block)  # batches of 4, by length

        workloads = [
            (
                "query, batch 1 (`embed_query`)",
                {n: per_query(e) for n, e in embedders.items()},
                query_blocks,
                "ms",
            ),
            ("queries, batch 4", {n: batched(e) for n, e in embedders.items()}, query_blocks, "ms"),
            (
                "document chunks, batch 4",
                {n: batched(e) for n, e in embedders.items()},
                chunk_blocks,
                "chunks/s",
            ),
        ]
        for label, calls, blocks, unit in workloads:
            rounds = 1 if quick or unit == "chunks/s" else 2
            result = interleaved(calls, blocks, rounds)
            cells = []
            for name in GRAPHS:
                wall, cpu, items, _ = result[name]
                if unit == "ms":
                    cells.append(f"{wall / items * 1000:.2f} / {cpu / items * 1000:.2f} ms per query")
                else:
                    cells.append(f"{items / wall:.1f} chunks/s / {cpu / items * 1000:.1f} ms CPU per chunk")
            old_wall, old_cpu = result["standard"][:2]
            new_wall, new_cpu = result["fused"][:2]
            ratio = (
                f"{new_wall / old_wall:.2f}x, {new_cpu / old_cpu:.2f}x "
                f"(median per block {paired_ratio(result, 0):.2f}x, {paired_ratio(result, 1):.2f}x)"
            )
            rows.append(f"| {label} | {threads} | {cells[0]} | {cells[1]} | {ratio} |")
    return rows


# --- agreement ----------------------------------------------------------------------------------------------


def agreement_rows(dirs: dict[str, Path], corpora: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    embedders = {
        name: FastEmbedEmbedder(MODEL, model_path=path, threads=2, batch_size=4)
        for name, path in dirs.items()
    }
    rows = [
        "| corpus | chunks | queries | max abs component difference | min cosine | identical top-5 (ordered) | "
        "identical top-10 (ordered) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, (chunks, queries) in corpora.items():
        docs = {n: np.array(e.embed_documents(chunks)) for n, e in embedders.items()}
        qs = {n: np.array([e.embed_query(q) for q in queries]) for n, e in embedders.items()}
        diff = max(np.abs(docs["fused"] - docs["standard"]).max(), np.abs(qs["fused"] - qs["standard"]).max())
        cosine = min(
            (docs["fused"] * docs["standard"]).sum(axis=1).min(),
            (qs["fused"] * qs["standard"]).sum(axis=1).min(),
        )
        same = {}
        for k in (5, 10):
            # stable sort: ties keep corpus order in both, so only a real difference in scores changes the order
            tops = {n: np.argsort(-(qs[n] @ docs[n].T), axis=1, kind="stable")[:, :k] for n in GRAPHS}
            same[k] = int((tops["fused"] == tops["standard"]).all(axis=1).sum())
        rows.append(
            f"| {label} | {len(chunks)} | {len(queries)} | {diff:.2e} | {cosine:.8f} | "
            f"{same[5]}/{len(queries)} | {same[10]}/{len(queries)} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="replace the onnx-graph section of this markdown file")
    parser.add_argument("--queries", type=int, default=96, help="labelled queries timed (default 96)")
    parser.add_argument("--chunks", type=int, default=64, help="document chunks timed (default 64)")
    parser.add_argument("--quick", action="store_true", help="one round per workload (a smoke run)")
    args = parser.parse_args()

    load_before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnx-graph-") as tmp_name:
        tmp = Path(tmp_name)
        dirs = {name: export_minilm.export(tmp / name, fused=name == "fused") for name in GRAPHS}
        sizes = {name: (path / "model.onnx").stat().st_size for name, path in dirs.items()}
        print("exported", {name: f"{size / 1e6:.1f} MB" for name, size in sizes.items()}, flush=True)

        lines = profile_table({name: path / "model.onnx" for name, path in dirs.items()}, tmp, args.quick)
        lines += residual_norm_kernels(args.quick)
        print("\n".join(lines), flush=True)

        probe = FastEmbedEmbedder(MODEL, model_path=dirs["standard"], threads=1)
        pages, man_queries = man_corpus()
        man_chunks = chunks_of(probe, pages)
        fixture_texts, fixture_queries = fixture_corpus()
        queries = man_queries[: args.queries]
        lengths = [len(probe.tokenizer.encode(q).ids) for q in queries]
        timed_chunks = man_chunks[:: max(1, len(man_chunks) // args.chunks)][
            : args.chunks
        ]  # spread over the pages
        chunk_lengths = [len(probe.tokenizer.encode(c).ids) for c in timed_chunks]
        timings = timing_rows(dirs, queries, timed_chunks, args.quick)
        print("\n".join(timings), flush=True)
        agreement = agreement_rows(
            dirs,
            {
                "man pages (quality/ci_corpus.json, queries.json)": (man_chunks, man_queries),
                "test fixtures (tests/service/fixtures/corpus.json)": (
                    chunks_of(probe, fixture_texts),
                    fixture_queries,
                ),
            },
        )
        print("\n".join(agreement), flush=True)

    load_after = load_average()
    elapsed = time.perf_counter() - started
    section = "\n".join(
        [
            START,
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} CPUs "
            f"({cpu_name()}), onnxruntime {ort.__version__}, {elapsed:.0f} s; "
            f"load average before {load_before}, after {load_after} (other work on the machine inflates absolute "
            "times alike for both graphs; the ratios are the result). `python bench/onnx_graph.py --write "
            "docs/benchmarks.md`.",
            "",
            f"Both graphs exported from the same weights: standard {sizes['standard'] / 1e6:.1f} MB "
            f"(`export_minilm --standard-ops`), fused {sizes['fused'] / 1e6:.1f} MB (`make model`).",
            "",
            *lines,
            f"Through the service's embedder, interleaved: {len(queries)} labelled man-page queries "
            f"({min(lengths)}-{max(lengths)} tokens, median {int(np.median(lengths))}); {len(timed_chunks)} of the "
            f"{len(man_chunks)} chunks of the CI man-page corpus (median {int(np.median(chunk_lengths))} tokens, max {max(chunk_lengths)}). "
            "CPU is process CPU time (all ONNX Runtime threads).",
            "",
            *timings,
            "",
            "Agreement (2 threads; vectors are the embedder's mean-pooled, L2-normalised output; exact dense "
            "search by dot product):",
            "",
            *agreement,
            END,
        ]
    )
    if args.write:
        replace_section(args.write, section, START, END, heading=HEADING)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
