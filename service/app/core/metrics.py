"""Prometheus metrics of the service, defined once here and imported where they are recorded.

Names follow Prometheus conventions (`rag_` prefix, base units, `_total` counters). The /metrics route
exposes the default registry; in multi-process uvicorn set PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No `<name>_created` twin per counter and histogram (prometheus_client's creation timestamps, one more series per
# label set): no alert, dashboard or runbook of this project reads them (EYES10). Read at scrape time, so this
# holds for the API's and the worker's exposition alike.
disable_created_metrics()

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
for _status in ("created", "updated", "unchanged", "superseded"):
    DOCUMENTS_INGESTED.labels(status=_status)
EMBEDDING_SECONDS = Histogram(
    "rag_embedding_duration_seconds",
    "Time spent embedding: one batch of passages (kind=document), or one search query as its search waited for"
    " it, a coalesced batch included (kind=query).",
    ["kind"],
)  # kind: document | query
EMBEDDING_FAILURES = Counter("rag_embedding_failures_total", "Embedding calls that raised.")
QUERY_EMBEDDING_BATCH = Histogram(
    "rag_query_embedding_batch_size",
    "Queries per coalesced query-embedding batch (one observation per batch; 1: no concurrent query).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16),
)
SEARCH_SECONDS = Histogram("rag_search_duration_seconds", "Vector search time (embedding excluded).")
CACHE_REQUESTS = Counter(
    "rag_search_cache_requests_total", "Search cache lookups, by result.", ["result"]
)  # hit | miss | error
QUERY_VECTOR_CACHE = Counter(
    "rag_query_vector_cache_requests_total",
    "Query-vector cache lookups (QUERY_EMBEDDING_CACHE_SIZE), by vector kind and result.",
    ["kind", "result"],
)  # kind: dense | sparse; result: hit | miss
for _kind in ("dense", "sparse"):
    for _result in ("hit", "miss"):
        QUERY_VECTOR_CACHE.labels(kind=_kind, result=_result)
INVISIBLE_HITS = Counter(
    "rag_search_invisible_hits_total",
    "Vector hits a search dropped because their document version is not active (in-flight writes, orphans).",
)
ORPHANS_REMOVED = Counter(
    "rag_orphan_points_removed_total", "Invisible points removed by the orphan collector."
)
CONNECTIONS_CLOSED = Counter(
    "rag_http_connections_closed_total",
    "Connections the server closed because the client was too slow.",
    ["reason"],
)  # header_timeout | body_idle | body_slow
for _reason in ("header_timeout", "body_idle", "body_slow"):
    CONNECTIONS_CLOSED.labels(reason=_reason)
ORPHAN_COLLECTIONS = Counter("rag_orphan_collections_total", "Orphan collector runs completed.")
SHADOW_WRITE_FAILURES = Counter(
    "rag_shadow_write_failures_total",
    "Writes whose copy into the re-index/standby generation failed (replayed by the re-index catch-up).",
)
REINDEX_DOCUMENTS = Gauge("rag_reindex_documents", "Documents of the running re-index, by state.", ["state"])
REINDEX_STATE = Gauge("rag_reindex_running", "1 while a re-index builds or switches, else 0.")
# Set at every follow of the pointer (searches, writes, each /metrics scrape): an alert needs no admin to ask.
REINDEX_INTERRUPTED = Gauge(
    "rag_reindex_interrupted",
    "1 while the re-index lease names a build whose builder died before it switched (lease expired or the "
    "process gone) and no replica has taken it over; stays 1 after MAX_ATTEMPTS interrupted attempts, which are "
    "not resumed automatically. 0 otherwise.",
    multiprocess_mode="livemax",
)
# rag_documents{tenant} is rendered by the /metrics route itself (service.app.api.routes.metrics): it is read
# from the registry by the process that answers the scrape, never merged from other workers' files.
# Queue gauges are set from the job table (the API at scrape time, the worker on each poll): a queue that grows
# with no live consumer shows here even when no worker is running at all.
JOB_QUEUE_DEPTH = Gauge("rag_queue_depth", "Ingestion jobs waiting to run (queued, retries included).")
JOB_QUEUE_OLDEST_AGE = Gauge(
    "rag_queue_oldest_job_age_seconds", "Age of the oldest queued ingestion job; 0 when none is queued."
)
JOBS_RUNNING = Gauge("rag_jobs_running", "Ingestion jobs running (claimed, lease live or not yet reclaimed).")
JOBS_RUNNING_OLDEST_AGE = Gauge(
    "rag_jobs_running_oldest_age_seconds",
    "Time since the oldest running ingestion job's attempt was claimed; 0 when none is running.",
)
JOBS_RECLAIMED = Counter(
    "rag_jobs_reclaimed_total",
    "Ingestion jobs taken over from a worker whose lease expired (it died or stalled), or resumed at start-up "
    "from an embedded process that died.",
)
JOBS_LEASE_LOST = Counter(
    "rag_jobs_lease_lost_total",
    "Job attempts this process stopped because their lease was taken over (it stalled past JOB_LEASE_SECONDS).",
)
JOBS = Counter("rag_jobs_total", "Ingestion jobs finished, by outcome.", ["status"])  # succeeded | failed
JOBS_DISK_WAITS = Counter(
    "rag_jobs_disk_waits_total",
    "Times this process put an ingestion job back to wait for disk space (its attempt not counted).",
)
JOBS_WAITING_FOR_SPACE = Gauge(
    "rag_jobs_waiting_for_space",
    "Ingestion jobs this process holds back until the disk has room again (service.app.jobs.queue).",
)
JOB_SECONDS = Histogram(
    "rag_job_duration_seconds",
    "Run time of one ingestion job attempt (claim to outcome), by outcome.",
    ["status"],  # succeeded | failed | retry
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
WORKER_LAST_POLL = Gauge(
    "rag_worker_last_poll_timestamp_seconds", "Unix time of the worker's last successful poll of the queue."
)
FAILURES = Counter(
    "rag_failures_total", "Internal failures by component.", ["component"]
)  # vector_store | registry | embedder | cache | jobs
METADATA_KEYS_UNINDEXED = Counter(
    "rag_metadata_keys_unindexed_total",
    "Distinct metadata keys refused a payload index (past METADATA_INDEX_MAX_KEYS; filtered unindexed).",
    ["store"],
)  # edge | qdrant
METADATA_INDEX_BACKLOG = Gauge(
    "rag_metadata_index_backlog", "Metadata payload indexes admitted and not built yet (embedded store)."
)
EDGE_CONSOLIDATIONS = Counter(
    "rag_edge_consolidations_total",
    "Consolidation attempts of the embedded store that got as far as a merge, by outcome.",
    ["outcome"],
)  # swapped | unchanged | replay_limit (too many writes during the merge) | discarded (cancelled, or a write
# that cannot be replayed) | skipped (due, but not worth a child)
# Every outcome is a series from the start (0), so rate() and an alert see it before the first consolidation.
for _outcome in ("swapped", "unchanged", "skipped", "replay_limit", "discarded"):
    EDGE_CONSOLIDATIONS.labels(outcome=_outcome)

# --- answers (POST /v1/answer) ------------------------------------------------------------------------------
# LLM calls take seconds, not milliseconds: buckets up to two minutes.
LLM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
ANSWERS = Counter(
    "rag_answers_total", "Answers given, by generator.", ["generator"]
)  # llm | extractive | no_context
LLM_REQUESTS = Counter(
    "rag_llm_requests_total", "Chat Completions calls, by outcome.", ["outcome"]
)  # ok | error | cancelled
LLM_ERRORS = Counter(
    "rag_llm_errors_total", "Failed Chat Completions calls, by cause.", ["cause"]
)  # timeout | rate_limited | server_error | connection | circuit_open | auth | bad_request | bad_response
# | empty_response | protocol | internal
LLM_SECONDS = Histogram(
    "rag_llm_request_duration_seconds",
    "Chat Completions call time, start to last token (retries included).",
    ["outcome"],
    buckets=LLM_BUCKETS,
)
LLM_FIRST_TOKEN_SECONDS = Histogram(
    "rag_llm_time_to_first_token_seconds", "Time to the first streamed token.", buckets=LLM_BUCKETS
)
LLM_TOKENS = Counter(
    "rag_llm_tokens_total",
    "LLM tokens, by direction (provider-reported when it reports them).",
    ["direction"],
)  # input | output

# Known label values start at 0, so the error-rate alert's ratio has both series before the first failure.
for _generator in ("llm", "extractive", "no_context"):
    ANSWERS.labels(generator=_generator)
for _outcome in ("ok", "error", "cancelled"):
    LLM_REQUESTS.labels(outcome=_outcome)
for _cause in (
    "timeout",
    "rate_limited",
    "server_error",
    "connection",
    "circuit_open",
    "auth",
    "bad_request",
    "bad_response",
    "empty_response",
    "protocol",
    "internal",
):
    LLM_ERRORS.labels(cause=_cause)
for _direction in ("input", "output"):
    LLM_TOKENS.labels(direction=_direction)
EXTRACTIONS = Counter(
    "rag_extractions_total",
    "Text extractions by where they ran and outcome.",
    ["where", "outcome"],
)  # where: inline | worker; outcome: ok | invalid | extract_cpu_seconds | extract_memory_mb | unavailable | error
for _where in ("inline", "worker"):
    for _outcome in ("ok", "invalid", "extract_cpu_seconds", "extract_memory_mb", "unavailable", "error"):
        EXTRACTIONS.labels(where=_where, outcome=_outcome)
