"""The qdrant-client adapter: a Qdrant server (QDRANT_URL) or qdrant-client's local mode, behind `VectorStore`.

- Server mode when QDRANT_URL is set (API key, optional gRPC); otherwise Qdrant's local mode persisted at
  QDRANT_PATH (default DATA_DIR/qdrant) or ``:memory:``. Local mode serves one process: run WORKERS=1 with it.
- The collection (`collection_name`) is created at start-up (cosine distance) together with payload indexes on
  ``tenant_id`` (keyword, ``is_tenant``), ``document_id``, ``version`` and on the first
  ``METADATA_INDEX_MAX_KEYS`` metadata keys seen on ingest (service.app.store.metadata_index; the budget starts
  from the server's payload schema and is re-read before a new key is admitted, so replicas share it). A
  metadata index is requested with ``wait=False``: the server acknowledges it once queued and builds it over
  the collection's points in its own update worker, not in the write that brought the key. Local mode ignores
  payload indexes (it filters by scanning), which is fine for its scale.
- Every point carries two vectors: the dense embedding (the unnamed default vector here; ``dense`` in the
  embedded engine) and a BM25 sparse vector ``bm25`` computed by the service (service.app.store.sparse) and
  stored with Qdrant's IDF modifier. Search `mode` picks dense, sparse or both fused with reciprocal rank
  fusion through the Query API (prefetch + fusion), see `fused_search`. A collection created before sparse
  vectors existed is upgraded in place in local mode (sparse vector added, then filled from the chunk text each
  point keeps); a server collection is not (a 1.15 server cannot add a vector to a collection): it serves
  dense search until a re-index builds its successor with both (``has_sparse``).

qdrant-client (about 2.5 s to import, fastembed included) is only imported by a process that selects this
adapter: the embedded default (qdrant-edge) never loads it.
Every backend failure is raised as ServiceUnavailable and counted in rag_failures_total{component="vector_store"}.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

from qdrant_client import QdrantClient, models

from service.app.core.config import Settings
from service.app.core.errors import Conflict, RagError, ServiceUnavailable
from service.app.core.files import make_private_dirs
from service.app.core.metrics import FAILURES
from service.app.store.metadata_index import IndexKind, MetadataKeyBudget, rebuilt_kind
from service.app.store.sparse import SPARSE_VECTOR, SparseVector, default_encoder
from service.app.store.vectors import (
    PREFETCH_MIN,
    ChunkPoint,
    MetadataCondition,
    PointVersion,
    SearchMode,
    VectorHit,
    collection_name,
    fused_search,
    numeric_equality,
    point_id,
)

logger = logging.getLogger(__name__)

UPSERT_BATCH = 256
BACKFILL_PAGE = 512


P = ParamSpec("P")
R = TypeVar("R")


class VectorStoreOpenError(ServiceUnavailable):
    """The configured Qdrant server cannot be used at start-up (the message names QDRANT_URL and what to check)."""


def display_url(url: str) -> str:
    """``url`` with any password in it masked."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Serialise local-mode access and turn any backend failure into ServiceUnavailable."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store = args[0]
        assert isinstance(store, QdrantVectorStore)
        try:
            with store._lock:
                return func(*args, **kwargs)
        except RagError:
            raise
        except Exception as exc:
            FAILURES.labels(component="vector_store").inc()
            logger.error("vector store call %s failed", func.__name__, exc_info=exc)
            raise ServiceUnavailable("vector store unavailable; retry later") from exc

    return wrapper


def _document_filter(tenant_id: str, document_id: str, *extra: models.Condition) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key="tenant_id", match=models.MatchValue(value=tenant_id)),
            models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id)),
            *extra,
        ]
    )


def _condition(condition: MetadataCondition) -> models.Condition:
    key = f"metadata.{condition.field}"
    if condition.any_of is not None:
        return _any_of(key, condition.any_of)
    if condition.equals is not None:
        number = numeric_equality(condition.equals)
        if isinstance(number, float):
            # Numeric equality: a float range of one value reads int and float payloads (and a float index).
            return models.FieldCondition(key=key, range=models.Range(gte=number, lte=number))
        value = condition.equals if number is None else number
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))
    return models.FieldCondition(
        key=key, range=models.Range(gt=condition.gt, gte=condition.gte, lt=condition.lt, lte=condition.lte)
    )


