"""Benchmark: what writing BM25 sparse vectors costs ingest, dense-only and dense + sparse side by side.

    python bench/sparse_ingest.py --docs 80            # prints the table
    python bench/sparse_ingest.py --docs 80 --write docs/benchmarks.md

The documents of bench/ingest_search.py (same generator, same seed) are chunked with the service's Chunker and
embedded with the service's model once per document; that shared part is timed once and counted for both
paths. Then the chunks go, in alternating order per document, into two qdrant-edge shards: one with the dense
vector only (what ingest wrote before hybrid search), one with the dense vector and the ``bm25`` sparse vector
(IDF modifier), whose BM25 vectors are encoded by the service's encoder (service.app.store.sparse) inside the
timed part. Throughput = chunks / (shared time + that path's time); the ratio is dense+sparse / dense-only
(target >= 0.9). Timing the shared embedding once keeps the noise of a shared CPU out of the ratio.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import qdrant_edge as qe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ingest_search import make_document  # noqa: E402
from service.app.core.config import Settings  # noqa: E402
from service.app.ingest.chunking import Chunker  # noqa: E402
from service.app.store.embedder import FastEmbedEmbedder  # noqa: E402
from service.app.store.sparse import SPARSE_VECTOR, SparseEncoder  # noqa: E402

SECTION = "## Ingest with sparse vectors (`bench/sparse_ingest.py`)"


def shard(path: Path, dimension: int, sparse: bool) -> qe.EdgeShard:
    return qe.EdgeShard.create(
        str(path),
        qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
            if sparse
            else None,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", type=Path, help="replace this benchmark's section of the file")
    args = parser.parse_args()

    settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    embedder = FastEmbedEmbedder.from_settings(settings)
    chunker = Chunker(embedder.tokenizer, max_tokens=embedder.max_tokens, chunk_size=200, chunk_overlap=32)
    encoder = SparseEncoder()
    rng = random.Random(args.seed)
    documents = [make_document(rng, i) for i in range(args.docs)]
    with tempfile.TemporaryDirectory() as tmp:
        dense_only = shard(Path(tmp) / "dense", embedder.dimension, sparse=False)
        both = shard(Path(tmp) / "both", embedder.dimension, sparse=True)
        shared = dense_time = both_time = 0.0
        chunks = 0
        for index, (document_id, text, metadata) in enumerate(documents):
            started = time.perf_counter()
            texts = [chunk.text for chunk in chunker.split(text)]
            vectors = embedder.embed_documents(texts)
            shared += time.perf_counter() - started
            chunks += len(texts)
            ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{i}")) for i in range(len(texts))]
            payloads = [
                {
                    "tenant_id": "t",
                    "document_id": document_id,
                    "chunk_index": i,
                    "text": t,
                    "metadata": metadata,
                }
                for i, t in enumerate(texts)
            ]

            def write_dense(ids=ids, vectors=vectors, payloads=payloads) -> float:
                started = time.perf_counter()
                dense_only.update(
                    qe.UpdateOperation.upsert_points(
                        [qe.Point(i, {"dense": v}, p) for i, v, p in zip(ids, vectors, payloads, strict=True)]
                    )
                )
                return time.perf_counter() - started

            def write_both(ids=ids, vectors=vectors, payloads=payloads, texts=texts) -> float:
                started = time.perf_counter()
                sparse = [encoder.document(t) for t in texts]
                both.update(
                    qe.UpdateOperation.upsert_points(
                        [
                            qe.Point(
                                i,
                                {"dense": v, SPARSE_VECTOR: qe.SparseVector(list(s.indices), list(s.values))},
                                p,
                            )
                            for i, v, s, p in zip(ids, vectors, sparse, payloads, strict=True)
                        ]
                    )
                )
                return time.perf_counter() - started

            if index % 2:
                dense_time += write_dense()
                both_time += write_both()
            else:
                both_time += write_both()
                dense_time += write_dense()
        dense_only.close()
        both.close()

    dense_rate = chunks / (shared + dense_time)
    both_rate = chunks / (shared + both_time)
    table = "\n".join(
        [
            f"{args.docs} documents, {chunks} chunks; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"{platform.python_implementation()} {platform.python_version()}, shared CPU",
            "",
            "| path | chunks/s | of which chunk + embed | write (+ BM25 encode) |",
            "| --- | --- | --- | --- |",
            f"| dense only | {dense_rate:.1f} | {shared:.2f} s | {dense_time:.3f} s |",
            f"| dense + sparse | {both_rate:.1f} | {shared:.2f} s | {both_time:.3f} s |",
            "",
            f"Ratio dense + sparse / dense only: **{both_rate / dense_rate:.3f}** (target >= 0.9).",
        ]
    )
    print(table)
    if args.write:
        text = args.write.read_text(encoding="utf-8")
        block = f"{SECTION}\n\n{(__doc__ or '').split(chr(10) + chr(10), 2)[2].strip()}\n\n{table}\n"
        if SECTION in text:
            head, _, rest = text.partition(SECTION)
            following = rest.find("\n## ")
            text = head + block + (rest[following:] if following >= 0 else "")
        else:
            text = text.rstrip("\n") + "\n\n" + block
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
