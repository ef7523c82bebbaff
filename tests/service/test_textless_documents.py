"""Documents written by a release before texts were kept (EYES7 M1), through the HTTP API of a restarted service.

- a restart with a changed CHUNK_SIZE starts a re-index that fails (it cannot rebuild them): the start-up line
  already says to re-send them first, the failure names them and says what to do, and /readyz stays 200 (the
  old index serves) but carries a warning saying the served index lacks the deployed settings and why;
- the advice works: after a switch with ``allow_missing``, such a document's chunks are a 409 saying its text
  is not kept and to re-send it (not a 503 "retry"); once re-sent (unchanged), its chunks are served and a
  re-index without ``allow_missing`` succeeds;
- the chunker-version start-up warning names ADMIN_API_KEY and the documents to re-send first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import document_sources, index_pointer
from tests.service.support import long_text, make_settings, running_app, services_of


def _old_release_store(
    tmp_path: Path, embedder: FastEmbedEmbedder, *, chunker: bool = True
) -> dict[str, str]:
    """A store whose documents have no kept text, as a release before migration 0003 left them."""
    texts = {"kept": long_text("k0001", 2), "old-a": long_text("a0001", 2), "old-b": long_text("b0001", 2)}
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8, vector_store="edge")
    with running_app(settings, embedder=embedder) as client:
        for document_id, text in texts.items():
            assert client.put(f"/v1/documents/{document_id}", json={"text": text}).status_code == 201
        with services_of(client).registry.engine.begin() as connection:
            connection.execute(document_sources.delete().where(document_sources.c.document_id != "kept"))
            if not chunker:
                config = dict(connection.execute(sa.select(index_pointer.c.config)).scalar_one())
                del config["chunker"]
                connection.execute(index_pointer.update().values(config=config))
    return texts


def test_a_changed_chunk_size_over_textless_documents_is_visible_and_the_advice_works(
    tmp_path: Path, embedder: FastEmbedEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    texts = _old_release_store(tmp_path, embedder)
    caplog.set_level(logging.INFO, logger="service.app")
    changed = make_settings(tmp_path, chunk_size=32, chunk_overlap=4, vector_store="edge")
    with running_app(changed, embedder=embedder) as client:
        services = services_of(client)
        status = services.reindexer.wait(120).as_dict()
        assert status["state"] == "failed", status
        assert "first re-send the 2 documents written before texts were kept" in status["startup"]
        assert "default/old-a, default/old-b" in status["error"]
        assert "re-send each one" in status["error"]
        assert "allow_missing" in status["error"]
        assert "first re-send the 2 documents" in caplog.text

        ready = client.get("/readyz")
        assert ready.status_code == 200  # the old index serves
        warning = ready.json()["warnings"]["index"]
        assert "does not have the deployed settings" in warning
        assert "chunk 32/4" in warning
        assert "re-send each one" in warning
        # Search still answers from the old index.
        assert client.get("/v1/documents/old-a/chunks").status_code == 200

        switched = client.post(
            "/v1/admin/reindex", json={"chunk_size": 32, "chunk_overlap": 4, "allow_missing": True}
        )
        assert switched.status_code == 202, switched.text
        assert services.reindexer.wait(120).state == "switched"
        assert "warnings" not in client.get("/readyz").json()

        refused = client.get("/v1/documents/old-a/chunks")
        assert refused.status_code == 409, refused.text
        message = refused.json()["error"]["message"]
        assert "before texts were kept" in message
        assert "re-send it" in message
        assert client.get("/v1/documents/kept/chunks").status_code == 200

        # The advice: an unchanged re-send keeps the text; the document is then served and re-indexable.
        for document_id in ("old-a", "old-b"):
            again = client.put(f"/v1/documents/{document_id}", json={"text": texts[document_id]})
            assert again.status_code in (200, 201), again.text
        assert client.get("/v1/documents/old-a/chunks").status_code == 200
        hits = client.post("/v1/search", json={"query": texts["old-b"][:200], "top_k": 3}).json()["results"]
        assert "old-b" in {h["document_id"] for h in hits}
        rebuilt = client.post("/v1/admin/reindex", json={"chunk_size": 48, "chunk_overlap": 4})
        assert rebuilt.status_code == 202, rebuilt.text
        assert services.reindexer.wait(120).state == "switched"


def test_the_chunker_upgrade_warning_names_the_admin_key_and_the_documents_to_resend(
    tmp_path: Path, embedder: FastEmbedEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    _old_release_store(tmp_path, embedder, chunker=False)
    caplog.set_level(logging.WARNING, logger="service.app.main")
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8, vector_store="edge")
    with running_app(settings, embedder=embedder) as client:
        assert services_of(client).reindexer.status().state == "idle"
        assert "built by chunker version 1" in caplog.text
        assert "ADMIN_API_KEY" in caplog.text
        assert "first re-send the 2 documents written before texts were kept" in caplog.text
        assert "warnings" not in client.get("/readyz").json()  # the same settings: nothing failed
