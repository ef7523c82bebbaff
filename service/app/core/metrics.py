"""Prometheus metrics of the service, defined once here and imported where they are recorded.

Names follow Prometheus conventions (`rag_` prefix, base units, `_total` counters). The /metrics route
exposes the default registry; in multi-process uvicorn set PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "rag_http_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "rag_http_request_duration_seconds", "HTTP request latency by route template.", ["route", "method"]
)
CHUNKS_INGESTED = Counter("rag_chunks_ingested_total", "Chunks embedded and written to the vector store.")
DOCUMENTS_INGESTED = Counter("rag_documents_ingested_total", "Documents ingested, by outcome.", ["status"])
EMBEDDING_SECONDS = Histogram(
    "rag_embedding_duration_seconds", "Time spent embedding one batch of texts.", ["kind"]
)  # kind: document | query
EMBEDDING_FAILURES = Counter("rag_embedding_failures_total", "Embedding calls that raised.")
SEARCH_SECONDS = Histogram("rag_search_duration_seconds", "Vector search time (embedding excluded).")
CACHE_REQUESTS = Counter(
    "rag_search_cache_requests_total", "Search cache lookups, by result.", ["result"]
)  # hit | miss | error
INVISIBLE_HITS = Counter(
    "rag_search_invisible_hits_total",
    "Vector hits a search dropped because their document version is not active (in-flight writes, orphans).",
)
ORPHANS_REMOVED = Counter(
    "rag_orphan_points_removed_total", "Invisible points removed by the orphan collector."
)
ORPHAN_COLLECTIONS = Counter("rag_orphan_collections_total", "Orphan collector runs completed.")
JOB_QUEUE_DEPTH = Gauge("rag_job_queue_depth", "Ingestion jobs waiting to run.")
JOBS = Counter("rag_jobs_total", "Ingestion jobs finished, by outcome.", ["status"])  # succeeded | failed
FAILURES = Counter(
    "rag_failures_total", "Internal failures by component.", ["component"]
)  # vector_store | registry | embedder | cache | jobs
