"""Query-vector cache: the dense embedding and the BM25 vector of recently searched texts, in process.

Why: embedding the query is most of what a search costs (one ONNX Runtime run, 6-9 ms of a core for MiniLM on
the machine of docs/benchmarks.md, against ~1 ms for the engine query at 10k chunks), and real traffic repeats
queries: the same question from many users, a UI that re-runs a search with another filter, ``top_k`` or
mode, a client that retries. A repeated text skips the model.

What it is not: the search RESULT cache (service.app.store.cache) keys whole requests by the tenant's data
version, so every write invalidates it. A query's vectors depend only on the text and on the model (or the
sparse encoder), never on the data, so this cache survives writes: a search after a write embeds nothing but
still asks the store and the registry, and sees the write.

Keys: ``(kind, model, SHA-256 of the exact text)``. ``model`` is the embedder's ``model_name`` for dense vectors
and the encoder's ``encoder_id`` for sparse ones: a re-index switch to another model looks up other keys, so a
vector of the old model is never used with the new one, and a rollback finds the old model's entries again.
The text is hashed so an entry's size does not depend on the query's length (queries may be 8,192 characters).

Values: dense vectors are kept as float32 arrays when that is exact (the model computes in float32, so for the
fastembed adapter it always is) and as float64 otherwise; a hit returns a new list equal to what the embedder
returned. One MiniLM entry is 384 x 4 bytes plus key and bookkeeping, ~2 KB in all (measured with
tracemalloc): the default of 4,096 entries is about 8.5 MB. Sparse vectors are immutable (SparseVector holds
tuples) and a few hundred bytes.

Thread-safe: one lock guards the LRU order; the model runs outside it, so a miss never blocks other searches.
Two threads missing the same text at once both embed it (the results are equal); no request waits for another.
Hits and misses are counted in ``rag_query_vector_cache_requests_total{kind, result}``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from service.app.core.metrics import QUERY_VECTOR_CACHE
from service.app.store.protocols import Embedder
from service.app.store.sparse import SparseEncoder, SparseVector

DEFAULT_ENTRIES = 4096


class QueryVectorCache:
    """A bounded, thread-safe LRU of query vectors keyed by (kind, model, text)."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1 (disable the cache by not building one)")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, bytes], Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def dense(self, embedder: Embedder, text: str) -> list[float]:
        """``embedder.embed_query(text)``, from the cache when this model embedded this text recently."""
        as_array = getattr(embedder, "embed_query_array", None)
        if as_array is not None:  # the model's own float32 array: exact as it is, no list round trips
            stored = self._get("dense", embedder.model_name, text, lambda: _frozen(as_array(text)))
        else:
            stored = self._get(
                "dense", embedder.model_name, text, lambda: _compact(embedder.embed_query(text))
            )
        return stored.tolist()  # a new list per call: callers may keep or change it

    def sparse(self, encoder: SparseEncoder, text: str) -> SparseVector:
        """``encoder.query(text)``, from the cache when this encoder encoded this text recently."""
        return self._get("sparse", encoder.encoder_id, text, lambda: encoder.query(text))

    def _get(self, kind: str, model: str, text: str, compute: Callable[[], Any]) -> Any:
        key = (kind, model, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
        if value is not None:
            QUERY_VECTOR_CACHE.labels(kind=kind, result="hit").inc()
            return value
        QUERY_VECTOR_CACHE.labels(kind=kind, result="miss").inc()
        value = compute()  # outside the lock: a slow model run never holds up other lookups
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value


def _frozen(vector: np.ndarray) -> np.ndarray:
    """An embedder's float32 array kept as it is (read-only); any other dtype as `_compact` keeps a list."""
    if vector.dtype != np.float32:
        return _compact(vector.tolist())
    if vector.base is not None:  # a row of a batch's array: keep the row, not the whole batch alive
        vector = vector.copy()
    vector.flags.writeable = False
    return vector


def _compact(vector: list[float]) -> np.ndarray:
    """The vector as a read-only float32 array when that keeps every value exactly, else float64."""
    compact = np.asarray(vector, dtype=np.float32)
    if compact.tolist() != list(vector):
        compact = np.asarray(vector, dtype=np.float64)
    compact.flags.writeable = False
    return compact
