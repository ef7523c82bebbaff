"""A vector store owned by another process: the worker writes through the API's embedded store over HTTP.

Why: the embedded stores (qdrant-client local mode, qdrant-edge) open in one process only, and a prod-like run
on one machine (`make serve-prod`) wants the API and the worker as separate processes. Instead of a second
process opening the same files (refused, or corrupting them), the API *owns* the store and exposes it on
`/internal/vectors/{operation}` when INTERNAL_TOKEN is set; a worker with VECTOR_STORE_URL (the API's base URL)
and the same INTERNAL_TOKEN uses this adapter, which speaks the `VectorStore` protocol over that endpoint. The
worker still extracts, chunks and embeds (the expensive part); only finished points cross the wire.

The trade-off: every worker write is one extra local HTTP hop, and the worker cannot write while the API is
down (its jobs fail over to retries like any backend outage: this adapter raises ServiceUnavailable). With a
Qdrant server (QDRANT_URL) none of this is used: every process talks to the server.

Wire format: JSON; dataclasses (ChunkPoint, MetadataCondition, VectorHit, PointVersion, SparseVector) as their
fields. The sparse vectors travel as the worker computed them, so the owning store writes what the worker meant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from service.app.core.config import Settings
from service.app.core.errors import DiskFull, ServiceUnavailable
from service.app.store.sparse import SparseVector
from service.app.store.vectors import ChunkPoint, MetadataCondition, PointVersion, SearchMode, VectorHit

INTERNAL_PREFIX = "/internal/vectors"
# Operations the endpoint runs (the whole VectorStore protocol but close).
OPERATIONS = (
    "ensure_collection",
    "upsert",
    "delete_versions_below",
    "delete_version",
    "delete_document",
    "search",
    "count",
    "chunk_texts",
    "versions",
    "check_room",  # what a write would be refused for now (a full disk): a job waits before it claims
)


# A request on a kept-alive connection that the owning API closed under it: reset with the request unread,
# or closed before answering. An API that stalls (a CPU-starved pod, a long pause, SIGSTOP) past its
# keep-alive timeout (HTTP_KEEP_ALIVE_SECONDS, 5 s) while a worker's request waits on such a connection
# resets that connection when it runs again: uvicorn (on uvloop and on asyncio's loop alike) runs the overdue
# keep-alive timer before it reads the request. The worker took that for an outage and gave its live job up
# to a retry (a second attempt). The same closing races any request sent as a connection reaches that
# timeout (httpx keeps idle connections 5 s too). Every operation is idempotent (point ids are uuid5 of
# tenant, document, version and chunk; deletes and ensure_collection repeat harmlessly; the rest read), so
# sending it again is safe even when the owner ran it before closing. Not a timeout (no answer within the
# 60 s) nor a refused connection (the owner is down): those stay an outage at once.
CLOSED_UNDER_US = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def encode_args(operation: str, args: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of `operation` as JSON-ready values."""
    out = dict(args)
    if operation == "upsert":
        out["points"] = [dataclasses.asdict(point) for point in args["points"]]
    if operation == "search":
        out["vector"] = None if args["vector"] is None else list(args["vector"])
        out["conditions"] = [dataclasses.asdict(condition) for condition in args.get("conditions", ())]
        out["sparse"] = None if args.get("sparse") is None else dataclasses.asdict(args["sparse"])
    return out


def _sparse(value: Any) -> SparseVector | None:
    return None if value is None else SparseVector.of(value["indices"], value["values"])


def decode_args(operation: str, args: dict[str, Any]) -> dict[str, Any]:
    """The inverse of encode_args, on the owning side."""
    out = dict(args)
    if operation == "upsert":
        out["points"] = [
            ChunkPoint(**{**point, "sparse": _sparse(point.get("sparse"))}) for point in args["points"]
        ]
    if operation == "search":
        out["conditions"] = [MetadataCondition(**condition) for condition in args.get("conditions", [])]
        out["sparse"] = _sparse(args.get("sparse"))
    return out


def encode_result(operation: str, result: Any) -> Any:
    if operation in ("search", "versions"):
        return [dataclasses.asdict(item) for item in result]
    return result


def decode_result(operation: str, result: Any) -> Any:
    if operation == "search":
        return [VectorHit(**item) for item in result]
    if operation == "versions":
        return [PointVersion(**item) for item in result]
    return result


