"""The query embedding in float32 against ONNX Runtime's dynamic int8 quantization (EMBEDDING_QUERY_PRECISION).

    python bench/query_int8.py                  # timings + agreement, prints markdown
    python bench/query_int8.py --rounds 4       # a quicker look

Variants of the `make model` graph, quantized here with ``onnxruntime.quantization.quantize_dynamic`` into a
temporary directory: ``int8`` is the project's recipe (``export_minilm.write_query_int8``: MatMul and Attention
weights signed int8 per output channel, embeddings float32), ``int8-tensor`` the same per tensor, ``uint8`` unsigned
per-tensor weights (the quantizer's default), ``int8-rr`` per tensor with ``reduce_range`` (7-bit weights).
``int4-b32`` / ``int4-b128`` (only with ``--variants``; stop 20): the MatMul weights 4-bit, weight-only, in blocks
of 32 / 128 along K (``MatMulNBitsQuantizer``, symmetric, ``accuracy_level`` 4: MLAS quantizes the activations to
int8 and runs its int8 kernel), the Attention weights int8 per channel as in the project's recipe: ~0.6x the
weight bytes a run streams (the MatMuls' three quarters halved). Building them needs ``onnx-ir`` (the quantizer imports it; a measuring-only package, not
a service dependency: ``pip install onnx-ir``).

- **Cost**: every variant with 1 and 2 intra-op threads, the service's session options (no spinning, the dynamic
  block base), the labelled man-page queries (quality/queries.json) at batch 1, 2 and 4 (padded runs, fastembed's
  pooling). Every (variant, threads) session runs the same texts in each round, in a shuffled order, so load from
  other processes hits all alike. Wall per run and process CPU per query (``time.process_time``: every thread of
  this process, ONNX Runtime's pool included), medians over rounds.
- **Agreement**: the CI man-page corpus (quality/ci_corpus.json, chunked by the service's Chunker) embedded once
  by the float32 graph (documents are always float32), every labelled query embedded alone by each variant:
  cosine to the float32 query vector, and whether exact dense search returns the same top-1 chunk, the same
  top-5 in order, and how many of the top 10 are shared.

Retrieval quality on the labelled set (hit@k, MRR, nDCG per mode) is `make eval` with
``--env EMBEDDING_QUERY_PRECISION=int8`` against ``=fp32`` on the same ingested data (``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from onnx_graph import chunks_of, cpu_name, load_average, man_corpus  # noqa: E402

from service.app.store.embedder import DYNAMIC_BLOCK_BASE, FastEmbedEmbedder  # noqa: E402
from service.tools.export_minilm import write_query_int8  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_DIR = REPO / ".models" / "all-MiniLM-L6-v2"


DYNAMIC_VARIANTS = ("int8-tensor", "uint8", "int8-rr")
INT4_BLOCKS = {"int4-b32": 32, "int4-b128": 128}


def int4_graph(source: Path, block: int, out: Path) -> None:
    """MatMul weights 4-bit weight-only (MatMulNBits, symmetric blocks of ``block``, int8 compute), Attention
    weights int8 per output channel as ``write_query_int8`` quantizes them."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except (
        ImportError
    ) as exc:  # onnxruntime's 4-bit quantizer imports onnx-ir, which the project does not install
        raise SystemExit(f"the int4 variants need onnx-ir (pip install onnx-ir): {exc}") from exc
    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantizer.process()
    nbits = out.with_suffix(".nbits.onnx")
    quantizer.model.save_model_to_file(str(nbits), False)
    quantize_dynamic(
        nbits,
        out,
        op_types_to_quantize=["Attention"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize_variants(tmp: Path, chosen: tuple[str, ...] = DYNAMIC_VARIANTS) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = MODEL_DIR / "model.onnx"
    paths = {"fp32": source, "int8": tmp / "int8.onnx"}
    write_query_int8(onnx.load(str(source)), paths["int8"])
    other = {
        "int8-tensor": {"weight_type": QuantType.QInt8},
        "uint8": {"weight_type": QuantType.QUInt8},
        "int8-rr": {"weight_type": QuantType.QInt8, "reduce_range": True},
    }
    for name, block in INT4_BLOCKS.items():
        if name in chosen:
            paths[name] = tmp / f"{name}.onnx"
            int4_graph(source, block, paths[name])
    for name, options in other.items():
        if name not in chosen:
            continue
        paths[name] = tmp / f"{name}.onnx"
        quantize_dynamic(
            source,
            paths[name],
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            **options,
        )
    return paths


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.dynamic_block_base", DYNAMIC_BLOCK_BASE)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def embed(tokenizer, run: ort.InferenceSession, texts: list[str]) -> np.ndarray:
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    tokens = run.run(None, feeds)[0]
    weights = mask[..., None].astype(np.float64)
    pooled = (tokens * weights).sum(axis=1) / weights.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def cost_rows(
    paths: dict[str, Path], threads: list[int], rounds: int, queries: list[str], tokenizer
) -> list[str]:
    sessions = {(name, t): session(path, t) for name, path in paths.items() for t in threads}
    for run in sessions.values():
        embed(tokenizer, run, queries[:4])
    rng = np.random.default_rng(13)
    results: dict[tuple[int, str, int], list[tuple[float, float]]] = {}
    per_round = 8
    for batch in (1, 2, 4):
        for r in range(rounds):
            start = (r * per_round * batch) % (len(queries) - per_round * batch)
            texts = queries[start : start + per_round * batch]
            keys = list(sessions)
            rng.shuffle(keys)
            for key in keys:
                wall, cpu = time.perf_counter(), time.process_time()
                for i in range(0, len(texts), batch):
                    embed(tokenizer, sessions[key], texts[i : i + batch])
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                results.setdefault((batch, *key), []).append((wall / per_round, cpu / len(texts)))
    rows = [
        "| batch | threads | "
        + " | ".join(f"{name}: wall per run / CPU per query (ms)" for name in paths)
        + " | int8 / fp32 CPU | "
        + " | ".join(f"{name} / int8 CPU" for name in paths if name not in ("fp32", "int8"))
        + " |",
        "|---|---|" + "---|" * len(paths) + "---|" + "---|" * (len(paths) - 2),
    ]
    for batch in (1, 2, 4):
        for t in threads:
            cells, cpu = [], {}
            for name in paths:
                values = results[(batch, name, t)]
                wall = statistics.median(v[0] for v in values) * 1e3
                cpu[name] = statistics.median(v[1] for v in values) * 1e3
                cells.append(f"{wall:.2f} / {cpu[name]:.2f}")
            versus = [f"{cpu[name] / cpu['int8']:.2f}x" for name in paths if name not in ("fp32", "int8")]
            rows.append(
                f"| {batch} | {t} | "
                + " | ".join(cells)
                + f" | {cpu['int8'] / cpu['fp32']:.2f}x | "
                + " | ".join(versus)
                + " |"
            )
    return rows


def agreement_rows(paths: dict[str, Path], embedder: FastEmbedEmbedder, queries: list[str]) -> list[str]:
    pages, _ = man_corpus()
    chunks = chunks_of(embedder, pages)
    stored = np.array(embedder.embed_documents(chunks))
    tokenizer = embedder._model.model.tokenizer
    vectors = {}
    for name, path in paths.items():
        run = session(path, 1)
        vectors[name] = np.vstack([embed(tokenizer, run, [q]) for q in queries])
    reference = vectors["fp32"]
    top = {name: np.argsort(-(v @ stored.T), axis=1, kind="stable")[:, :10] for name, v in vectors.items()}
    rows = [
        f"Agreement with float32 queries: {len(queries)} labelled queries embedded alone, {len(chunks)} chunks of "
        "quality/ci_corpus.json embedded by the float32 graph, exact dense search.",
        "",
        "| query graph | cosine to fp32: min / mean | same top-1 chunk | same top-5 (ordered) | top-10 shared "
        "| cosine to int8: mean | same top-1 chunk as int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in paths:
        if name == "fp32":
            continue
        cosine = (vectors[name] * reference).sum(axis=1)
        same1 = (top[name][:, 0] == top["fp32"][:, 0]).mean()
        same5 = (top[name][:, :5] == top["fp32"][:, :5]).all(axis=1).mean()
        shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top[name], top["fp32"], strict=True)])
        to_int8 = (vectors[name] * vectors["int8"]).sum(axis=1).mean()
        same1_int8 = (top[name][:, 0] == top["int8"][:, 0]).mean()
        rows.append(
            f"| {name} | {cosine.min():.4f} / {cosine.mean():.4f} | {same1:.1%} | {same5:.1%} | {shared:.1%} "
            f"| {to_int8:.4f} | {same1_int8:.1%} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="rounds per batch size (8 runs each)")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts")
    parser.add_argument(
        "--variants",
        default=",".join(DYNAMIC_VARIANTS),
        help=f"graphs beside fp32 and int8 (default: %(default)s; also {', '.join(INT4_BLOCKS)})",
    )
    args = parser.parse_args()
    chosen = tuple(v for v in args.variants.split(",") if v)
    unknown = set(chosen) - {*DYNAMIC_VARIANTS, *INT4_BLOCKS}
    if unknown:
        parser.error(f"unknown --variants {', '.join(sorted(unknown))}")
    embedder = FastEmbedEmbedder(MODEL, model_path=MODEL_DIR, threads=2, batch_size=4)
    queries = [q["query"] for q in json.loads((REPO / "quality" / "queries.json").read_text())["queries"]]
    before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="query-int8-") as tmp:
        paths = quantize_variants(Path(tmp), chosen)
        threads = [int(t) for t in args.threads.split(",")]
        cost = cost_rows(paths, threads, args.rounds, queries, embedder._model.model.tokenizer)
        agree = agreement_rows(paths, embedder, queries)
    print(
        f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {cpu_name()}, {os.cpu_count()} CPUs, "
        f"onnxruntime {ort.__version__}, {time.perf_counter() - started:.0f} s; load average before {before}, "
        f"after {load_average()}. `python bench/query_int8.py --rounds {args.rounds} --threads {args.threads} "
        f"--variants {args.variants}`.\n"
    )
    print("\n".join(cost))
    print()
    print("\n".join(agree))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
