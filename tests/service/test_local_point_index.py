"""Local mode deletes by point id from an in-process index of the collection (it has no payload indexes).

The index must know every point the store holds, including leftovers of a write that crashed before the
registry switched versions, and a failed delete must stay retryable.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app.core.config import Settings
from service.app.core.errors import ServiceUnavailable
from service.app.store.qdrant import QdrantVectorStore
from service.app.store.vectors import ChunkPoint
from tests.service.support import FailingClient

DIMENSION = 4


def store_at(path: Path) -> QdrantVectorStore:
    settings = Settings(_env_file=None, qdrant_path=path)
    store = QdrantVectorStore.from_settings(settings, model_name="test-model", dimension=DIMENSION)
    store.ensure_collection()
    return store


def chunks(tenant: str, document: str, version: int, count: int) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            tenant_id=tenant,
            document_id=document,
            version=version,
            chunk_index=index,
            text=f"{document} v{version} #{index}",
            vector=[0.1 * (index + 1), 0.2, 0.3, 0.4],
            metadata={},
            content_hash="h",
            model="test-model",
        )
        for index in range(count)
    ]


def test_leftovers_written_before_a_restart_are_deleted_after_it(tmp_path: Path) -> None:
    store = store_at(tmp_path / "q")
    store.upsert(chunks("t", "doc", 1, 3))
    # A write that crashed after its upsert: version 2's points exist, the registry never pointed at them.
    store.upsert(chunks("t", "doc", 2, 2))
    store.close()

    reopened = store_at(tmp_path / "q")
    reopened.upsert(chunks("t", "doc", 3, 4))
    reopened.delete_versions_below("t", "doc", 3)
    assert reopened.count("t", "doc") == 4
    reopened.close()


def test_deletes_touch_only_the_named_document_and_tenant(tmp_path: Path) -> None:
    store = store_at(tmp_path / "q")
    store.upsert(chunks("t", "doc", 1, 3) + chunks("t", "other", 1, 2) + chunks("u", "doc", 1, 5))
    store.delete_version("t", "doc", 1)
    assert store.count("t", "doc") == 0
    assert store.count("t", "other") == 2
    assert store.count("u", "doc") == 5
    store.delete_document("u", "doc")
    assert store.count("u", "doc") == 0
    assert store.count("t", "other") == 2
    store.close()


def test_a_failed_delete_is_retried_by_the_next_one(tmp_path: Path) -> None:
    store = store_at(tmp_path / "q")
    store.upsert(chunks("t", "doc", 1, 3) + chunks("t", "doc", 2, 3))
    failing = FailingClient(store.client)
    store.client = failing
    failing.fail_on("delete")
    with pytest.raises(ServiceUnavailable):
        store.delete_versions_below("t", "doc", 2)
    assert store.count("t", "doc") == 6
    store.delete_versions_below("t", "doc", 2)
    assert store.count("t", "doc") == 3
    store.close()


def test_server_mode_keeps_filtered_deletes(tmp_path: Path) -> None:
    store = store_at(tmp_path / "q")
    assert store.local
    # The index is a local-mode stand-in for payload indexes; a server store never builds one.
    server = QdrantVectorStore(
        store.client,
        collection=store.collection,
        dimension=DIMENSION,
        local=False,
        settings=Settings(_env_file=None),
    )
    assert server._points is None
    store.close()
