"""What a document reports and what a re-send costs across a re-index, and the chunker version of an index.

- ``chunk_count`` (GET and list) is the document's count in the collection search serves: after a switch the
  new chunking's, after a rollback the old one's again, for documents written before and after the switch;
- an unchanged re-send after a switch (and after a rollback) is ``unchanged``: nothing is embedded. Rows an
  earlier release hashed together with its index config are recognised (and re-hashed), at a re-send and by a
  re-index's build;
- a store built before the chunker was versioned is not re-indexed at start-up, keeps serving (its giant
  pre-cap chunk too), and a re-index with the same settings is allowed, rebuilds that document within the
  character cap, and is then refused as done.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.app.ingest.chunking import CHUNKER_VERSION
from service.app.ingest.index import UNVERSIONED_CHUNKER, IndexConfig
from service.app.ingest.service import content_hash, legacy_content_hash
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import index_pointer
from service.app.store.sparse import ENCODER_ID
from service.app.store.vectors import collection_name
from tests.service.support import CountingEmbedder, long_text, make_settings, running_app, services_of


def _reindex(client: TestClient, body: dict) -> dict:
    response = client.post("/v1/admin/reindex", json=body)
    assert response.status_code == 202, response.text
    status = services_of(client).reindexer.wait(120).as_dict()
    assert status["state"] == "switched", status
    return status


def _served_chunks(client: TestClient, document_id: str) -> int:
    generation = services_of(client).ingest.index.current
    return generation.vectors.count("default", document_id)


def _counts(client: TestClient) -> dict[str, int]:
    listed = client.get("/v1/documents", params={"limit": 100}).json()["documents"]
    got = {
        d["document_id"]: client.get(f"/v1/documents/{d['document_id']}").json()["chunk_count"]
        for d in listed
    }
    assert got == {d["document_id"]: d["chunk_count"] for d in listed}  # GET and list agree
    return got


def test_chunk_counts_follow_the_served_index_and_unchanged_resends_embed_nothing(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    counting = CountingEmbedder(embedder)
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8, vector_store="edge")
    texts = {"before": long_text("m0001", 3)}
    with running_app(settings, embedder=counting) as client:
        assert client.put("/v1/documents/before", json={"text": texts["before"]}).status_code == 201
        old = _counts(client)
        assert old == {"before": _served_chunks(client, "before")}

        _reindex(client, {"chunk_size": 24, "chunk_overlap": 4})
        texts["after"] = long_text("m0002", 2)
        assert client.put("/v1/documents/after", json={"text": texts["after"]}).status_code == 201
        new = _counts(client)
        assert new == {d: _served_chunks(client, d) for d in texts}
        assert new["before"] > old["before"]  # 24-token chunks: more of them

        embedded = len(counting.embedded)
        for document_id, text in texts.items():
            again = client.put(f"/v1/documents/{document_id}", json={"text": text}).json()
            assert again["status"] == "unchanged", again
            assert again["chunks"] == new[document_id]
        assert len(counting.embedded) == embedded  # nothing re-embedded

        rolled = client.post("/v1/admin/reindex/rollback")
        assert rolled.status_code == 200, rolled.text
        back = _counts(client)
        assert back == {d: _served_chunks(client, d) for d in texts}
        assert back["before"] == old["before"]
        for document_id, text in texts.items():
            assert (
                client.put(f"/v1/documents/{document_id}", json={"text": text}).json()["status"]
                == "unchanged"
            )
        assert len(counting.embedded) == embedded


def test_hashes_of_an_earlier_release_are_recognised_at_a_resend_and_by_a_reindex(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    counting = CountingEmbedder(embedder)
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8, vector_store="edge")
    with running_app(settings, embedder=counting) as client:
        services = services_of(client)
        registry = services.registry
        generation = services.ingest.index.current
        for document_id in ("resent", "rebuilt"):
            text = long_text(document_id, 2)
            assert client.put(f"/v1/documents/{document_id}", json={"text": text}).status_code == 201
            record = registry.get("default", document_id)
            assert record.content_hash == content_hash(text, {}, "text/plain")
            # What the previous release stored: the content hashed with the writing index's model and chunking.
            legacy = legacy_content_hash(
                text, {}, "text/plain", generation.embedder.model_name, generation.chunker.params()
            )
            assert registry.rehash("default", document_id, record.version, legacy)
        embedded = len(counting.embedded)

        again = client.put("/v1/documents/resent", json={"text": long_text("resent", 2)}).json()
        assert again["status"] == "unchanged", again
        assert len(counting.embedded) == embedded
        assert registry.get("default", "resent").content_hash == content_hash(
            long_text("resent", 2), {}, "text/plain"
        )

        # The build re-hashes what it rebuilds, so a re-send after the switch (the old config no longer served
        # nor, after a second re-index, on standby) is a no-op too.
        _reindex(client, {"chunk_size": 24, "chunk_overlap": 4})
        assert registry.get("default", "rebuilt").content_hash == content_hash(
            long_text("rebuilt", 2), {}, "text/plain"
        )
        embedded = len(counting.embedded)
        assert client.put("/v1/documents/rebuilt", json={"text": long_text("rebuilt", 2)}).json()[
            "status"
        ] == ("unchanged")
        assert len(counting.embedded) == embedded
        # A changed text is still a change.
        changed = client.put("/v1/documents/rebuilt", json={"text": long_text("rebuilt", 3)}).json()
        assert changed["status"] == "updated"


def test_the_collection_name_of_an_unversioned_config_is_the_earlier_releases(
    embedder: FastEmbedEmbedder,
) -> None:
    config = IndexConfig(embedder.model_name, 64, 8, chunker=UNVERSIONED_CHUNKER)
    material = {"model": embedder.model_name, "chunk_size": 64, "chunk_overlap": 8, "sparse": ENCODER_ID}
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:10]
    assert config.collection("rag", 384) == f"{collection_name('rag', embedder.model_name, 384)}__{digest}"
    assert IndexConfig(embedder.model_name, 64, 8).collection("rag", 384) != config.collection("rag", 384)
    assert (
        IndexConfig.from_dict({"model": "m", "chunk_size": 64, "chunk_overlap": 8}).chunker
        == UNVERSIONED_CHUNKER
    )


def test_a_store_from_before_chunker_versions_keeps_serving_and_can_be_rebuilt_with_the_same_settings(
    tmp_path: Path, embedder: FastEmbedEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8, vector_store="edge")
    blob = "x" * 3000  # one WordPiece [UNK]: only the character cap (16 a token) splits it
    with running_app(settings, embedder=embedder) as client:
        services = services_of(client)
        chunker = services.ingest.index.current.chunker
        cap = chunker.max_chars
        # The previous release: the document written before the cap existed, the pointer without a version.
        chunker.max_chars = 10**9
        try:
            assert client.put("/v1/documents/blob", json={"text": blob}).status_code == 201
        finally:
            chunker.max_chars = cap
        assert client.get("/v1/documents/blob").json()["chunk_count"] == 1
        with services.registry.engine.begin() as connection:
            config = dict(connection.execute(sa.select(index_pointer.c.config)).scalar_one())
            del config["chunker"]
            connection.execute(index_pointer.update().values(config=config))

    caplog.set_level(logging.WARNING, logger="service.app.main")
    with running_app(settings, embedder=embedder) as client:
        status = client.get("/v1/admin/reindex").json()
        assert status["state"] == "idle", status  # no re-index forced at start-up
        assert status["current"]["chunker"] == UNVERSIONED_CHUNKER
        assert "built by chunker version 1" in caplog.text
        assert client.get("/v1/documents/blob").json()["chunk_count"] == 1
        hits = client.post("/v1/search", json={"query": "x", "mode": "dense", "top_k": 10}).json()["results"]
        assert [len(h["text"]) for h in hits] == [3000]

        done = _reindex(client, {})  # the same settings: allowed, the chunker is newer
        assert done["current"]["chunker"] == CHUNKER_VERSION
        assert done["current"]["chunk_size"] == 64
        assert done["standby"]["chunker"] == UNVERSIONED_CHUNKER
        count = client.get("/v1/documents/blob").json()["chunk_count"]
        assert count == -(-3000 // cap)
        hits = client.post("/v1/search", json={"query": "x", "mode": "dense", "top_k": 10}).json()["results"]
        assert len(hits) == count
        assert max(len(h["text"]) for h in hits) <= cap

        again = client.post("/v1/admin/reindex", json={})
        assert again.status_code == 422
        assert "already built" in again.json()["error"]["message"]
