"""The FastAPI application factory: `create_app(settings)` wires adapters into services at start-up.

    app = create_app()                                  # everything from the environment
    app = create_app(settings, embedder=embedder)       # tests: share one loaded model
    app = create_app(settings, vectors=FlakyStore(...)) # tests: inject a failing/wrapped adapter

Adapters passed in are used as they are and not closed by the app; the ones the app builds itself (from
settings) are closed on shutdown. The lifespan builds a `Services` container on ``app.state.services``: it
migrates the registry, creates the Qdrant collection when missing and loads the embedding model, so a started
app is ready to serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, wait
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeGuard

from anyio import to_thread
from fastapi import Depends, FastAPI

from service.app import production
from service.app.answer import service as answer_service
from service.app.api.middleware import install_middleware
from service.app.api.routes import admin, answer, documents, health, internal, jobs, metrics, search
from service.app.api.routes.docs import install_docs
from service.app.core.background import start_in_thread
from service.app.core.config import Settings, get_settings
from service.app.core.errors import Conflict, InvalidInput, error_responses, install_error_handlers
from service.app.core.logging import configure_logging
from service.app.core.security import declare_bearer_scheme
from service.app.ingest.chunking import CHUNKER_VERSION, Chunker
from service.app.ingest.index import (
    UNVERSIONED_CHUNKER,
    ActiveIndex,
    IndexConfig,
    IndexGeneration,
    IndexState,
)
from service.app.ingest.sandbox import Extractor
from service.app.ingest.service import IngestService
from service.app.jobs.reindex import Reindexer, startup_decision
from service.app.search.query_cache import QueryVectorCache
from service.app.search.service import SearchService
from service.app.store.gc import CollectionStopped, Pacer, collect_orphans
from service.app.store.live_versions import LiveVersions
from service.app.store.protocols import Embedder
from service.app.store.registry import DocumentRegistry, RegistryOpenError
from service.app.store.remote import RemoteVectorStore
from service.app.store.vectors import VectorStore

if TYPE_CHECKING:
    from service.app.store.qdrant import QdrantVectorStore

logger = logging.getLogger(__name__)


def open_vector_store(settings: Settings, *, model_name: str, dimension: int) -> VectorStore:
    """The adapter the settings select: a Qdrant server (QDRANT_URL), else qdrant-edge or local mode in-process."""
    if settings.embedded_vector_store == "edge":
        from service.app.store.edge import EdgeVectorStore

        return EdgeVectorStore.from_settings(settings, model_name=model_name, dimension=dimension)
    if settings.embedded_vector_store == "local":
        from service.app.store.edge import refuse_local_beside_edge

        refuse_local_beside_edge(settings)
    # qdrant-client is imported only here, when a server URL or local mode is configured (~2.5 s of imports).
    from service.app.store.qdrant import QdrantVectorStore

    return QdrantVectorStore.from_settings(settings, model_name=model_name, dimension=dimension)


@dataclass
class Services:
    """Everything a request may need, built once per app by the lifespan."""

    settings: Settings
    registry: DocumentRegistry
    vectors: VectorStore
    embedder: Embedder
    ingest: IngestService
    search: SearchService
    # Shutdown hooks for what the app built itself (injected adapters belong to the caller).
    closers: list[Callable[[], Any]] = field(default_factory=list, repr=False)
    # Production features, attached by service.app.production.attach in the lifespan.
    auth: Any = None  # ApiKeyAuthenticator
    limiter: Any = None  # RateLimiter
    cache: Any = None  # Cache | None
    jobs: Any = None  # JobQueue
    answer: Any = None  # AnswerService, attached by service.app.answer.service.attach
    reindexer: Any = None  # Reindexer
    extractor: Any = None  # Extractor: text extraction within per-document budgets

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


def build_services(
    settings: Settings,
    *,
    embedder: Embedder | Future[Embedder] | None = None,
    vectors: VectorStore | None = None,
    registry: DocumentRegistry | None = None,
    start_reindex: bool = True,
    queries: bool = True,
) -> Services:
    """Build (or take) the adapters, prepare the backends, and wire the domain services.

    ``embedder`` may be a model still loading (`python -m service` starts it before importing the app); a
    failed load raises here, as an inline one would.
    ``start_reindex``: whether a config that differs from the served index starts a re-index here (the API);
    workers pass False and follow the index pointer instead.
    ``queries``: whether this process serves searches; an ingestion worker passes False, so the embedder does not
    build its int8 query session (~80 MB) at start-up (service.app.store.embedder).
    """
    closers: list[Callable[[], Any]] = []
    if embedder is None:
        import fastembed  # noqa: F401 - imported here: the thread only builds the session (service/__main__.py)

        from service.app.store.embedder import FastEmbedEmbedder

        # The model loads while the registry migrates (ONNX Runtime builds its session without the GIL).
        embedder = start_in_thread(
            lambda: FastEmbedEmbedder.from_settings(settings, queries=queries), name="model-load"
        )
    try:
        if registry is None:
            registry = DocumentRegistry.from_settings(settings)
            closers.append(registry.close)
        registry.migrate()
    except BaseException:
        if isinstance(embedder, Future):
            # A session build in native code must finish before the interpreter exits on this failure, or the
            # exit aborts the process (SIGABRT) instead of reporting the failure.
            wait([embedder])
        raise
    if isinstance(embedder, Future):
        embedder = embedder.result()  # the store's collection name needs the model's name and dimension
    if vectors is None:
        vectors = open_vector_store(settings, model_name=embedder.model_name, dimension=embedder.dimension)
        closers.append(vectors.close)
    check_server = getattr(vectors, "check_server", None)
    if check_server is not None:
        check_server()  # a server that cannot be reached is one line naming QDRANT_URL, not a traceback
    vectors.ensure_collection()
    wanted = IndexConfig(embedder.model_name, settings.chunk_size, settings.chunk_overlap)
    make_generation = _generation_factory(settings, vectors, embedder, closers)
    pointer = registry.index_pointer()
    first = wanted
    if pointer is None:
        refuse_unregistered_store(registry, vectors)
        # First start (or an upgrade from before re-indexing): the collection the settings name is the index.
        # Documents in it were written by a release before the chunker was versioned.
        if registry.count_documents():
            first = replace(wanted, chunker=UNVERSIONED_CHUNKER)
        try:
            registry.switch_index(vectors.collection, first.as_dict(), expected=None)
        except Conflict:
            pointer = registry.index_pointer()  # another replica wrote it first
    if pointer is None or pointer.collection == vectors.collection:
        served = IndexConfig.from_dict(pointer.config) if pointer is not None else first
        generation = make_generation(served, vectors.collection)
    else:
        generation = make_generation(IndexConfig.from_dict(pointer.config), pointer.collection)
        generation.vectors.ensure_collection()
    standby = None
    if pointer is not None and pointer.previous_collection and pointer.previous_config:
        standby = make_generation(IndexConfig.from_dict(pointer.previous_config), pointer.previous_collection)
        standby.vectors.ensure_collection()
    index = ActiveIndex(generation)
    if standby is not None:
        index.set(IndexState(current=generation, shadow=standby))
    ingest = IngestService(
        registry=registry,
        vectors=generation.vectors,
        embedder=generation.embedder,
        chunker=generation.chunker,
        commit_deadline_seconds=settings.gc_grace_seconds,
        index=index,
    )
    reindexer = Reindexer(
        registry=registry,
        ingest=ingest,
        index=index,
        make_generation=make_generation,
        alias=settings.qdrant_collection_prefix if settings.qdrant_url else None,
        drain_timeout_seconds=settings.gc_grace_seconds,
        lease_seconds=settings.reindex_lease_seconds,
        pointer_ttl_seconds=settings.index_pointer_ttl_seconds,
        settings_config=wanted,
    )
    closers.insert(0, reindexer.close)
    # Worker processes start on the first large HTML or PDF; closing stops them (no orphans after SIGTERM).
    extractor = Extractor(settings)
    closers.append(extractor.close)
    services = Services(
        settings=settings,
        registry=registry,
        vectors=vectors,
        embedder=embedder,
        ingest=ingest,
        search=SearchService(
            registry=registry,
            vectors=vectors,
            embedder=embedder,
            index=index,
            query_cache=QueryVectorCache(settings.query_embedding_cache_size)
            if settings.query_embedding_cache_size
            else None,
            live=LiveVersions(registry, outage_seconds=settings.registry_outage_search_seconds),
        ),
        closers=closers,
        reindexer=reindexer,
        extractor=extractor,
    )
    # Every search and write first follows the persisted pointer and lease (cached for a short TTL), so a
    # switch or rollback by another replica is served here without a write, and writes reach its build.
    ingest.sync_index = reindexer.sync
    services.search.sync_index = reindexer.sync
    needs_sparse = not getattr(generation.vectors, "has_sparse", True)
    changed = not generation.config.same_settings(wanted)  # a newer chunker alone is the admin's call
    if start_reindex and not changed and generation.config.chunker < CHUNKER_VERSION:
        logger.warning(
            "the served index %s was built by chunker version %d (this release's is %d): documents written "
            "before may be chunked differently from new ones (before version 2, a text without spaces could be "
            "one chunk far over the character cap; before version 3, every line break of hard-wrapped text ended "
            "a sentence, so answers quoted half-lines). Search works as it is; to rebuild them with the current "
            "rules, re-index with the same settings: POST /v1/admin/reindex {} (an admin route: set "
            "ADMIN_API_KEY, which `make serve` leaves unset) or `ragops reindex start`%s",
            generation.collection,
            generation.config.chunker,
            CHUNKER_VERSION,
            _textless_note(registry),
        )
    if start_reindex:
        _startup_reindex(settings, registry, reindexer, generation, wanted, needs_sparse=needs_sparse)
        # A build that died before it switched (kill -9, OOM, a lost node) is resumed by the next API process
        # that sees its lease expire (this one, at once if the build was its own predecessor's on this host).
        reindexer.resume_interrupted = True
        reindexer.sync(force=True)
    return services


def _textless_note(registry: DocumentRegistry) -> str:
    """What a re-index needs first when some documents have no kept text ("" when none)."""
    count = registry.count_without_text()
    if not count:
        return ""
    return (
        f"; first re-send the {count} documents written before texts were kept (PUT them again, or run "
        "`python -m service.client ingest DIR` again): a re-index cannot rebuild them and fails until then "
        "(GET /v1/admin/reindex lists them)"
    )


def _startup_reindex(
    settings: Settings,
    registry: DocumentRegistry,
    reindexer: Reindexer,
    generation: IndexGeneration,
    wanted: IndexConfig,
    *,
    needs_sparse: bool,
) -> None:
    """Re-index towards the deployed settings when they changed since the served index was chosen (a changed
    model or chunking, or a collection without the sparse vectors hybrid search needs), in the background while
    search serves the current one; never over an operator's rollback or manual choice made against these very
    settings (service.app.jobs.reindex.startup_decision). One line at INFO or WARNING says why, either way."""
    pointer = registry.index_pointer()
    decision = startup_decision(pointer, generation.config, wanted, needs_sparse=needs_sparse)
    reason = decision.reason
    if decision.follow_settings and pointer is not None and registry.follow_settings(pointer.collection):
        logger.info("index pointer: %s", reason)
    if decision.reindex and not settings.reindex_on_config_change:
        reason = f"{reason.removesuffix(': re-indexing')}; not re-indexing: REINDEX_ON_CONFIG_CHANGE is off"
        decision = replace(decision, reindex=False)
    if decision.reindex:
        reason += _textless_note(registry)
    reindexer.startup = reason
    if not decision.reindex:
        # A served index that differs from the settings is worth a warning; one that has them is not news.
        level = logging.INFO if generation.config.same_settings(wanted) else logging.WARNING
        logger.log(level, "start-up re-index decision: %s", reason)
        return
    logger.info("start-up re-index decision: %s", reason)
    try:
        reindexer.start(wanted, queue=True)  # one replica builds; the others wait for its lease
    except InvalidInput as exc:
        # Keep serving the index that exists (with its own model and chunking) rather than an empty one.
        logger.error("cannot re-index to the configured model/chunking: %s", exc.message)
        reindexer.startup = f"{reason}; cannot re-index: {exc.message}"


def _generation_factory(
    settings: Settings, base: VectorStore, embedder: Embedder, closers: list[Callable[[], Any]]
) -> Callable[..., IndexGeneration]:
    """Builds the generation of a config: its collection through the same client, its model, its chunker."""
    embedders: dict[str, Embedder] = {embedder.model_name: embedder}
    # One store object per collection: local mode's in-process point index must see every write to it.
    stores: dict[str, VectorStore] = {base.collection: base}

    def drop(collection: str) -> bool:
        """Delete ``collection`` (one the pointer and the lease no longer name); False when this store cannot.

        Never the collection the settings named at start-up: the process's base store (the orphan collector's
        and the workers' handle) stays open for its lifetime."""
        from service.app.store.edge import EdgeVectorStore

        if collection == base.collection:
            return False
        store = stores.pop(collection, None)
        if store is None and (_is_qdrant_client_store(base) or isinstance(base, EdgeVectorStore)):
            store = base.sibling(collection, base.dimension)
        dropper = getattr(store, "drop", None)
        if dropper is None:
            return False
        dropper()
        return True

    def make(config: IndexConfig, collection: str | None = None) -> IndexGeneration:
        from service.app.store.edge import EdgeVectorStore

        model = embedders.get(config.model)
        if model is None:
            from service.app.store.embedder import EmbeddingModelError, FastEmbedEmbedder

            try:
                model = FastEmbedEmbedder(
                    config.model,
                    cache_dir=settings.resolved_embedding_cache_dir,
                    batch_size=settings.embedding_batch_size,
                    threads=settings.embedding_threads,
                )
            except EmbeddingModelError as exc:
                raise InvalidInput(
                    f"model {config.model!r} cannot be loaded here ({exc}); the image must hold every model "
                    "the index uses during a change (python -m service.tools.fetch_model --model ...)"
                ) from exc
            embedders[config.model] = model
        if collection is None:
            collection = config.collection(settings.qdrant_collection_prefix, model.dimension)
        if _is_qdrant_client_store(base):
            store = stores.setdefault(collection, base.sibling(collection, model.dimension))
        elif isinstance(base, EdgeVectorStore):
            # One shard directory per collection under EDGE_PATH, sharing the base store's lock; each is
            # flushed and closed at shutdown.
            store = stores.get(collection)
            if store is None:
                store = stores[collection] = base.sibling(collection, model.dimension)
                closers.append(store.close)
        elif collection == base.collection or isinstance(base, RemoteVectorStore):
            # A store lent by the API process (service.app.store.remote) serves the API's current collection.
            store = base
        else:
            raise InvalidInput(
                f"re-indexing into a new collection is not supported by the {type(base).__name__} store; "
                "use the embedded store (VECTOR_STORE=edge) or a Qdrant server (QDRANT_URL)"
            )
        try:
            chunker = Chunker(
                model.tokenizer,
                max_tokens=model.max_tokens,
                chunk_size=config.chunk_size,
                chunk_overlap=config.chunk_overlap,
            )
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        return IndexGeneration(config, store, model, chunker)

    make.drop = drop  # type: ignore[attr-defined]
    return make