class RemoteVectorStore:
    """`VectorStore` over the owning API's /internal/vectors endpoint (see the module docstring)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0, transport: Any = None) -> None:
        self.collection = "remote"
        self.has_sparse = False  # the owning store's, learnt by ensure_collection
        self._client_args: dict[str, Any] = {
            "base_url": base_url.rstrip("/"),
            "headers": {"Authorization": f"Bearer {token}"},
            "timeout": timeout,
        }
        self._transport = transport
        self._http = httpx.Client(**self._client_args, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteVectorStore:
        if not settings.vector_store_url or settings.internal_token is None:
            raise ValueError("RemoteVectorStore needs VECTOR_STORE_URL and INTERNAL_TOKEN")
        return cls(
            settings.vector_store_url,
            settings.internal_token.get_secret_value(),
            timeout=max(60.0, settings.qdrant_timeout_seconds),
        )

    def _call(self, operation: str, **args: Any) -> Any:
        path, body = f"{INTERNAL_PREFIX}/{operation}", encode_args(operation, args)
        try:
            try:
                response = self._http.post(path, json=body)
            except CLOSED_UNDER_US:
                # A pooled connection the owner closed: sent again once, on a connection of its own (see
                # CLOSED_UNDER_US); a second failure is an outage like any other.
                response = self._post_on_a_new_connection(path, body)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"vector store unavailable: the owning API did not answer ({exc})"
            ) from exc
        if response.status_code != 200:
            try:
                error = response.json()["error"]
                message = error["message"]
            except (ValueError, KeyError, TypeError):
                error, message = {}, response.text[:200]
            # The owner's disk is full: its jobs wait for space rather than spend attempts (service.app.jobs.queue).
            refused = (
                DiskFull if isinstance(error, dict) and error.get("disk_full") is True else ServiceUnavailable
            )
            raise refused(
                f"vector store unavailable: the owning API answered {response.status_code}: {message}"
            )
        return decode_result(operation, response.json()["result"])

    def check_room(self) -> None:
        """DiskFull while the owning API's store refuses writes for want of space (service.app.jobs.queue checks
        before it claims a job). An owner of an earlier release, without the operation, answers 404: an outage
        here, so the job runs and its write finds out."""
        self._call("check_room")

    def ensure_collection(self) -> None:
        result = self._call("ensure_collection")
        self.has_sparse = bool(isinstance(result, dict) and result.get("has_sparse"))

    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        self._call("upsert", points=list(points))

    def delete_versions_below(self, tenant_id: str, document_id: str, version: int) -> None:
        self._call("delete_versions_below", tenant_id=tenant_id, document_id=document_id, version=version)

    def delete_version(self, tenant_id: str, document_id: str, version: int) -> None:
        self._call("delete_version", tenant_id=tenant_id, document_id=document_id, version=version)

    def delete_document(self, tenant_id: str, document_id: str) -> None:
        self._call("delete_document", tenant_id=tenant_id, document_id=document_id)

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
        return self._call(
            "search",
            tenant_id=tenant_id,
            vector=vector,
            limit=limit,
            offset=offset,
            conditions=conditions,
            score_threshold=score_threshold,
            mode=mode,
            sparse=sparse,
        )

    def count(self, tenant_id: str, document_id: str | None = None) -> int:
        return int(self._call("count", tenant_id=tenant_id, document_id=document_id))

    def chunk_texts(
        self, tenant_id: str, document_id: str, version: int, chunk_indexes: Sequence[int]
    ) -> list[str | None]:
        return self._call(  # type: ignore[no-any-return]
            "chunk_texts",
            tenant_id=tenant_id,
            document_id=document_id,
            version=version,
            chunk_indexes=list(chunk_indexes),
        )

    def versions(self, *, pause: Callable[[], None] | None = None) -> list[PointVersion]:
        return self._call("versions")  # the lending process scans its own store

    def ping(self) -> None:
        self._call("count", tenant_id="-", document_id=None)

    def _post_on_a_new_connection(self, path: str, body: Any) -> httpx.Response:
        if self._transport is not None:  # an injected transport (tests) has no pool to go stale
            return self._http.post(path, json=body)
        with httpx.Client(**self._client_args) as fresh:
            return fresh.post(path, json=body)

    def close(self) -> None:
        self._http.close()
