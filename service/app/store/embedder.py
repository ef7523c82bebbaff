"""The `Embedder` adapter on fastembed (ONNX Runtime, CPU): one model, its own tokenizer, plain-list vectors.

Two ways to get the model, chosen by settings:
- a local ONNX model directory (EMBEDDING_MODEL_PATH, default `.models/all-MiniLM-L6-v2` built by `make model`);
- otherwise fastembed's own resolution of EMBEDDING_MODEL in EMBEDDING_CACHE_DIR, which production images fill at
  build time with `python -m service.tools.fetch_model` so nothing is downloaded at run time.

Embedding is CPU-bound and synchronous: async callers run it in a threadpool. ONNX Runtime's ``run`` releases the
GIL, so searches embed their queries in parallel.

The ONNX session is built here rather than by fastembed, for one option fastembed does not expose: intra-op
thread SPINNING is off. By default ONNX Runtime's intra-op threads busy-wait after each parallel section, and
after every ``run``, for the next work item; on a query path that is most of the CPU a search costs (measured
on 2 cores: 22-25 ms of process CPU per query embedding with spinning, 12-13 ms without, at the same
latency; docs/benchmarks.md). That burnt CPU is taken from the concurrent searches, the event loop and the
other processes on the host, which is why throughput stayed flat from 1 to 16 clients. ``inter_op`` threads
are 1: the graph runs sequentially (ONNX Runtime's default execution mode), so an inter-op pool only idles.

Query embeddings are COALESCED (service.app.store.coalesce): concurrent ``embed_query`` calls on one embedder
run as one ONNX batch, padded to its longest text with the attention mask, so under concurrent searches the
model's large fixed cost per run is shared (docs/benchmarks.md, "Query coalescing"); a lone caller runs at
once in its own thread, as before. Each embedder owns its coalescer, so one batch never mixes two models (a
re-index builds a new embedder). Texts of very different lengths are split into runs of similar length
(``padded_groups``), so one long query never makes a batch of short ones pay its length. Thread settings for this
design (measured, docs/benchmarks.md "Query coalescing"): one run at a time on ONNX Runtime's default intra-op
threads (one per core) gave the lowest latency for a lone query and, in the service at 4 clients, the same CPU per
search as one intra-op thread with one or two runs at a time (all within the run-to-run noise of a loaded
machine); EMBEDDING_THREADS=N runs CPUs // N batches at once (``query_runs``). Spinning stays off: it cost more
CPU per query at every batch size measured.

A lone query (a batch of one, what every search without a concurrent one runs) skips fastembed's generic batch
path for the model's own steps done directly: the tokenizer fastembed configured, one ``run`` and, for a
mean-pooled L2-normalised model (MiniLM; ``PooledNormalizedEmbedding``), the mean over the tokens and the norm in
float64, as fastembed computes them. Same numbers, bit for bit (tested against fastembed on every text of the
tests), ~0.2 ms less Python and numpy per query (docs/benchmarks.md, "Small-collection overhead, attempt
2026-11-26"). Other model classes (CLS pooling, a query prefix) and batches keep fastembed's path.

Int8 queries (EMBEDDING_QUERY_PRECISION=int8, the default): search queries run ``model_query_int8.onnx`` from the
model directory (`make model` writes it: ONNX Runtime's dynamic quantization of the same graph, int8 weights per
output channel, activations quantized per run), documents always run ``model.onnx``, so the stored vectors are
float32 and switching the setting needs no re-index. On CPUs with int8 dot-product instructions (AVX-512 VNNI,
AMX) MLAS runs it at ~0.26x the float32 graph's CPU per query; a query vector is within cosine ~0.98-1.0 of the
float32 one and the labelled retrieval metrics stay within noise (docs/benchmarks.md, "Int8 query embedding on
VNNI/AMX"). Each text runs alone (a run quantizes its activations with one scale over the batch, so batch-mates
would move a query's vector) on one intra-op thread (a ~1.3 ms run gains nothing from a second one), and
concurrent queries take a core each (``query_runs``). fp32 runs queries through ``model.onnx`` as before; hub
models (production images, fetch_model) have no int8 graph and need fp32, which the image sets. The int8 session
(~80 MB of RSS) is built at start-up only where searches are served: the ingestion worker (``queries=False``,
`python -m service.worker`) checks that the graph is there and usable, and builds the session only if a query
ever reaches it. The memory that session allocates is collapsed into transparent huge pages
(service.app.store.hugepages: a run streams every weight through AMX tile loads, and with 4 KiB pages it also
walked page tables; docs/benchmarks.md "The query embedding, stop 19").

Document runs: ``embed_documents`` groups a document's chunks with the same ``padded_groups`` cost model, at most
EMBEDDING_BATCH_SIZE texts a run. A document is mostly full chunks (~150-200 tokens) plus one shorter tail; in a
fixed batch of 4 the tail is padded to the full chunks' length, run alone it costs its own tokens plus the fixed
cost of a run (measured with ONNX Runtime's default threads on 2 cores, docs/benchmarks.md "Document runs grouped by length": ~0.54
ms per token slot at 50-200 tokens and a few ms per run, i.e. 7-16 slots, the ``RUN_OVERHEAD_TOKENS`` the queries
use). On make bench's documents that is 10 % fewer token slots than fixed batches of 4 in document order (what
fastembed does for the raw path) or sorted by length (what this adapter did before).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tokenizers import Tokenizer

from service.app.core.metrics import EMBEDDING_FAILURES, EMBEDDING_SECONDS, QUERY_EMBEDDING_BATCH
from service.app.store.coalesce import BatchCoalescer
from service.app.store.hugepages import HugePages, huge_pages_for_new_memory

# The query graph EMBEDDING_QUERY_PRECISION=int8 runs, beside model.onnx (service.tools.export_minilm writes it).
QUERY_INT8_FILE = "model_query_int8.onnx"
QueryPrecision = Literal["int8", "fp32"]

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort
    from fastembed import TextEmbedding

    from service.app.core.config import Settings


# Most concurrent queries one ONNX run takes (past 8 the CPU per query barely falls: docs/benchmarks.md).
QUERY_BATCH_MAX = 16
# What one ONNX run costs beyond its tokens, in token slots (one text x one token position): measured on MiniLM,
# 1 intra-op thread, 17-token queries, a run cost ~6.7 ms + ~0.39 ms per token slot, i.e. ~17 slots.
RUN_OVERHEAD_TOKENS = 16
# ONNX Runtime's ``session.dynamic_block_base``: a parallel loop of N iterations starts in blocks of
# N / (threads x this) and shrinks them as it goes (0, ONNX Runtime's default, gives each thread one equal share).
DYNAMIC_BLOCK_BASE = "3"


@contextlib.contextmanager
def _no_huge_pages() -> Iterator[HugePages]:
    yield HugePages()


class EmbeddingModelError(RuntimeError):
    """The embedding model cannot be loaded; the message names the setting or command that fixes it."""


def padded_groups(
    lengths: Sequence[int], run_overhead: int = RUN_OVERHEAD_TOKENS, max_batch: int | None = None
) -> list[list[int]]:
    """Split texts (by token count) into runs so the padded token slots plus a fixed cost per run are least.

    A run pads every text to its longest, so one 250-token query in a batch of fifteen 15-token ones would cost
    16 x 250 slots; run alone it costs ``run_overhead`` + 250 and the short ones 15 x 15 (+ overhead). The
    optimal split of texts sorted by length into contiguous runs is a small dynamic programme; ``max_batch``
    caps a run's size (EMBEDDING_BATCH_SIZE for documents), which also bounds the programme to
    O(len(lengths) x max_batch) for a document of thousands of chunks.
    Returns the groups as lists of indexes into ``lengths``, shortest texts first.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]
    widest = max_batch or len(order)
    best = [0] + [0] * len(order)  # best[j]: least cost of the first j texts
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        best[end], cut[end] = min(
            (best[start] + run_overhead + (end - start) * ordered[end - 1], start)
            for start in range(max(0, end - widest), end)
        )
    groups: list[list[int]] = []
    end = len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def query_runs(threads: int | None) -> int:
    """Query batches run at once: as many as the CPUs this process may use hold sessions of ``threads`` each.

    ONNX Runtime's default (``threads`` None) is one intra-op thread per core, so one run at a time already
    uses every core; with EMBEDDING_THREADS=1 on 2 CPUs two batches run side by side. More would only
    oversubscribe the cores: the queries wait for the next run instead, in a larger (cheaper) batch.
    """
    if threads is None:
        return 1
    return max(1, len(os.sched_getaffinity(0)) // threads)


class FastEmbedEmbedder:
    """`Embedder` backed by a fastembed `TextEmbedding` (mean-pooled, L2-normalised for MiniLM)."""

    def __init__(
        self,
        model_name: str,
        *,
        model_path: Path | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        query_precision: QueryPrecision = "fp32",
        queries: bool = True,
    ) -> None:
        from fastembed import TextEmbedding

        if model_path is not None and not (model_path / "model.onnx").is_file():
            raise EmbeddingModelError(
                f"EMBEDDING_MODEL_PATH {model_path} has no model.onnx; run `make model` to build it"
            )
        try:
            # lazy_load: fastembed resolves the model files and the tokenizer; the session is ours (see above).
            self._model: TextEmbedding = TextEmbedding(
                model_name,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                threads=threads,
                specific_model_path=str(model_path) if model_path is not None else None,
                lazy_load=True,
            )
        except ValueError as exc:  # fastembed's error for an unsupported model or one missing from the cache
            hint = "" if model_path is not None else "; fetch it with `python -m service.tools.fetch_model`"
            raise EmbeddingModelError(
                f"EMBEDDING_MODEL {model_name!r} cannot be loaded: {exc}{hint}"
            ) from exc
        self._load_session(threads, huge_pages=query_precision == "fp32")
        self._direct_query = self._direct_query_path()
        self.model_name = model_name
        self.dimension = int(self._model.embedding_size)
        self._batch_size = batch_size
        self.model_dir = Path(self._model.model._model_dir)  # the local path, or fastembed's cached snapshot
        self.query_precision: QueryPrecision = query_precision
        # int8 queries run on one intra-op thread unless EMBEDDING_THREADS says otherwise: a ~1.3 ms run is too
        # small to split (2 threads: 1.2x the wall and 1.5x the CPU of 1), so concurrent queries take a core each.
        query_threads = 1 if threads is None and query_precision == "int8" else threads
        self._query_threads = query_threads
        self._query_session_lock = threading.Lock()
        # What the int8 query session's memory got of huge pages (module docstring); empty until it is built.
        self.query_huge_pages = HugePages()
        # The int8 graph is checked here either way (a missing file fails at start-up, in every process); its
        # session (~80 MB, ~50 ms of CPU) is built now only for a process that serves searches (``queries``): an
        # ingestion worker embeds documents alone and builds it only if a query ever comes (module docstring).
        self._query_session: ort.InferenceSession | None = self._check_query_graph(query_precision)
        if self._query_session is None and queries:
            self._query_session = self._load_query_session(query_threads)
        # The limit fastembed truncates at (tokenizer_config's model_max_length), so chunks never exceed it.
        truncation = self._model.model.tokenizer.truncation or {}
        if not truncation.get("max_length"):
            raise EmbeddingModelError(
                f"{self.model_dir} declares no model_max_length in tokenizer_config.json"
            )
        self.max_tokens = int(truncation["max_length"])
        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        # Chunking counts and splits whole texts: a tokenizer that truncated would hide the overflow.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._queries: BatchCoalescer[str, np.ndarray] = BatchCoalescer(
            self._embed_query_batch,
            # int8 runs one text per run (see _embed_query_batch): a queued query takes the next free run slot on
            # its own, rather than waiting in a batch another thread works through one text after another while
            # a core idles.
            max_batch=QUERY_BATCH_MAX if query_precision == "fp32" else 1,
            max_runs=query_runs(query_threads),
        )

    @staticmethod
    def _session_options(threads: int | None) -> ort.SessionOptions:
        """What fastembed would set (CPU, every graph optimisation), without intra-op spinning."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Work-sharing only: each parallel loop is handed out in shrinking blocks instead of one equal share per
        # thread, so a thread the OS delays holds up less of a run. Same arithmetic per element, same vectors
        # (tested); a lone query 0.92-0.97x the wall and CPU, a run of 4 chunks 0.96-0.97x the wall at equal
        # CPU (docs/benchmarks.md, "The search path at 100k, profiled").
        options.add_session_config_entry("session.dynamic_block_base", DYNAMIC_BLOCK_BASE)
        return options

    def _load_session(self, threads: int | None, *, huge_pages: bool) -> None:
        """The ONNX session fastembed would build, with ``_session_options``."""
        import onnxruntime as ort
        from fastembed.common.onnx_external_data import link_external_data

        inner = self._model.model
        description = inner.model_description
        model_dir = Path(inner._model_dir)
        options = self._session_options(threads)
        path = model_dir / description.model_file
        # As fastembed does: models with external data files load through links next to the graph; in a
        # read-only directory ONNX Runtime reads the files where they are.
        with contextlib.suppress(OSError):
            path = link_external_data(model_dir, description.model_file, description.additional_files or [])
        try:
            # When it is also the query session (fp32 queries: production images), its weights are collapsed
            # into huge pages as the int8 query session's are (service.app.store.hugepages); otherwise it only
            # embeds documents, in runs of hundreds of token rows per weight read, and start-up skips the cost.
            collapse = huge_pages_for_new_memory if huge_pages else _no_huge_pages
            with collapse() as huge:
                inner.model = ort.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"]
                )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise EmbeddingModelError(f"the ONNX model {path} cannot be loaded: {exc}") from exc
        self.document_huge_pages = huge
        inner._ensure_tokenizer()
        self._input_names = {node.name for node in inner.model.get_inputs()}

    def _check_query_graph(self, precision: QueryPrecision) -> ort.InferenceSession | None:
        """The session fp32 queries run (the document one); for int8, None once the graph is known usable: the
        model directory's dynamic int8 graph (``model_query_int8.onnx``, written by `make model`; module
        docstring, "Int8 queries") exists and the model's pooling is the one ``_embed_one`` repeats."""
        if precision == "fp32":
            return self._model.model.model
        if precision != "int8":
            raise EmbeddingModelError(f"EMBEDDING_QUERY_PRECISION must be int8 or fp32, not {precision!r}")
        path = self.model_dir / QUERY_INT8_FILE
        if not self._direct_query:
            raise EmbeddingModelError(
                f"EMBEDDING_QUERY_PRECISION=int8 needs a mean-pooled, normalised model; {self.model_name!r} is "
                "not one: set EMBEDDING_QUERY_PRECISION=fp32"
            )
        if not path.is_file():
            raise EmbeddingModelError(
                f"EMBEDDING_QUERY_PRECISION=int8 needs {path}, which `make model` (service.tools.export_minilm) "
                "writes beside model.onnx; rebuild the model directory, or set EMBEDDING_QUERY_PRECISION=fp32"
            )
        return None

    def _query_model(self) -> ort.InferenceSession:
        """The session search queries run, built on first use where the constructor did not build it."""
        session = self._query_session
        if session is None:
            with self._query_session_lock:
                if self._query_session is None:
                    self._query_session = self._load_query_session(self._query_threads)
                session = self._query_session
        return session

    def _load_query_session(self, threads: int | None) -> ort.InferenceSession:
        """The int8 query graph's session (``_check_query_graph`` has found it usable)."""
        import onnxruntime as ort

        path = self.model_dir / QUERY_INT8_FILE
        try:
            # Its weights collapsed into huge pages (service.app.store.hugepages): every run streams them all.
            with huge_pages_for_new_memory() as huge:
                session = ort.InferenceSession(
                    str(path), sess_options=self._session_options(threads), providers=["CPUExecutionProvider"]
                )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise EmbeddingModelError(f"the ONNX model {path} cannot be loaded: {exc}") from exc
        self.query_huge_pages = huge
        if {node.name for node in session.get_inputs()} != self._input_names:
            raise EmbeddingModelError(f"{path} does not take the inputs of {self.model_dir / 'model.onnx'}")
        return session

    @property
    def query_graph(self) -> str:
        """The file the query session runs (for tests and operators)."""
        if self.query_precision == "fp32":
            return str(self.model_dir / self._model.model.model_description.model_file)
        return str(self.model_dir / QUERY_INT8_FILE)

    @property
    def query_session_loaded(self) -> bool:
        """Whether the session queries run is built (an ingestion worker's int8 one is not until a query)."""
        return self._query_session is not None

    def _direct_query_path(self) -> bool:
        """Whether a lone query may run the model's steps directly (``_embed_one``): only for fastembed's
        mean-pooled, normalised model class with its query path and input hook unchanged, the ones whose steps
        ``_embed_one`` repeats."""
        from fastembed.text.onnx_embedding import OnnxTextEmbedding
        from fastembed.text.pooled_normalized_embedding import PooledNormalizedEmbedding
        from fastembed.text.text_embedding_base import TextEmbeddingBase

        inner = self._model.model
        cls = type(inner)
        return (
            cls is PooledNormalizedEmbedding
            and cls.query_embed is TextEmbeddingBase.query_embed
            and cls._preprocess_onnx_input is OnnxTextEmbedding._preprocess_onnx_input
        )

    @property
    def session_options(self) -> dict[str, str]:
        """The ONNX Runtime settings the session runs with (for tests and operators)."""
        options = self._query_model().get_session_options()
        return {
            "intra_op_num_threads": str(options.intra_op_num_threads),
            "inter_op_num_threads": str(options.inter_op_num_threads),
            "allow_spinning": options.get_session_config_entry("session.intra_op.allow_spinning"),
            "dynamic_block_base": options.get_session_config_entry("session.dynamic_block_base"),
        }

    @classmethod
    def from_settings(cls, settings: Settings, *, queries: bool = True) -> FastEmbedEmbedder:
        """Build the embedder the settings describe (local model dir if any, else fastembed's cache);
        ``queries`` False for a process that only embeds documents (see the constructor)."""
        return cls(
            settings.embedding_model,
            model_path=settings.resolved_model_path,
            cache_dir=settings.resolved_embedding_cache_dir,
            batch_size=settings.embedding_batch_size,
            threads=settings.embedding_threads,
            query_precision=settings.embedding_query_precision,
            queries=queries,
        )

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer (truncation/padding disabled), used to count and split tokens."""
        return self._tokenizer

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed passages; one normalised vector per text, in order.

        A run pads every text to the longest in it, so texts are grouped by token count into runs of at most
        EMBEDDING_BATCH_SIZE with ``padded_groups`` (the same cost model as coalesced queries): a document's
        short tail chunk runs on its own instead of being padded to the length of its full chunks (module
        docstring, "Document runs").
        """
        if not texts:
            return []

        def grouped() -> list[np.ndarray]:
            lengths = [
                min(len(encoding.ids), self.max_tokens)
                for encoding in self._tokenizer.encode_batch(list(texts))
            ]
            vectors: list[np.ndarray | None] = [None] * len(texts)
            for group in padded_groups(lengths, max_batch=self._batch_size):
                embedded = self._model.passage_embed([texts[i] for i in group], batch_size=len(group))
                for index, vector in zip(group, embedded, strict=True):
                    vectors[index] = vector
            return vectors  # type: ignore[return-value]  # every index is in exactly one group

        return self._run("document", grouped)

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query through fastembed's query path (MiniLM and BGE v1.5 need no prefix).

        Concurrent calls are coalesced into one ONNX run (module docstring). ``rag_embedding_duration_seconds
        {kind="query"}`` is this call's time, waiting for a batch included: the embedding time a search saw.
        """
        return self.embed_query_array(text).tolist()

    def embed_query_array(self, text: str) -> np.ndarray:
        """`embed_query` as the model's array (float32), not converted to a list: the query-vector cache keeps it
        as it is (service.app.search.query_cache). Concurrent calls for the same text may share one array: never
        change it."""
        started = time.perf_counter()
        try:
            return self._queries.submit(text)
        except Exception:
            EMBEDDING_FAILURES.inc()
            raise
        finally:
            EMBEDDING_SECONDS.labels(kind="query").observe(time.perf_counter() - started)

    @property
    def query_coalescer(self) -> BatchCoalescer[str, np.ndarray]:
        """The coalescer of this embedder's query runs (its counters: ``runs``, ``calls``, ``waits``)."""
        return self._queries

    def _embed_query_batch(self, texts: list[str]) -> list[np.ndarray]:
        """One coalesced batch: one ONNX run per group of similar lengths (one run for a single text).

        The same text asked by several searches at once (a popular question before the query-vector cache has
        it) is embedded once: every caller gets that vector.
        """
        QUERY_EMBEDDING_BATCH.observe(len(texts))
        if len(texts) == 1 or self.query_precision == "int8":
            # int8: one run per text, so a query's vector never depends on its batch-mates (a run quantizes its
            # activations with one scale over the whole batch: cosine 0.993 between a query embedded alone and
            # beside another), at ~1.3x the CPU per query of a run of 4 (module docstring, "Int8 queries").
            by_one: dict[str, np.ndarray] = {}
            for text in dict.fromkeys(texts):
                one = self._embed_one(text) if self._direct_query else None
                by_one[text] = one if one is not None else self._embed_group([text])[0]
            return [by_one[text] for text in texts]
        unique = list(dict.fromkeys(texts))
        lengths = [min(len(e.ids), self.max_tokens) for e in self._tokenizer.encode_batch(unique)]
        by_text: dict[str, np.ndarray] = {}
        for group in padded_groups(lengths):
            group_texts = [unique[i] for i in group]
            by_text.update(zip(group_texts, self._embed_group(group_texts), strict=True))
        return [by_text[text] for text in texts]

    def _embed_group(self, texts: list[str]) -> list[np.ndarray]:
        """One ONNX run of several queries: fastembed's query path, on the query session when it is not the
        document one (int8: fastembed's own tokenising, input and pooling steps around our session's run)."""
        if self.query_precision == "fp32":
            return list(self._model.query_embed(texts, batch_size=len(texts)))
        import numpy as np
        from fastembed.common.onnx_model import OnnxOutputContext

        inner = self._model.model
        encoded = inner.tokenize(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids}
        if "attention_mask" in self._input_names:
            feeds["attention_mask"] = mask
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        tokens = self._query_model().run(inner.ONNX_OUTPUT_NAMES, feeds)[0]
        output = OnnxOutputContext(model_output=tokens, attention_mask=mask, input_ids=ids)
        return list(inner._post_process_onnx_output(output))

    def _embed_one(self, text: str) -> np.ndarray | None:
        """One text through the model's steps as fastembed runs them for a mean-pooled, normalised model, without
        its batch machinery; None (use fastembed's path) if the tokenizer padded or masked anything."""
        import numpy as np

        inner = self._model.model
        encoding = inner.tokenizer.encode(text)
        if 0 in encoding.attention_mask:
            return None
        ids = np.array([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids}
        if "attention_mask" in self._input_names:
            feeds["attention_mask"] = np.ones_like(ids)
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        tokens = self._query_model().run(inner.ONNX_OUTPUT_NAMES, feeds)[0][0]
        # fastembed's mean_pooling and normalize, for one text with every token real: float64 sum / count, the L2
        # norm (at least 1e-12), then the model's dtype.
        pooled = tokens.sum(axis=0, dtype=np.float64) / tokens.shape[0]
        norm = max(float(np.sqrt(np.add.reduce(pooled * pooled))), 1e-12)
        return (pooled / norm).astype(tokens.dtype, copy=False)

    def _run(self, kind: str, call: Callable[[], Iterable[np.ndarray]]) -> list[list[float]]:
        try:
            with EMBEDDING_SECONDS.labels(kind=kind).time():
                return [vector.tolist() for vector in call()]
        except Exception:
            EMBEDDING_FAILURES.inc()
            raise