def _is_qdrant_client_store(store: VectorStore) -> TypeGuard[QdrantVectorStore]:
    """Whether ``store`` is the qdrant-client adapter, without importing qdrant-client to find out (a process
    that never imported the adapter's module holds none of its stores)."""
    module = sys.modules.get("service.app.store.qdrant")
    return module is not None and isinstance(store, module.QdrantVectorStore)


def refuse_unregistered_store(registry: DocumentRegistry, vectors: VectorStore) -> None:
    """Refuse to start on an empty registry (no index pointer, no document) beside a store that holds chunks.

    That pair is a registry lost or replaced (registry.db deleted or truncated to zero bytes, a restore that
    missed it, DATABASE_URL pointing at a new or wrong database), not a first start: every stored chunk would be
    an orphan to the registry, and the orphan collector would delete all of them once GC_GRACE_SECONDS passed.
    Only this first-start path pays the scan, and on a real first start the store is empty.
    """
    if registry.count_documents():
        return  # an upgrade from before the index pointer existed: the registry knows the documents
    stored = vectors.versions()
    if not stored:
        return
    points = sum(version.points for version in stored)
    documents = len({(version.tenant_id, version.document_id) for version in stored})
    raise RegistryOpenError(
        f"the registry ({registry.describe()}) records no documents, but the vector store's collection "
        f"{vectors.collection!r} holds {points} chunks of {documents} documents: the registry was lost or "
        "replaced (or DATABASE_URL names the wrong database). Starting would make every stored chunk an orphan "
        "that the orphan collector deletes after GC_GRACE_SECONDS, so the service stops before touching them. "
        "Restore the registry from a backup, or point DATABASE_URL at the right database; to start over empty, "
        "delete the collection (the embedded store: the EDGE_PATH directory) yourself"
    )


