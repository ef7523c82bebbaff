"""BM25 sparse vectors, computed by the service itself so every vector store ranks a keyword query alike.

Why the service encodes (and not the engine): qdrant-edge ships a BM25 encoder in-process, a Qdrant server can
embed BM25 only from 1.15.2 on and only through its inference API, and qdrant-client's local mode has none. One
encoder here (qdrant-edge's `Bm25`, Rust, ~0.07 ms per 1,000 characters) produces the same vectors for the
embedded engine, local mode and a server; each collection stores them in a sparse vector named ``bm25`` with
the engine's IDF modifier, so term weights are BM25's tf part (``k``, ``b``, ``avg_len``) and the engine
multiplies in the inverse document frequency over the collection at query time.

Tokenisation: Qdrant's word tokenizer, lower-cased, English stop words and Snowball stemming, which splits an
identifier like ``FALLOC_FL_COLLAPSE_RANGE`` into ``falloc fl collaps rang``. Those parts are common words of
a system-call manual, so an identifier query would score like a bag of unrelated words. `identifier_terms`
therefore adds one extra term per identifier, the identifier with its separators removed
(``falloc_fl_collapse_range`` -> ``fallocflcollapserange``): rare, so its IDF is high and the page naming the
identifier exactly ranks first. The same expansion runs on documents and queries (docs/quality.md has the
measured effect).

``ENCODER_ID`` names this exact encoding; a change to the tokenisation or the BM25 parameters must change it,
because stored vectors and query vectors must come from the same encoder (a re-index rebuilds the vectors).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import qdrant_edge as qe

SPARSE_VECTOR = "bm25"
ENCODER_ID = "bm25-word-en-ident-v1"
# BM25's defaults; avg_len is the expected chunk length in tokens (CHUNK_SIZE 200 tokens of the embedding model
# is ~150 words).
BM25_K = 1.2
BM25_B = 0.75
BM25_AVG_LEN = 150.0

# An identifier: two or more word parts joined by '_' (EINVAL alone is one token already), or a camelCase word.
_IDENTIFIER = re.compile(r"\b[A-Za-z][A-Za-z0-9]*(?:_+[A-Za-z0-9]+)+\b|\b[a-z]+[A-Z][A-Za-z0-9]*\b")


@dataclass(frozen=True)
class SparseVector:
    """Non-zero dimensions (term hashes) and their weights, as the engines take them."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def of(cls, indices: Sequence[int], values: Sequence[float]) -> SparseVector:
        return cls(tuple(int(i) for i in indices), tuple(float(v) for v in values))

    def __bool__(self) -> bool:
        return bool(self.indices)


def identifier_terms(text: str) -> str:
    """``text`` plus one joined term per identifier in it (see the module docstring)."""
    joined = {re.sub(r"[^A-Za-z0-9]", "", match).lower() for match in _IDENTIFIER.findall(text)}
    if not joined:
        return text
    return f"{text}\n{' '.join(sorted(joined))}"


class SparseEncoder:
    """BM25 document and query vectors (thread-safe: the Rust model holds no mutable state per call)."""

    encoder_id = ENCODER_ID

    def __init__(self) -> None:
        self._model = qe.Bm25(qe.Bm25Config(k=BM25_K, b=BM25_B, avg_len=BM25_AVG_LEN))

    def document(self, text: str) -> SparseVector:
        """A stored chunk's vector: BM25 term-frequency weights (the engine applies IDF)."""
        vector = self._model.embed_document(identifier_terms(text))
        return SparseVector.of(vector.indices, vector.values)

    def documents(self, texts: Sequence[str]) -> list[SparseVector]:
        return [self.document(text) for text in texts]

    def query(self, text: str) -> SparseVector:
        """A query's vector: weight 1 per distinct term."""
        vector = self._model.embed_query(identifier_terms(text))
        return SparseVector.of(vector.indices, vector.values)


_default: SparseEncoder | None = None


def default_encoder() -> SparseEncoder:
    """The process's encoder (building one is cheap, but every adapter and service must use the same)."""
    global _default
    if _default is None:
        _default = SparseEncoder()
    return _default
