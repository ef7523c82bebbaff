"""Service settings: one `Settings` class read from the environment (and `.env`), cached by `get_settings()`.

Every variable is documented in the README's settings table; keep the two in step.
Embedded defaults (SQLite + the qdrant-edge vector store under DATA_DIR, the offline ONNX model) need no external
service.
`ENVIRONMENT=production` refuses insecure settings at start-up with an error naming the variable.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Production API keys: at least this many characters (e.g. `openssl rand -hex 32` gives 64).
MIN_PRODUCTION_KEY_LENGTH = 32

# HTML parsed in the API process (no budget) stays below this in production: its worst case measured at 64 KiB
# is a few hundred ms of CPU (docs/benchmarks.md), and the cost is quadratic in nesting depth beyond.
PRODUCTION_MAX_INLINE_EXTRACT_BYTES = 65536

# Where `make model` writes the offline all-MiniLM-L6-v2 export (relative to the repo root).
DEFAULT_MODEL_DIR = Path(".models/all-MiniLM-L6-v2")
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # the model DEFAULT_MODEL_DIR holds


# GC_GRACE_SECONDS below this (other than 0 on the embedded single-process service) is refused: see
# Settings._check_gc_grace.
MIN_GC_GRACE_SECONDS = 60.0


class SettingsError(ValueError):
    """A setting is missing or unsafe; the message names the environment variable."""


class Settings(BaseSettings):
    """All runtime configuration of the service; field name upper-cased is the environment variable."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # --- runtime -------------------------------------------------------------------------------------
    environment: Literal["development", "test", "staging", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    data_dir: Path = Path(".data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    # --- registry (SQLAlchemy) -------------------------------------------------------------------------
    database_url: str | None = Field(
        None, description="postgresql+psycopg://... ; default: SQLite in DATA_DIR"
    )
    database_connect_timeout_seconds: float = Field(
        5.0,
        ge=2,
        le=300,
        description="Postgres: give up a connection attempt after this long (libpq connect_timeout)",
    )
    database_tcp_timeout_seconds: float = Field(
        15.0,
        ge=1,
        le=3600,
        description="Postgres: drop a connection whose host stopped answering after this long (tcp_user_timeout, "
        "keepalives); without it a lost host parked each call for the kernel's ~15 minutes",
    )
    registry_outage_search_seconds: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="search answers from the process's copy of the live document versions while the registry "
        "cannot be read, for at most this long after the copy's last registry read (then 503); 0: every search "
        "needs the registry",
    )

    write_durability: Literal["power_loss", "process_crash"] = Field(
        "power_loss",
        description="what an acknowledged write survives on the embedded stores: power_loss (the edge store's WAL "
        "and the SQLite registry's WAL are fsynced before the 2xx) or process_crash (no fsync per write: a power "
        "cut or kernel crash can lose the last writes, a process crash cannot)",
    )

    # --- vector store (Qdrant) -------------------------------------------------------------------------
    qdrant_url: str | None = Field(None, description="http(s)://host:6333 ; unset: the embedded VECTOR_STORE")
    vector_store: Literal["edge", "local"] = Field(
        "edge",
        description="embedded store when QDRANT_URL is unset: qdrant-edge, or qdrant-client local mode",
    )
    edge_path: Path | None = Field(None, description="qdrant-edge directory; default DATA_DIR/edge")
    edge_optimize_idle_seconds: float = Field(
        2.0, ge=0, description="build indexes once writes have paused this long"
    )
    edge_optimize_chunk_points: int = Field(
        4096, ge=64, description="index new points once this many were written (bounds each index build)"
    )
    edge_segment_points: int = Field(
        10240, ge=64, description="largest segment a merge or vacuum may build (bounds each index build)"
    )
    edge_indexing_threads: int = Field(0, ge=0, le=64, description="HNSW build threads; 0: one per CPU")
    edge_search_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="threads of the shard's search pool; 1: on the calling thread; 0: 1 below 5 segments, else per CPU",
    )
    edge_consolidate_idle_seconds: float = Field(
        30.0,
        ge=0,
        description="merge small segments in a child process once writes have paused this long; 0: never",
    )
    edge_consolidate_segment_points: int = Field(
        102400, ge=64, description="largest segment a consolidation merges (in a child process)"
    )
    edge_hnsw_ef: int = Field(
        400,
        ge=1,
        le=10_000,
        description=(
            "HNSW search beam per merged segment of the edge store (higher: better recall, more CPU per search); "
            "a shard of unmerged segments is searched with at most 250"
        ),
    )
    edge_consolidate_replay_max_points: int = Field(
        4096,
        ge=0,
        le=65536,
        description="points written during a consolidation's merge that are logged (in memory, ~12 KB each at "
        "384 dimensions) and replayed onto the merged copy; past it the merge is given up and retried at the next "
        "pause (0: any write during the merge gives it up)",
    )
    edge_consolidate_trickle_points: int = Field(
        512,
        ge=0,
        description="writes of at most this many points in the last EDGE_CONSOLIDATE_IDLE_SECONDS count as a "
        "trickle, which starts a due consolidation after EDGE_CONSOLIDATE_TRICKLE_WAIT_SECONDS without a pause "
        "(0: only a pause starts one)",
    )
    edge_consolidate_trickle_wait_seconds: float | None = Field(
        None,
        gt=0,
        description="how long a due consolidation waits for a pause under a trickle of writes before it starts "
        "anyway; default: ten times EDGE_CONSOLIDATE_IDLE_SECONDS",
    )
    edge_quantization: Literal["none", "int8"] = Field(
        "int8",
        description="scalar quantization of the dense vectors of NEW edge shards (searched, then rescored exactly)",
    )
    metadata_index_max_keys: int = Field(
        32,
        ge=0,
        le=1024,
        description="metadata keys per collection that get a payload index (first come; the rest are filtered "
        "unindexed); docs/benchmarks.md",
    )
    qdrant_api_key: SecretStr | None = None
    qdrant_prefer_grpc: bool = False
    qdrant_path: Path | None = Field(None, description="local-mode directory; default DATA_DIR/qdrant")
    qdrant_collection_prefix: str = Field("documents", pattern=r"^[a-z0-9_-]+$")
    qdrant_replication_factor: int = Field(1, ge=1, le=10)
    qdrant_shard_number: int = Field(1, ge=1, le=64)
    qdrant_timeout_seconds: float = Field(10.0, gt=0)
    qdrant_vectors_on_disk: bool = Field(
        False,
        description="server mode: the collection's dense vectors are memory-mapped from disk instead of held in RAM",
    )
    qdrant_quantization: Literal["none", "int8"] = Field(
        "none",
        description="server mode: int8 scalar-quantized copies of the dense vectors in RAM, searched and rescored",
    )
    internal_token: SecretStr | None = Field(
        None,
        description="API: serve its embedded store to workers on /internal/vectors; worker: the token to send",
    )
    vector_store_url: str | None = Field(
        None,
        description="worker: base URL of the API whose embedded store it writes through (INTERNAL_TOKEN)",
    )

    # --- embedding and chunking ------------------------------------------------------------------------
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    embedding_model_path: Path | None = Field(
        None, description="local ONNX model dir; default .models/all-MiniLM-L6-v2 when it exists"
    )
    embedding_cache_dir: Path | None = Field(
        None, description="fastembed cache dir; default DATA_DIR/fastembed"
    )
    embedding_batch_size: int = Field(4, ge=1, le=1024)
    embedding_threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads")
    embedding_query_precision: Literal["int8", "fp32"] = Field(
        "int8",
        description="graph search queries run: int8 (model_query_int8.onnx from `make model`) or fp32 (model.onnx); "
        "documents are always fp32 (docs/model.md)",
    )
    query_embedding_cache_size: int = Field(
        4096, ge=0, description="query texts whose vectors are kept per process (~2 KB each); 0: off"
    )
    chunk_size: int = Field(200, ge=16, le=8192, description="tokens per chunk (capped at the model max)")
    chunk_overlap: int = Field(32, ge=0)

    reindex_on_config_change: bool = Field(
        True,
        description="at start-up, re-index in the background when EMBEDDING_MODEL/CHUNK_SIZE/CHUNK_OVERLAP "
        "differ from the index search serves (instead of serving an empty collection)",
    )
    reindex_lease_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="re-index lease in the registry: the building replica renews it every third of this; "
        "when it dies, another replica takes the build over after at most this long",
    )
    index_pointer_ttl_seconds: float = Field(
        1.0,
        ge=0,
        le=300,
        description="how stale a replica's view of the index pointer and re-index lease may be before a search "
        "or write re-reads it (0: every request)",
    )
    admin_api_key: SecretStr | None = Field(
        None, description="bearer key of the /v1/admin routes (re-index); unset: admin routes refuse (403)"
    )

    # --- orphan collector (service.app.store.gc) ------------------------------------------------------
    gc_enabled: bool = Field(
        True, description="collect orphan points at start-up and every GC_INTERVAL_SECONDS"
    )
    gc_interval_seconds: float = Field(
        3600.0, ge=0, description="seconds between orphan-point collections (0: only at start-up)"
    )
    gc_grace_seconds: float = Field(
        3600.0,
        ge=0,
        description="age before an unpublished version is an orphan; writes older refuse to commit",
    )
    gc_max_versions: int = Field(
        10_000, ge=1, description="document versions removed per collection run at most"
    )

    ready_min_free_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="/readyz fails, and the embedded store refuses writes (503), when DATA_DIR has less free space than this",
    )

    # --- input limits ----------------------------------------------------------------------------------
    max_document_bytes: int = Field(10_000_000, ge=1)
    bulk_max_documents: int = Field(100, ge=1, le=1000, description="documents per POST /v1/documents/bulk")
    bulk_max_bytes: int = Field(10_000_000, ge=1, description="body size of POST /v1/documents/bulk")

    # --- extraction budgets (service.app.ingest.sandbox; defaults measured in docs/benchmarks.md) --------
    extract_workers: int = Field(
        2, ge=1, le=64, description="extraction worker processes per API process: extractions at once"
    )
    extract_cpu_seconds: int = Field(
        20, ge=1, le=3600, description="CPU seconds one document's text extraction may use (else 422)"
    )
    extract_memory_mb: int = Field(
        512, ge=160, le=65536, description="address-space limit of an extraction worker, MB (else 422)"
    )
    extract_timeout_seconds: float = Field(
        60.0, gt=0, le=7200, description="wall-clock limit of one extraction (else 503: workers overloaded)"
    )
    extract_inline_max_bytes: int = Field(
        16384, ge=0, le=1_048_576, description="HTML up to this size is parsed in-process (no worker)"
    )

    # --- auth and tenancy ------------------------------------------------------------------------------
    auth_disabled: bool = False
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description='JSON {"key": "tenant"} or "key1:tenant1,key2:tenant2"'
    )
    api_keys_file: Path | None = Field(None, description="file with API_KEYS content (a mounted Secret)")
    default_tenant: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    # --- rate limits (limits syntax, per API key) -------------------------------------------------------
    rate_limit_enabled: bool = True
    rate_limit_ingest: str = "120/minute"
    rate_limit_search: str = "600/minute"

    # --- redis: cache, rate-limit storage, job queue ---------------------------------------------------
    redis_url: str | None = None
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(300, ge=1)
    cache_max_entries: int = Field(2048, ge=1)

    # --- async ingestion -------------------------------------------------------------------------------
    jobs_queue_name: str = "rag:ingest"
    jobs_in_process: bool = Field(
        False,
        description="run async ingestion jobs in this API process even with REDIS_URL set (no worker deployed); "
        "Redis then serves only the cache and rate limits",
    )
    worker_metrics_port: int = Field(
        9100, ge=0, le=65535, description="worker's /metrics, /healthz, /readyz port (on HOST); 0: off"
    )
    worker_stale_seconds: float = Field(
        60.0, gt=0, description="worker probes fail after this long without a successful poll of the queue"
    )
    jobs_max_concurrency: int = Field(2, ge=1, le=64)
    jobs_result_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    jobs_max_attempts: int = Field(6, ge=1, le=100, description="tries of a job failing on a backend outage")
    jobs_retry_base_seconds: float = Field(2.0, gt=0, description="first retry delay; doubles per attempt")
    jobs_retry_max_seconds: float = Field(300.0, gt=0, description="longest retry delay")
    jobs_shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="in-process jobs: how long a shutdown waits for running jobs (the rest resume at next start)",
    )
    jobs_sweep_seconds: float = Field(
        5.0,
        gt=0,
        description="how often workers re-send wake-ups Redis lost and for jobs whose lease expired",
    )
    job_lease_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="lease of a running job, renewed every third of this by its worker; a job whose worker "
        "died is taken over this long (plus one JOBS_SWEEP_SECONDS) after its last renewal",
    )

    # --- answers (POST /v1/answer): the LLM, its limits, the embedded extractive fallback ------------------
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible Chat Completions base URL; unset: extractive answers"
    )
    llm_model: str | None = Field(
        None, description="model name sent to the provider (required with LLM_BASE_URL)"
    )
    llm_api_key: SecretStr | None = Field(None, description="provider API key (never logged)")
    llm_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="connect/read/write timeout per attempt"
    )
    llm_max_retries: int = Field(
        2, ge=0, le=10, description="retries on 408/409/429/5xx and connection errors"
    )
    llm_max_tokens: int = Field(512, ge=1, le=32768, description="completion token cap per answer")
    llm_context_tokens: int = Field(8192, ge=1024, le=2_000_000, description="the model's context window")
    llm_tokenizer_path: Path | None = Field(
        None, description="tokenizer.json of the served model; default: the embedding model's tokenizer"
    )
    llm_token_budget: str = Field("", description="per-tenant LLM token budget in limits syntax; empty: none")
    llm_circuit_failures: int = Field(
        5, ge=1, le=1000, description="consecutive failures that open the breaker"
    )
    llm_circuit_reset_seconds: float = Field(
        30.0, gt=0, le=3600, description="how long the breaker stays open"
    )
    answer_min_score: float = Field(
        0.3,
        ge=-1.0,
        le=1.0,
        description="below this similarity a chunk is not an answer's source (in sparse and hybrid mode a chunk "
        "holding the question's codes or most of its keywords counts too); none left: no answer",
    )

    # --- HTTP hygiene ----------------------------------------------------------------------------------
    http_header_timeout_seconds: float = Field(
        10.0, gt=0, description="a connection must complete its request headers within this (slowloris)"
    )
    http_body_idle_timeout_seconds: float = Field(
        30.0, gt=0, description="longest silence while a request body is being received"
    )
    http_body_min_rate_bytes: int = Field(
        500,
        ge=0,
        description="past its first HTTP_BODY_IDLE_TIMEOUT_SECONDS a request body must arrive at this many bytes "
        "per second on average, else the connection is closed (0: no minimum)",
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        gt=0,
        description="on SIGTERM/Ctrl-C, how long in-flight requests may finish before they are cancelled and the "
        "process shuts down (inside the pod's 45 s grace period, after its 10 s preStop wait)",
    )
    http_keep_alive_seconds: int = Field(
        5, ge=1, description="idle keep-alive connections are closed after this"
    )
    http_limit_concurrency: int | None = Field(
        None, ge=1, description="connections + requests per process before new requests get 503 (uvicorn)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    docs_enabled: bool | None = Field(None, description="OpenAPI UI; default on except in production")

    @field_validator(
        "embedding_model_path",
        "api_keys_file",
        "edge_path",
        "qdrant_path",
        "embedding_cache_dir",
        "llm_tokenizer_path",
        mode="before",
    )
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # `EMBEDDING_MODEL_PATH=` (empty, e.g. to override .env from the shell) means unset, not the current
        # directory: `API_KEYS_FILE=` was read as "." (EYES10).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return parse_api_keys(value) if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    def _check_gc_grace(self) -> None:
        """A write checks its age against GC_GRACE_SECONDS, then commits; the collector removes unpublished versions
        older than it. A write that passed the check can still be committing (its transaction, the wait for the
        store's sync) when a collection starts: with a grace of seconds that collection removes the points of a
        version that then commits. Below MIN_GC_GRACE_SECONDS that gap is no longer small against the grace.
        0 is the exception where nothing else can write: every write of this process refuses to commit (its age is
        above 0), so collecting every unpublished version at once (after a crash) loses no committed write; with
        another writer of the store possible (a Qdrant server, a worker queue or a worker writing through this API,
        several worker processes) it would. The embedded store is locked to one process, whatever the registry."""
        grace = self.gc_grace_seconds
        if 0 < grace < MIN_GC_GRACE_SECONDS:
            raise SettingsError(
                f"GC_GRACE_SECONDS={grace:g} is below the safe floor of {MIN_GC_GRACE_SECONDS:g} s: the orphan "
                "collector could remove the points of a write that passed its age check and is still committing; "
                f"use at least {MIN_GC_GRACE_SECONDS:g} (default 3600)"
            )
        shared = [
            name
            for name, on in (
                ("QDRANT_URL", self.qdrant_url),
                ("VECTOR_STORE_URL", self.vector_store_url),
                ("REDIS_URL", self.redis_url),
                ("WORKERS>1", self.workers > 1),
            )
            if on
        ]
        if grace == 0 and shared:
            raise SettingsError(
                f"GC_GRACE_SECONDS=0 is refused with {', '.join(shared)} set: other processes may be writing, and "
                "a collection without grace removes the points of their writes in flight, which then commit "
                f"without them; use at least {MIN_GC_GRACE_SECONDS:g} (default 3600). 0 is accepted only for the "
                "embedded single-process service (after a crash, to collect at once), where it refuses every write"
            )

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> Settings:
        self._check_gc_grace()
        if self.chunk_overlap >= self.chunk_size:
            raise SettingsError("CHUNK_OVERLAP must be smaller than CHUNK_SIZE")
        if self.edge_optimize_chunk_points > self.edge_segment_points:
            raise SettingsError("EDGE_OPTIMIZE_CHUNK_POINTS must not exceed EDGE_SEGMENT_POINTS")
        if self.edge_segment_points > self.edge_consolidate_segment_points:
            raise SettingsError("EDGE_SEGMENT_POINTS must not exceed EDGE_CONSOLIDATE_SEGMENT_POINTS")
        if self.edge_consolidate_trickle_points > self.edge_consolidate_replay_max_points:
            # A forced start under more writes than the log holds would only be given up at the limit.
            raise SettingsError(
                "EDGE_CONSOLIDATE_TRICKLE_POINTS must not exceed EDGE_CONSOLIDATE_REPLAY_MAX_POINTS "
                f"({self.edge_consolidate_trickle_points} > {self.edge_consolidate_replay_max_points})"
            )
        wait = self.edge_consolidate_trickle_wait_seconds
        if wait is not None and wait < self.edge_consolidate_idle_seconds:
            raise SettingsError(
                "EDGE_CONSOLIDATE_TRICKLE_WAIT_SECONDS must be at least EDGE_CONSOLIDATE_IDLE_SECONDS "
                f"({wait} < {self.edge_consolidate_idle_seconds}): a pause that long starts one anyway"
            )
        if self.llm_base_url and not self.llm_model:
            raise SettingsError("LLM_MODEL is required when LLM_BASE_URL is set")
        if self.llm_base_url and not self.llm_base_url.startswith(("http://", "https://")):
            raise SettingsError("LLM_BASE_URL must be an http(s):// URL")
        if self.llm_max_tokens + 256 > self.llm_context_tokens:
            raise SettingsError(
                "LLM_MAX_TOKENS must leave at least 256 tokens of LLM_CONTEXT_TOKENS for the prompt"
            )
        if self.database_url and not self.database_url.lower().startswith(DATABASE_URL_SCHEMES):
            scheme = (
                self.database_url.split("://", 1)[0] if "://" in self.database_url else self.database_url[:20]
            )
            raise SettingsError(
                f"DATABASE_URL must be a PostgreSQL (postgresql://, postgresql+psycopg://) or SQLite (sqlite:///) "
                f"URL, not {scheme!r}: the registry runs on those two databases only"
            )
        if self.qdrant_url and not self.qdrant_url.startswith(("http://", "https://")):
            raise SettingsError("QDRANT_URL must be an http(s):// URL (e.g. http://qdrant:6333)")
        _check_limits("RATE_LIMIT_INGEST", self.rate_limit_ingest, "120/minute")
        _check_limits("RATE_LIMIT_SEARCH", self.rate_limit_search, "600/minute;20/second")
        if self.llm_token_budget.strip():
            _check_limits("LLM_TOKEN_BUDGET", self.llm_token_budget, "200000/hour")
        if self.extract_timeout_seconds < self.extract_cpu_seconds:
            raise SettingsError(
                "EXTRACT_TIMEOUT_SECONDS must be at least EXTRACT_CPU_SECONDS: "
                "wall time below the CPU budget would turn every expensive document into a 503"
            )
        if self.environment != "production":
            return self
        if self.extract_inline_max_bytes > PRODUCTION_MAX_INLINE_EXTRACT_BYTES:
            raise SettingsError(
                f"EXTRACT_INLINE_MAX_BYTES above {PRODUCTION_MAX_INLINE_EXTRACT_BYTES} is refused when "
                "ENVIRONMENT=production: HTML parsed in-process has no time or memory budget "
                "(nesting makes its cost quadratic in size)"
            )
        if self.auth_disabled:
            raise SettingsError("AUTH_DISABLED=true is refused when ENVIRONMENT=production")
        if not self.api_keys and self.api_keys_file is None:
            raise SettingsError("ENVIRONMENT=production needs API_KEYS or API_KEYS_FILE")
        if "*" in self.cors_origins:
            raise SettingsError("CORS_ORIGINS='*' is refused when ENVIRONMENT=production")
        if any(origin.strip().lower() == "null" for origin in self.cors_origins):
            # Sandboxed iframes and file:// pages all send Origin: null; allowing it allows any of them.
            raise SettingsError("CORS_ORIGINS='null' is refused when ENVIRONMENT=production")
        keys = self.load_api_keys()  # refuses short keys, naming API_KEYS or the file they came from
        if not keys:
            raise SettingsError(
                "ENVIRONMENT=production needs at least one key in API_KEYS or API_KEYS_FILE "
                f"({self.api_keys_file or 'API_KEYS'} holds none)"
            )
        admin = self.admin_api_key.get_secret_value() if self.admin_api_key is not None else None
        if admin is not None and len(admin) < MIN_PRODUCTION_KEY_LENGTH:
            # It re-indexes every tenant's documents and rolls search back: no weaker than a tenant's key.
            raise SettingsError(
                f"ADMIN_API_KEY shorter than {MIN_PRODUCTION_KEY_LENGTH} characters is refused when "
                "ENVIRONMENT=production (generate one with `openssl rand -hex 32`)"
            )
        return self

    # --- derived values (the one place defaults that depend on other settings are resolved) -----------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'registry.db').as_posix()}"

    @property
    def uses_data_dir(self) -> bool:
        """Whether the registry or the vector store writes under DATA_DIR (the embedded defaults)."""
        return self.resolved_database_url.startswith("sqlite") or not self.qdrant_url

    @property
    def resolved_qdrant_path(self) -> Path:
        return self.qdrant_path or self.data_dir / "qdrant"

    @property
    def resolved_edge_path(self) -> Path:
        return self.edge_path or self.data_dir / "edge"

    @property
    def embedded_vector_store(self) -> Literal["edge", "local"] | None:
        """Which in-process store serves, or None when a Qdrant server (QDRANT_URL) does."""
        return None if self.qdrant_url else self.vector_store

    @property
    def resolved_model_path(self) -> Path | None:
        if self.embedding_model_path is not None:
            return self.embedding_model_path
        # `make model`'s dir holds the default model only: any other EMBEDDING_MODEL comes from fastembed's cache.
        if self.embedding_model != DEFAULT_EMBEDDING_MODEL:
            return None
        return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "model.onnx").exists() else None

    @property
    def resolved_embedding_cache_dir(self) -> Path:
        return self.embedding_cache_dir or self.data_dir / "fastembed"

    @property
    def resolved_docs_enabled(self) -> bool:
        return self.environment != "production" if self.docs_enabled is None else self.docs_enabled

    def load_api_keys(self) -> dict[str, str]:
        """API key -> tenant, merging API_KEYS and the file at API_KEYS_FILE (re-read on each call). Production's
        key rules are checked here, so a live edit of the file is held to them as the start-up is (EYES10: a short
        key added at run time was served, and the next restart refused to start)."""
        keys = self._production_keys(dict(self.api_keys), "API_KEYS")
        if self.api_keys_file is not None:
            source = f"API_KEYS_FILE {self.api_keys_file}"
            try:
                content = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(f"{source} cannot be read: {exc}") from exc
            # Its errors name the file, not API_KEYS (EYES9 L7: a broken file was reported as API_KEYS).
            keys.update(self._production_keys(parse_api_keys(content, source=source), source))
        return keys

    def _production_keys(self, keys: dict[str, str], source: str) -> dict[str, str]:
        short = [key for key in keys if len(key) < MIN_PRODUCTION_KEY_LENGTH]
        if short and self.environment == "production":
            raise SettingsError(
                f"{source}: {len(short)} key(s) shorter than {MIN_PRODUCTION_KEY_LENGTH} characters are refused "
                "when ENVIRONMENT=production (generate keys with `openssl rand -hex 32`)"
            )
        return keys


