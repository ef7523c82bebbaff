"""A registry write refused for want of space names that cause in its 503 (EYES10: a DELETE on a full disk said
only "document registry unavailable; retry later"; the cause was in the log and /readyz alone).

The refusal is SQLite's own SQLITE_FULL ("database or disk is full"), made without filling a real volume: every
new registry connection gets `PRAGMA max_page_count` at the database's current size, so a write that needs one
more page fails inside SQLite exactly as on a full disk. A PUT of a long text needs new pages; a DELETE's write
goes through the same wrapper (`registry._guarded`), but needs no new page, and the WAL growth a really full disk
refuses it cannot be capped by a pragma.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event

from service.app.store.embedder import FastEmbedEmbedder
from tests.service.support import make_settings, running_app, services_of


def test_a_registry_write_on_a_full_disk_answers_503_naming_the_full_disk(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = make_settings(tmp_path)
    with running_app(settings, embedder=embedder) as client:
        for index in range(3):
            response = client.put(f"/v1/documents/d{index}", json={"text": f"kept text number {index}"})
            assert response.status_code == 201, response.text
        engine = services_of(client).registry.engine

        def cap(connection: Any, _record: Any) -> None:
            connection.execute("PRAGMA max_page_count = 1")  # raised to the current size: no page more

        event.listen(engine, "connect", cap)
        engine.dispose()  # pooled connections reopen with the cap
        big = client.put("/v1/documents/big", json={"text": "salmon river " * 1_500})
        event.remove(engine, "connect", cap)
        engine.dispose()
        assert big.status_code == 503, big.text
        message = big.json()["error"]["message"]
        assert "disk is full" in message, message
        assert "free space" in message, message
        assert big.headers["Retry-After"] == "60"
        assert client.get("/v1/documents/big").status_code == 404
        assert client.put("/v1/documents/big", json={"text": "salmon river " * 1_500}).status_code == 201