async def _collect_orphans_forever(services: Services, stop: threading.Event) -> None:
    """Orphan collection at start-up, then every GC_INTERVAL_SECONDS (0: start-up only); failures are logged.
    Setting ``stop`` ends a running pass at its next slice (a paced pass runs for tens of seconds at 100k)."""
    settings = services.settings
    while True:
        try:
            await to_thread.run_sync(
                lambda: collect_orphans(
                    services.registry,
                    services.ingest.vectors,  # the collection search serves from now
                    grace_seconds=settings.gc_grace_seconds,
                    max_versions=settings.gc_max_versions,
                    pause=Pacer(stop=stop),
                )
            )
        except CollectionStopped:
            return
        except Exception as exc:
            # A backend outage: the next run retries; search ignores orphans meanwhile.
            logger.warning("orphan collection failed: %s", getattr(exc, "message", exc))
        try:
            # Write-order rows nothing can consult any more: marked on one pass, deleted on a later one at
            # least GC_GRACE_SECONDS after (DocumentRegistry.prune_write_order).
            pruned = await to_thread.run_sync(
                lambda: services.registry.prune_write_order(settings.gc_grace_seconds)
            )
            if pruned:
                logger.info("pruned %d write-order rows", pruned)
        except Exception as exc:
            logger.warning("write-order pruning failed: %s", getattr(exc, "message", exc))
        if not settings.gc_interval_seconds:
            return
        await asyncio.sleep(settings.gc_interval_seconds)