def _any_of(key: str, values: Sequence[str | int]) -> models.Condition:
    numbers = [numeric_equality(value) for value in values]
    if all(number is None for number in numbers):
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))
    conditions: list[models.Condition] = [
        models.FieldCondition(key=key, range=models.Range(gte=number, lte=number))
        for number in numbers
        if isinstance(number, float)
    ]
    exact = [number for number in numbers if isinstance(number, int)]
    if exact:
        conditions.append(models.FieldCondition(key=key, match=models.MatchAny(any=exact)))
    return conditions[0] if len(conditions) == 1 else models.Filter(should=conditions)


_SERVER_KINDS: dict[IndexKind, models.PayloadSchemaType] = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


def _metadata_kinds(payload_schema: dict[str, Any] | None) -> dict[str, IndexKind]:
    """The metadata keys a server collection's payload schema (as the server reports it) has an index on."""
    kinds: dict[str, IndexKind] = {}
    for key, info in (payload_schema or {}).items():
        if key.startswith("metadata."):
            data_type = getattr(info, "data_type", None)
            value = getattr(data_type, "value", data_type)
            kinds[key.removeprefix("metadata.")] = value if value in _SERVER_KINDS else "keyword"
    return kinds


class LocalPointIndex:
    """Which points a local-mode collection holds: (tenant, document) -> {version: {chunk_index}}.

    Local mode has no payload indexes, so a filtered delete scans every point (68 ms per delete at 1,800 points,
    docs/benchmarks.md) and ingest slows as the store grows. Local mode is single-process (the directory is
    locked), so this in-process index, rebuilt from the collection at start-up, knows every point, leftovers of
    a crashed write included, and deletes go by point id. Ids are added before an upsert is sent (a superset is
    harmless: deleting an absent id is a no-op) and forgotten only after a delete succeeded.
    """

    def __init__(self) -> None:
        self._documents: dict[tuple[str, str], dict[int, set[int]]] = {}

    def add(self, tenant_id: str, document_id: str, version: int, chunk_index: int) -> None:
        self._documents.setdefault((tenant_id, document_id), {}).setdefault(version, set()).add(chunk_index)

    def select(
        self, tenant_id: str, document_id: str, versions: Callable[[int], bool]
    ) -> tuple[list[int], list[str]]:
        """The matching versions of the document and the ids of all their points."""
        held = self._documents.get((tenant_id, document_id), {})
        chosen = [version for version in held if versions(version)]
        ids = [
            point_id(tenant_id, document_id, version, index) for version in chosen for index in held[version]
        ]
        return chosen, ids

    def versions(self, *, pause: Callable[[], None] | None = None) -> list[PointVersion]:
        return [
            PointVersion(tenant_id, document_id, version, len(indexes))
            for (tenant_id, document_id), held in self._documents.items()
            for version, indexes in held.items()
        ]

    def forget(self, tenant_id: str, document_id: str, versions: Iterable[int]) -> None:
        held = self._documents.get((tenant_id, document_id))
        if held is None:
            return
        for version in versions:
            held.pop(version, None)
        if not held:
            del self._documents[(tenant_id, document_id)]


