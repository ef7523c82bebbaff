"""Embedding throughput against the raw ONNX Runtime floor, per batch size and thread setting, on real chunks.

    python bench/ingest_floor.py --docs 60 --write docs/benchmarks.md

Corpus: standard-library docstrings grouped into documents of 2-12 docstrings, split with the service's Chunker
(real chunk lengths: mostly full 200-token chunks and one short tail per document). Every configuration embeds
the same documents one document at a time (as ingest does), round-robin document by document so background
load hits all alike:

- **ONNX floor**: onnxruntime directly, one chunk per run (no padding at all), mean pooling + L2 norm: the
  least work the model can do per chunk.
- **service embedder** (`FastEmbedEmbedder.embed_documents`: runs grouped by token length with
  ``padded_groups``, at most EMBEDDING_BATCH_SIZE texts a run) at several EMBEDDING_BATCH_SIZE values, and
  fastembed's own fixed batches in document order (4 and 32, on the same session), to show what padding costs.

Each configuration runs in this process with the ONNX intra-op thread count given by ``--threads``. Results
replace the section between the ingest markers in docs/benchmarks.md.
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
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scale import stdlib_docstrings  # noqa: E402
from sections import replace_section  # noqa: E402

from service.app.core.config import Settings  # noqa: E402
from service.app.ingest.chunking import Chunker  # noqa: E402
from service.app.store.embedder import FastEmbedEmbedder  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_DIR = REPO / ".models" / "all-MiniLM-L6-v2"
START = "<!-- ingest:start -->"
END = "<!-- ingest:end -->"


class OnnxFloor:
    """One chunk per session run: no padding, no batching overhead beyond the model itself."""

    def __init__(self, threads: int | None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Not spinning, as the service's session: the configurations run round-robin in this process, and a
        # spinning pool keeps burning a core after each run (docs/benchmarks.md "Document runs grouped by
        # length"), inside whichever configuration is timed next. The floor measures padding and batching.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
        self.tokenizer.enable_truncation(256)
        self.tokenizer.no_padding()

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        out = []
        for text in texts:
            encoding = self.tokenizer.encode(text)
            ids = np.array([encoding.ids], dtype=np.int64)
            mask = np.array([encoding.attention_mask], dtype=np.int64)
            hidden = self.session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
            out.append(pooled[0] / np.linalg.norm(pooled[0]))
        return out


class Unsorted:
    """The service embedder's session without length grouping: fastembed's fixed batches in document order."""

    def __init__(self, embedder: FastEmbedEmbedder, batch_size: int) -> None:
        self.embedder = embedder
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.embedder._model.passage_embed(texts, batch_size=self.batch_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX intra-op threads (0: onnxruntime default)"
    )
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    threads = args.threads or None

    rng = random.Random(args.seed)
    settings = Settings(_env_file=None)
    docstrings = stdlib_docstrings(args.docs * 12, rng)
    base = FastEmbedEmbedder(MODEL, model_path=MODEL_DIR, threads=threads, batch_size=32)
    chunker = Chunker(
        base.tokenizer,
        max_tokens=base.max_tokens,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
    )
    documents: list[list[str]] = []
    cursor = 0
    for _ in range(args.docs):
        take = rng.randint(2, 12)
        text = "\n\n".join(docstrings[cursor : cursor + take])
        cursor += take
        documents.append([chunk.text for chunk in chunker.split(text)])
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    configs: dict[str, object] = {"ONNX floor (1 chunk per run)": OnnxFloor(threads)}
    for size in sizes:
        configs[f"service, batch {size}, length groups"] = FastEmbedEmbedder(
            MODEL, model_path=MODEL_DIR, threads=threads, batch_size=size
        )
    # What a caller of fastembed gets with fixed batches in document order (make bench's raw path uses 4).
    for size in (4, 32):
        configs[f"fastembed batches of {size}, document order"] = Unsorted(base, size)
    seconds = dict.fromkeys(configs, 0.0)
    for config in configs.values():  # warm-up
        _embed(config, documents[0])
    for index, document in enumerate(documents):
        names = list(configs)
        if index % 2:
            names.reverse()
        for name in names:
            started = time.perf_counter()
            _embed(configs[name], document)
            seconds[name] += time.perf_counter() - started
    chunks = sum(len(d) for d in documents)
    floor = chunks / seconds["ONNX floor (1 chunk per run)"]
    rows = ["| Path | chunks/s | vs ONNX floor |", "|---|---|---|"]
    for name, total in seconds.items():
        rate = chunks / total
        rows.append(f"| {name} | {rate:.1f} | {rate / floor:.2f}x |")
    lengths = [len(base.tokenizer.encode(c).ids) for d in documents for c in d]
    load = os.getloadavg()
    setup = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), load average {load[0]:.1f} (shared machine); ONNX "
        f"intra-op threads: {threads or 'onnxruntime default'}. {args.docs} documents, {chunks} chunks "
        f"(token length median {int(np.median(lengths))}, min {min(lengths)}, max {max(lengths)})."
    )
    table = "\n".join([START, "", setup, "", *rows, "", END])
    print(table)
    if args.write:
        replace_section(
            args.write, table, START, END, heading="## Embedding vs the ONNX floor (bench/ingest_floor.py)"
        )


def _embed(config: object, texts: list[str]) -> None:
    if isinstance(config, FastEmbedEmbedder):
        config.embed_documents(texts)
    else:
        config.embed(texts)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
