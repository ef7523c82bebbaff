"""Copy a local-mode Qdrant store (the embedded default before qdrant-edge) into the edge store, then retire it.

    python -m service.tools.migrate_store          # DATA_DIR / QDRANT_PATH / EDGE_PATH from the environment

Every collection at QDRANT_PATH is copied point by point (same ids, payloads and vectors, so the registry's
versions keep matching) into the edge shard of the same name under EDGE_PATH, indexed, and the old directory is
renamed to ``<QDRANT_PATH>.migrated`` (``.migrated-<time>`` when that exists) so the service starts on the edge
store; a rollback to a release before qdrant-edge needs that store back (docs/operations.md: a backup taken
before the migration holds it). Stop the service first: both stores are single-process. Re-running after an
interruption is safe (upserts by id are idempotent, and the old directory is only renamed once every collection
was copied).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from pydantic import ValidationError

from service.app.core.config import Settings, SettingsError, describe_settings_error
from service.app.store.edge import EdgeVectorStore, EmbeddedStoreError, StoreLocked, legacy_local_store
from service.tools.backup import in_use_message

PAGE = 1024


def migrate(settings: Settings, *, report: Callable[[str], None] = print) -> dict[str, int]:
    """Copy every local-mode collection into the edge store; returns points copied per collection."""
    from qdrant_client import QdrantClient, models

    legacy = legacy_local_store(settings)
    if legacy is None:
        report(f"nothing to migrate: no local-mode store at {settings.resolved_qdrant_path}")
        return {}
    try:
        client = QdrantClient(path=str(legacy))
    except RuntimeError as exc:  # qdrant-client's lock: a service of an earlier release still serves it
        if "already accessed" not in str(exc):
            raise
        raise EmbeddedStoreError(
            f"the local-mode store at {legacy} is in use by another process (a service of an earlier release "
            "still running on DATA_DIR?); migrate_store needs it to itself: stop that process, run this again, "
            "then start the service"
        ) from None
    copied: dict[str, int] = {}
    try:
        for description in client.get_collections().collections:
            name = description.name
            vectors = client.get_collection(name).config.params.vectors
            if not isinstance(vectors, models.VectorParams):
                raise EmbeddedStoreError(f"collection {name} at {legacy} has no single dense vector to copy")
            store = EdgeVectorStore(
                settings.resolved_edge_path / name,
                collection=name,
                dimension=vectors.size,
                optimize_idle_seconds=None,
                optimize_chunk_points=settings.edge_optimize_chunk_points,
                segment_points=settings.edge_segment_points,
                indexing_threads=settings.edge_indexing_threads,
            )
            store.ensure_collection()
            try:
                copied[name] = _copy(client, name, store)
                store.optimize()
            finally:
                store.close()
            report(f"copied {copied[name]} points of {name} into {store.path}")
    finally:
        client.close()
    retired = legacy.with_name(legacy.name + ".migrated")
    if retired.exists():
        # An earlier migration's copy (a rollback restored the pre-upgrade backup's store, and this is the
        # upgrade again): keep both, a rename onto it would fail once every point was copied.
        retired = legacy.with_name(f"{legacy.name}.migrated-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    legacy.rename(retired)
    report(f"retired {legacy} as {retired}; delete it once the service runs on the edge store")
    return copied


def _copy(client: object, name: str, store: EdgeVectorStore) -> int:
    from qdrant_client import QdrantClient

    assert isinstance(client, QdrantClient)
    total = client.count(name, exact=True).count
    # One page holding every point: local mode sorts the collection for each scroll page, so paging is quadratic.
    # The dense vector only (the unnamed one when the collection also has a sparse vector): the edge store
    # computes the BM25 vector from the payload's chunk text, as every adapter does.
    records, _ = client.scroll(name, limit=max(total, 1), with_payload=True, with_vectors=[""])
    # Indexed chunk by chunk as the service does: one optimize() over everything would build a single segment
    # of the whole store, which the service's vacuum would later rebuild in one call (one long GIL stall).
    step = min(PAGE, store.optimize_chunk_points)
    for start in range(0, len(records), step):
        page = records[start : start + step]
        store.upsert_records([(str(r.id), _dense(r.vector), dict(r.payload or {})) for r in page])
        store.optimize()
    return len(records)


def _dense(vector: object) -> list[float]:
    if isinstance(vector, dict):
        vector = vector[""]
    assert isinstance(vector, list)
    return [float(x) for x in vector]


def main(argv: list[str] | None = None) -> int:
    """Run the migration as configured by the environment; 0 on success, 2 on a configuration error."""
    argparse.ArgumentParser(
        prog="python -m service.tools.migrate_store", description=__doc__.split("\n")[0]
    ).parse_args(argv)
    try:
        settings = Settings()
        migrate(settings)
    except (SettingsError, ValidationError) as exc:
        print(f"migrate_store: error: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    except StoreLocked:
        # The edge store's own message advises WORKERS=1 (right for a second service process, not here).
        print(f"migrate_store: error: {in_use_message(settings, 'migrate_store')}", file=sys.stderr)
        return 2
    except EmbeddedStoreError as exc:
        print(f"migrate_store: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
