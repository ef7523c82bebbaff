"""The embedded store's writes as plain data, so one write can be applied twice: to the served shard, and again to
a consolidation's merged copy if it came while the copy was merging (service.app.store.edge, Consolidation).

Each write is an entry (a dict of JSON values); ``operation`` turns it into the engine's update. The serving process
builds every write it makes through here, and the consolidation child replays the entries it is sent through the
same function, so a replayed write is the same update as the served one. This module imports only the engine's
binding (and the BM25 vector's name): the child imports it without the service's settings or metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import qdrant_edge as qe

from service.app.store.sparse import SPARSE_VECTOR

DENSE_VECTOR = "dense"


def index_params(kind: str) -> Any:
    """A payload index of ``kind`` (keyword, integer, float, bool) that gets no HNSW graph of its own: with the
    store's tenant graphs (``m`` 0, service.app.store.edge.HNSW_M) the engine would otherwise build one over each
    of the field's large blocks (every value held by more than a quarter of the full-scan threshold's points)."""
    if kind == "keyword":
        return qe.KeywordIndexParams(enable_hnsw=False)
    if kind == "integer":
        return qe.IntegerIndexParams(lookup=True, range=True, enable_hnsw=False)
    if kind == "float":
        return qe.FloatIndexParams(enable_hnsw=False)
    if kind == "bool":
        return qe.BoolIndexParams(enable_hnsw=False)
    raise ValueError(f"unknown payload index kind {kind!r}")


Entry = dict[str, Any]


def upsert_entry(
    points: Sequence[tuple[str, list[float], tuple[list[int], list[float]], dict[str, Any]]],
) -> Entry:
    """Points as (id, dense vector, (sparse indices, sparse values), payload)."""
    return {"op": "upsert", "points": list(points)}


def delete_entry(
    tenant_id: str, document_id: str, *, version: int | None = None, below: int | None = None
) -> Entry:
    """Delete the document's points: all versions, exactly ``version``, or every version lower than ``below``."""
    return {"op": "delete", "tenant": tenant_id, "document": document_id, "version": version, "below": below}


def index_entry(key: str, kind: str | None) -> Entry:
    """Create the payload index on ``metadata.<key>`` of ``kind``, or drop it (``kind`` None)."""
    return {"op": "index", "key": key, "kind": kind}


def points_of(entry: Entry) -> int:
    """What an entry weighs in the replay log's bound: its points (an upsert), else one."""
    return len(entry["points"]) if entry["op"] == "upsert" else 1


def document_filter(tenant_id: str, document_id: str, *extra: qe.FieldCondition) -> qe.Filter:
    return qe.Filter(
        must=[
            qe.FieldCondition("tenant_id", match=qe.MatchValue(tenant_id)),
            qe.FieldCondition("document_id", match=qe.MatchValue(document_id)),
            *extra,
        ]
    )


def operation(entry: Entry) -> qe.UpdateOperation:
    """The engine's update for an entry."""
    op = entry["op"]
    if op == "upsert":
        return qe.UpdateOperation.upsert_points(
            [
                qe.Point(pid, {DENSE_VECTOR: dense, SPARSE_VECTOR: qe.SparseVector(*sparse)}, payload)
                for pid, dense, sparse, payload in entry["points"]
            ]
        )
    if op == "delete":
        extra: list[qe.FieldCondition] = []
        if entry["version"] is not None:
            extra.append(qe.FieldCondition("version", match=qe.MatchValue(int(entry["version"]))))
        if entry["below"] is not None:
            extra.append(qe.FieldCondition("version", range=qe.RangeFloat(lt=entry["below"])))
        return qe.UpdateOperation.delete_points_by_filter(
            document_filter(entry["tenant"], entry["document"], *extra)
        )
    if op == "index":
        field = f"metadata.{entry['key']}"
        if entry["kind"] is None:
            return qe.UpdateOperation.delete_field_index(field)
        return qe.UpdateOperation.create_field_index(field, index_params(entry["kind"]))
    raise ValueError(f"unknown write entry {op!r}")