class QdrantVectorStore:
    """VectorStore over qdrant-client, server or local mode."""

    #: Set by a dry run (service.reconcile --dry-run) before it opens the store in place: `ensure_collection` then
    #: only reads. A missing collection is refused (VectorStoreOpenError), not created; no memory layout, payload
    #: index or sparse vector is added. Process-wide: that process opens nothing else.
    read_only: ClassVar[bool] = False

    def __init__(
        self, client: QdrantClient, *, collection: str, dimension: int, local: bool, settings: Settings
    ) -> None:
        self.client = client
        self.collection = collection
        self.dimension = dimension
        self.local = local
        self._settings = settings
        # Local mode is an in-process store without its own locking; the server needs none from us.
        self._lock: threading.Lock | _NoLock = threading.Lock() if local else _NoLock()
        self.metadata_budget: MetadataKeyBudget | None = None  # server mode, set by ensure_collection
        self.upsert_batch = UPSERT_BATCH
        self._points: LocalPointIndex | None = None  # built by ensure_collection in local mode
        self.has_sparse = False  # set by ensure_collection

    def sibling(self, collection: str, dimension: int) -> QdrantVectorStore:
        """A store on another collection through the same client (and, in local mode, the same lock).

        Local mode allows one client per directory, so a re-index builds its new collection through this.
        """
        other = QdrantVectorStore(
            self.client, collection=collection, dimension=dimension, local=self.local, settings=self._settings
        )
        other._lock = self._lock
        return other

    def set_alias(self, alias: str) -> None:
        """Point ``alias`` at this collection in one atomic change (server mode; local mode has no aliases).

        Qdrant applies the delete and the create of one update_collection_aliases call together, so no reader
        of the alias ever finds it missing or on a half-built collection.
        """
        if self.local:
            return
        try:
            existing = {a.alias_name for a in self.client.get_aliases().aliases}
            operations: list[models.AliasOperations] = []
            if alias in existing:  # deleting an alias that does not exist is an error on the server
                operations.append(
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
                )
            operations.append(
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=self.collection, alias_name=alias)
                )
            )
            self.client.update_collection_aliases(change_aliases_operations=operations)
        except Exception as exc:
            FAILURES.labels(component="vector_store").inc()
            raise ServiceUnavailable("vector store unavailable; retry later") from exc

    @classmethod
    def from_settings(cls, settings: Settings, *, model_name: str, dimension: int) -> QdrantVectorStore:
        """Server client for QDRANT_URL, else local mode at resolved_qdrant_path (":memory:" kept as is)."""
        name = collection_name(settings.qdrant_collection_prefix, model_name, dimension)
        timeout = max(1, round(settings.qdrant_timeout_seconds))
        if settings.qdrant_url:
            client = QdrantClient(
                url=settings.qdrant_url,
                api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
                prefer_grpc=settings.qdrant_prefer_grpc,
                timeout=timeout,
            )
            return cls(client, collection=name, dimension=dimension, local=False, settings=settings)
        path = settings.resolved_qdrant_path
        if str(path) == ":memory:":
            client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
        else:
            make_private_dirs(path)  # every chunk's text: 0700, as DATA_DIR and the edge store
            try:
                client = QdrantClient(path=str(path), force_disable_check_same_thread=True)
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                from service.app.store.edge import StoreLocked

                # One line, as for the edge store (EYES5 F9: a 100-line portalocker traceback).
                raise StoreLocked(
                    f"the local-mode vector store at {path} is in use by another process: an embedded store is "
                    "owned by one process; stop the other service, or give this one a DATA_DIR (or QDRANT_PATH) "
                    "of its own"
                ) from None
        return cls(client, collection=name, dimension=dimension, local=True, settings=settings)

    def check_server(self) -> None:
        """At start-up, with a server: one request, and a server that cannot be reached or refuses the key is a
        ``VectorStoreOpenError`` naming QDRANT_URL (one line, no traceback) instead of a logged traceback and the
        runtime 503's "retry later", which is no advice for a start-up. Local mode: nothing to check."""
        if self.local:
            return
        url = self._settings.qdrant_url or ""
        try:
            self.client.get_collections()
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status in (401, 403):
                raise VectorStoreOpenError(
                    f"the Qdrant server at {display_url(url)} (QDRANT_URL) refused the request (HTTP {status}): "
                    "check QDRANT_API_KEY"
                ) from exc
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise VectorStoreOpenError(
                f"the Qdrant server at {display_url(url)} (QDRANT_URL) cannot be reached: {reason}; check the URL, "
                "that the server is up and reachable from here, and QDRANT_API_KEY"
            ) from exc

    @_guarded
    def ensure_collection(self) -> None:
        """Create the collection (dense + BM25 sparse vector) and its payload indexes when missing; check the
        dimension when present, and add the sparse vector to a local-mode collection that predates it (only the
        reads when `read_only`)."""
        exists = self.client.collection_exists(self.collection)
        if self.read_only and not exists:
            where = "the Qdrant server (QDRANT_URL)" if not self.local else "the local-mode store"
            raise VectorStoreOpenError(
                f"collection {self.collection} does not exist on {where}, and opening the store would create it "
                "empty: a dry run changes nothing. Restore the collection, or run without --dry-run"
            )
        if exists:
            info = self.client.get_collection(self.collection)
            vectors = info.config.params.vectors
            size = vectors.size if isinstance(vectors, models.VectorParams) else None
            if size is not None and size != self.dimension:
                raise ServiceUnavailable(
                    f"collection {self.collection} has vectors of size {size}, the model gives {self.dimension}"
                )
            self.has_sparse = SPARSE_VECTOR in (info.config.params.sparse_vectors or {})
            indexed = _metadata_kinds(info.payload_schema)
            if not self.local and not self.read_only:
                self._apply_memory_layout(info)
        else:
            indexed = {}
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(
                    size=self.dimension,
                    distance=models.Distance.COSINE,
                    on_disk=self._settings.qdrant_vectors_on_disk or None,
                ),
                sparse_vectors_config={
                    SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
                replication_factor=self._settings.qdrant_replication_factor,
                shard_number=self._settings.qdrant_shard_number,
                quantization_config=_quantization(self._settings.qdrant_quantization),
            )
            self.has_sparse = True
        if self.local:
            self._points = self._scan_points()
            if not self.has_sparse and not self.read_only:
                self._add_sparse_vector()
            return
        if self.read_only:
            self.metadata_budget = MetadataKeyBudget(
                self._settings.metadata_index_max_keys,
                store="qdrant",
                collection=self.collection,
                existing=indexed,
                refresh=self._indexed_metadata_keys,
            )
            return
        if not self.has_sparse:
            # Adding a vector to a live server collection needs Qdrant 1.18 (the stacks run 1.15), and other
            # replicas write to it meanwhile: the blue/green re-index builds a successor with both vectors.
            logger.warning(
                "collection %s has no %r sparse vector: sparse and hybrid search are refused until a re-index "
                "(POST /v1/admin/reindex) builds one that has",
                self.collection,
                SPARSE_VECTOR,
            )
        self.client.create_payload_index(
            self.collection,
            "tenant_id",
            field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        )
        self.client.create_payload_index(
            self.collection, "document_id", field_schema=models.PayloadSchemaType.KEYWORD
        )
        self.client.create_payload_index(
            self.collection, "version", field_schema=models.PayloadSchemaType.INTEGER
        )
        for key, kind in list(indexed.items()):
            if rebuilt_kind(kind) != kind:
                # An ``integer`` index from an earlier release misses every float value of the key: replaced by
                # a ``float`` one (the key is filtered unindexed, exactly, until the server has built it).
                self.client.delete_payload_index(self.collection, f"metadata.{key}")
                self.client.create_payload_index(
                    self.collection,
                    f"metadata.{key}",
                    field_schema=_SERVER_KINDS[rebuilt_kind(kind)],
                    wait=False,
                )
                logger.info("rebuilding the payload index on metadata.%s as %s", key, rebuilt_kind(kind))
                indexed[key] = rebuilt_kind(kind)
        self.metadata_budget = MetadataKeyBudget(
            self._settings.metadata_index_max_keys,
            store="qdrant",
            collection=self.collection,
            existing=indexed,
            refresh=self._indexed_metadata_keys,
        )

    def _apply_memory_layout(self, info: models.CollectionInfo) -> None:
        """Bring an existing server collection to QDRANT_VECTORS_ON_DISK / QDRANT_QUANTIZATION.

        Both are collection parameters Qdrant updates in place (PATCH /collections/{name}: `vectors` {"": {on_disk}}
        and `quantization_config`, openapi `UpdateCollection`): the update returns at once, every search keeps
        working, and Qdrant's optimizer rewrites each segment to the new layout in the background (CPU and disk
        I/O on every node for a while; RAM falls as segments are rewritten). A collection created before the
        settings existed (float vectors in RAM, no quantization) is updated at the first start with them on;
        every replica of the service sends the same idempotent update."""
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            return
        want_on_disk = self._settings.qdrant_vectors_on_disk
        has_on_disk = bool(vectors.on_disk)
        current = info.config.quantization_config or vectors.quantization_config
        has_int8 = (
            isinstance(current, models.ScalarQuantization) and current.scalar.type == models.ScalarType.INT8
        )
        want_int8 = self._settings.qdrant_quantization == "int8"
        changes: dict[str, Any] = {}
        if want_on_disk != has_on_disk:
            changes["vectors_config"] = {"": models.VectorParamsDiff(on_disk=want_on_disk)}
        if want_int8 != has_int8:
            changes["quantization_config"] = _quantization("int8") if want_int8 else models.Disabled.DISABLED
        if not changes:
            return
        self.client.update_collection(self.collection, **changes)
        logger.info(
            "updated collection %s to vectors_on_disk=%s quantization=%s (was %s, %s); Qdrant rewrites its "
            "segments in the background",
            self.collection,
            want_on_disk,
            self._settings.qdrant_quantization,
            has_on_disk,
            "int8" if has_int8 else "none",
        )

    def _indexed_metadata_keys(self) -> dict[str, IndexKind]:
        return _metadata_kinds(self.client.get_collection(self.collection).payload_schema)

    def _add_sparse_vector(self) -> None:
        """Local mode: add the BM25 vector to an old collection and fill it from each point's chunk text.

        Runs at start-up, before the process serves (local mode has one process), so no write races it.
        """
        self.client.create_vector_name(
            self.collection,
            SPARSE_VECTOR,
            models.SparseVectorNameConfig(sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF)),
        )
        encoder = default_encoder()
        offset: Any = None
        filled = 0
        while True:
            records, offset = self.client.scroll(
                self.collection, limit=BACKFILL_PAGE, offset=offset, with_payload=["text"], with_vectors=False
            )
            if records:
                self.client.update_vectors(
                    self.collection,
                    points=[
                        models.PointVectors(
                            id=record.id,
                            vector={SPARSE_VECTOR: _sparse(encoder.document((record.payload or {})["text"]))},
                        )
                        for record in records
                    ],
                    wait=True,
                )
                filled += len(records)
            if offset is None:
                break
        self.has_sparse = True
        logger.info("added the %r sparse vector to %s (%d points)", SPARSE_VECTOR, self.collection, filled)

    def _scan_points(self) -> LocalPointIndex:
        # One page holding every point: local mode sorts the whole collection for each scroll page, so paging
        # through it was quadratic (32 s of a 42 s start-up at 100k points, docs/benchmarks.md).
        index = LocalPointIndex()
        total = self.client.count(self.collection, exact=True).count
        records, _ = self.client.scroll(
            self.collection,
            limit=max(total, 1),
            with_payload=["tenant_id", "document_id", "version", "chunk_index"],
            with_vectors=False,
        )
        for record in records:
            payload = record.payload or {}
            index.add(
                payload["tenant_id"], payload["document_id"], payload["version"], payload["chunk_index"]
            )
        return index

    @_guarded
    def versions(self, *, pause: Callable[[], None] | None = None) -> list[PointVersion]:
        """Every stored (tenant, document, version) with its point count: from the in-process index in local
        mode, else by scrolling the collection's ids and three payload fields (memory: one entry per version).
        A server's scroll is network I/O (the GIL is free meanwhile): ``pause`` is not needed and not called."""
        if self._points is not None:
            return self._points.versions()
        counts: dict[tuple[str, str, int], int] = {}
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                limit=1024,
                offset=offset,
                with_payload=["tenant_id", "document_id", "version"],
                with_vectors=False,
            )
            for record in records:
                payload = record.payload or {}
                key = (payload["tenant_id"], payload["document_id"], int(payload["version"]))
                counts[key] = counts.get(key, 0) + 1
            if offset is None:
                break
        return [PointVersion(t, d, v, n) for (t, d, v), n in counts.items()]

    def _index_metadata(self, metadata_items: Iterable[dict[str, Any]]) -> None:
        """Request an index on each newly admitted metadata key, without waiting for the server to build it
        (``wait=False``: acknowledged once queued, built by the server's update worker). Indexes only speed
        filtering up (Qdrant filters unindexed fields too), so a failure is logged and the key's place given
        back (the next write using it asks again), never raised."""
        if self.local or self.metadata_budget is None:
            return
        for key, kind in self.metadata_budget.admit(metadata_items):
            try:
                self.client.create_payload_index(
                    self.collection, f"metadata.{key}", field_schema=_SERVER_KINDS[kind], wait=False
                )
            except Exception as exc:
                logger.warning("could not request the payload index on metadata.%s: %s", key, exc)
                self.metadata_budget.forget(key)

    @_guarded
    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        """Write points (batched, waiting for each batch to be applied)."""
        if not points:
            return
        self._index_metadata({id(p.metadata): p.metadata for p in points}.values())
        if self._points is not None:
            for p in points:
                self._points.add(p.tenant_id, p.document_id, p.version, p.chunk_index)
        for start in range(0, len(points), self.upsert_batch):
            batch = points[start : start + self.upsert_batch]
            self.client.upsert(
                self.collection,
                points=[
                    models.PointStruct(
                        id=point_id(p.tenant_id, p.document_id, p.version, p.chunk_index),
                        vector=self._point_vectors(p),
                        payload=p.payload(),
                    )
                    for p in batch
                ],
                wait=True,
            )

    def _point_vectors(self, point: ChunkPoint) -> Any:
        if not self.has_sparse:
            return list(point.vector)
        return {"": list(point.vector), SPARSE_VECTOR: _sparse(point.sparse_vector())}

    @_guarded
    def delete_versions_below(self, tenant_id: str, document_id: str, version: int) -> None:
        """Delete every point of the document whose version is lower than ``version``."""
        if self._points is not None:
            self._delete_indexed(tenant_id, document_id, lambda held: held < version)
            return
        self._delete_where(
            _document_filter(
                tenant_id, document_id, models.FieldCondition(key="version", range=models.Range(lt=version))
            )
        )

    @_guarded
    def delete_version(self, tenant_id: str, document_id: str, version: int) -> None:
        """Delete the points of exactly one version of the document."""
        if self._points is not None:
            self._delete_indexed(tenant_id, document_id, lambda held: held == version)
            return
        self._delete_where(
            _document_filter(
                tenant_id,
                document_id,
                models.FieldCondition(key="version", match=models.MatchValue(value=version)),
            )
        )

    @_guarded
    def delete_document(self, tenant_id: str, document_id: str) -> None:
        """Delete every point of the document, all versions."""
        if self._points is not None:
            self._delete_indexed(tenant_id, document_id, lambda _held: True)
            return
        self._delete_where(_document_filter(tenant_id, document_id))

    def _delete_indexed(self, tenant_id: str, document_id: str, versions: Callable[[int], bool]) -> None:
        assert self._points is not None
        chosen, ids = self._points.select(tenant_id, document_id, versions)
        if ids:
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=ids), wait=True)
        self._points.forget(tenant_id, document_id, chosen)

    def _delete_where(self, selection: models.Filter) -> None:
        # Local mode evaluates the filter by scanning every point; a server uses the payload indexes.
        self.client.delete(
            self.collection, points_selector=models.FilterSelector(filter=selection), wait=True
        )

    @_guarded
    def search(
        self,
        tenant_id: str,
        vector: Sequence[float] | None,
        *,
        limit: int,
        offset: int = 0,
        conditions: Sequence[MetadataCondition] = (),
        score_threshold: float | None = None,
        mode: SearchMode = "dense",
        sparse: SparseVector | None = None,
    ) -> list[VectorHit]:
        """Best chunks of the tenant matching every condition, by ``mode`` (see `VectorStore.search`)."""
        query_filter = models.Filter(
            must=[
                models.FieldCondition(key="tenant_id", match=models.MatchValue(value=tenant_id)),
                *(_condition(c) for c in conditions),
            ]
        )
        if mode == "dense":
            if vector is None:
                raise ValueError("dense search needs the query vector")
            response = self.client.query_points(
                self.collection,
                query=list(vector),
                query_filter=query_filter,
                limit=limit,
                offset=offset or None,
                with_payload=True,
                score_threshold=score_threshold,
            )
            return [VectorHit.from_payload(point.payload, point.score) for point in response.points]
        if not self.has_sparse:
            raise Conflict(
                f"mode {mode!r} needs sparse vectors, and collection {self.collection} was built before they "
                "existed: re-index it (POST /v1/admin/reindex), meanwhile use mode 'dense'"
            )
        if sparse is None:
            raise ValueError(f"{mode} search needs the query's sparse vector")
        sparse_query = _sparse(sparse)
        # Every vector of the hit (the dense one is picked out): selecting the unnamed vector by its name "" is
        # not something every server version documents.
        with_vectors = score_threshold is not None

        def fetch(depth: int) -> list[tuple[VectorHit, Sequence[float] | None]]:
            if mode == "sparse":
                response = self.client.query_points(
                    self.collection,
                    query=sparse_query,
                    using=SPARSE_VECTOR,
                    query_filter=query_filter,
                    limit=depth,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
            else:
                assert vector is not None
                prefetch_limit = max(depth, PREFETCH_MIN)
                response = self.client.query_points(
                    self.collection,
                    prefetch=[
                        models.Prefetch(
                            query=list(vector),
                            filter=query_filter,
                            limit=prefetch_limit,
                            score_threshold=score_threshold,
                        ),
                        models.Prefetch(
                            query=sparse_query, using=SPARSE_VECTOR, filter=query_filter, limit=prefetch_limit
                        ),
                    ],
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                    limit=depth,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
            return [
                (VectorHit.from_payload(point.payload, point.score), _dense_of(point.vector))
                for point in response.points
            ]

        return fused_search(fetch, vector=vector, limit=limit, offset=offset, score_threshold=score_threshold)

    @_guarded
    def ping(self) -> None:
        """Raise ServiceUnavailable unless the backend answers and the collection exists (readiness)."""
        if not self.client.collection_exists(self.collection):
            raise ServiceUnavailable(f"collection {self.collection} does not exist")

    @_guarded
    def count(self, tenant_id: str, document_id: str | None = None) -> int:
        """Number of points of the tenant (or of one document, all versions); used by tests and checks."""
        must = [models.FieldCondition(key="tenant_id", match=models.MatchValue(value=tenant_id))]
        if document_id is not None:
            must.append(models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id)))
        return self.client.count(self.collection, count_filter=models.Filter(must=must), exact=True).count

    @_guarded
    def chunk_texts(
        self, tenant_id: str, document_id: str, version: int, chunk_indexes: Sequence[int]
    ) -> list[str | None]:
        """See `VectorStore.chunk_texts`."""
        ids = [point_id(tenant_id, document_id, version, index) for index in chunk_indexes]
        records = self.client.retrieve(self.collection, ids=ids, with_payload=["text"], with_vectors=False)
        texts = {str(record.id): (record.payload or {}).get("text") for record in records}
        return [texts.get(pid) for pid in ids]

    @_guarded
    def drop(self) -> None:
        """Delete this collection and its points (one no replica serves, rolls back to or builds any more); the
        client, shared with the sibling collections, stays open."""
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception as exc:
            logger.warning("closing the vector store failed: %s", exc)


def _quantization(kind: str) -> models.ScalarQuantization | None:
    """QDRANT_QUANTIZATION as Qdrant's collection quantization config (None: none).

    int8 keeps a quantized copy of each dense vector in RAM (`always_ram`, also when the float vectors are on disk),
    a quarter of the float32 size; the 0.99 quantile clips outliers, Qdrant's documented default for scalar
    quantization. Searches use the quantized copies and rescore the best hits with the float vectors (Qdrant's
    default `rescore`), so scores stay exact."""
    if kind != "int8":
        return None
    return models.ScalarQuantization(
        scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
    )


def _sparse(vector: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=list(vector.indices), values=list(vector.values))


def _dense_of(vector: Any) -> Sequence[float] | None:
    """The unnamed dense vector of a returned point (a list, or a dict keyed by vector name)."""
    if isinstance(vector, dict):
        return vector.get("")
    return vector


class _NoLock:
    """A context manager that does nothing (server mode needs no client-side lock)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