def create_app(
    settings: Settings | None = None,
    *,
    embedder: Embedder | Future[Embedder] | None = None,
    vectors: VectorStore | None = None,
    registry: DocumentRegistry | None = None,
) -> FastAPI:
    """The service app; optional adapters replace the ones the settings would build (see module docstring)."""
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await to_thread.run_sync(
            lambda: build_services(settings, embedder=embedder, vectors=vectors, registry=registry)
        )
        app.state.services = services
        close_production = await production.attach(services)
        close_answer = await answer_service.attach(services)
        stop_collector = threading.Event()
        collector = (
            asyncio.create_task(_collect_orphans_forever(services, stop_collector), name="orphan-collector")
            if settings.gc_enabled
            else None
        )
        try:
            yield
        finally:
            if collector is not None:
                stop_collector.set()  # the worker thread's pass stops at its next slice; cancel the waits
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
            await close_answer()
            await close_production()
            await to_thread.run_sync(services.close)

    docs = settings.resolved_docs_enabled
    app = FastAPI(
        title="RAG document service",
        version="0.1.0",
        summary="Ingest documents, search them semantically.",
        lifespan=lifespan,
        # /docs is ours (install_docs below): Swagger UI from a pinned package, not FastAPI's CDN page.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    if docs:
        install_docs(app, "/openapi.json")
    install_error_handlers(app)
    install_middleware(app, settings)
    # Every /v1 router declares its rate_limit dependency itself (authentication, then the key's budget, before
    # the body is read: service.app.api.routing); the OpenAPI document declares the Bearer scheme when keys are
    # needed.
    v1_errors = error_responses(401, 422, 429)
    v1_security = [] if settings.auth_disabled else [Depends(declare_bearer_scheme)]
    # Search first: routes are matched in order, and search is the hot path (each router ahead of it cost its
    # routes' matching on every search; POST /v1/search itself is answered by service.app.api.fast_search).
    for router in (search.router, documents.router, documents.bulk_router, answer.router, jobs.router):
        app.include_router(router, dependencies=v1_security, responses=v1_errors)
    app.include_router(
        admin.router,
        dependencies=admin.admin_dependencies(
            auth_disabled=settings.auth_disabled and settings.admin_api_key is None
        ),
        responses=error_responses(401, 403),
    )
    app.include_router(health.router)
    app.include_router(metrics.router)
    if settings.internal_token is not None:
        app.include_router(internal.router)
    return app