def parse_api_keys(raw: str, source: str = "API_KEYS") -> dict[str, str]:
    """Parse `{"key": "tenant"}` JSON or `key:tenant,key:tenant` (newlines also separate pairs); errors name
    `source` (the variable, or `API_KEYS_FILE <path>`)."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{source} is not valid JSON: {exc.msg}") from exc
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
        ):
            raise SettingsError(f"{source} must map string keys to string tenants")
        return _checked_tenants(parsed, source)
    keys: dict[str, str] = {}
    for pair in raw.replace("\n", ",").split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, sep, tenant = pair.partition(":")
        if not sep or not key.strip() or not tenant.strip():
            raise SettingsError(f"{source} entries must look like key:tenant")
        keys[key.strip()] = tenant.strip()
    return _checked_tenants(keys, source)


def _checked_tenants(keys: dict[str, str], source: str = "API_KEYS") -> dict[str, str]:
    # A tenant name is stored in 64-character columns and used in keys: refuse what would fail every write.
    for key, tenant in keys.items():
        if not key.strip():
            raise SettingsError(f"{source} has an empty key")
        if not TENANT_PATTERN.fullmatch(tenant):
            raise SettingsError(
                f"{source}: tenant {tenant[:80]!r} is not 1-64 characters of letters, digits, '_', '.' or '-'"
            )
    return keys


def describe_settings_error(exc: ValidationError | SettingsError) -> str:
    """A readable one-line reason per problem, each naming its environment variable; no traceback."""
    if isinstance(exc, SettingsError):
        return str(exc)
    reasons = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        reasons.append(f"{field.upper()}: {message}" if field else message)
    return "; ".join(reasons)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


DATABASE_URL_SCHEMES = ("postgresql://", "postgresql+psycopg://", "postgres://", "sqlite://")


def _check_limits(name: str, value: str, example: str) -> None:
    """SettingsError naming ``name`` unless ``value`` is in the `limits` syntax with every amount at least 1.

    Checked at start-up, whether or not the limits are on: a typo would otherwise surface as a traceback in the
    middle of the application's start-up, or only on the day someone turns the limits on.
    """
    from limits import parse_many

    try:
        items = parse_many(value)
    except ValueError as exc:
        raise SettingsError(
            f"{name} is not in limits syntax (e.g. {example}; several limits joined by ';'): {exc}"
        ) from exc
    if not items or any(item.amount < 1 for item in items):
        raise SettingsError(
            f"{name} must allow at least 1 request per window (e.g. {example}), not {value!r}"
        )
