"""Upgrading to a release with a new CHUNKER_VERSION, end to end: what a deployed service does with its store.

A store built by chunker version 2 (every line break ended a sentence, so hard-wrapped text was chunked in
half-lines and overlaps began mid-sentence) is started by this release (version 3):

- the start-up does not re-index (the settings are the same; an upgrade must not rebuild every store on its
  first start), logs a WARNING naming both versions, and serves the old chunks;
- a re-index with the same settings (`POST /v1/admin/reindex {}`, `ragops reindex start`) is allowed; while it
  builds (held inside the build's chunking here, so "during" is a fact, not a timing), searches and reads keep
  answering from the old index;
- once switched, the document's chunks are the new rules' (every chunk starts at a sentence start), the old
  index is the standby for a rollback, and a second re-index is refused as done.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.app.ingest import chunking
from service.app.ingest.chunking import CHUNKER_VERSION, Chunker, sentence_spans
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import index_pointer
from tests.service.support import make_settings, running_app, services_of

PREVIOUS_CHUNKER = 2
# Hard-wrapped prose at 76 columns, as an editor writes it.
WRAPPED = "\n".join(
    re.findall(
        r".{1,76}(?:\s|$)",
        " ".join(
            f"Claim {i} says that the allowance for trip number {i} is paid out within {i + 3} working days "
            "of the request, once the manager has approved it."
            for i in range(12)
        ),
    )
).replace(" \n", "\n")


def _version_2_line_ends(text: str) -> list[int]:
    """The rule before version 3: every line break ends a sentence."""
    return [match.start() for match in re.finditer("\n", text)]


def _starts_mid_sentence(texts: list[str]) -> list[str]:
    starts = {a for a, _ in sentence_spans(WRAPPED)}
    return [text for text in texts if WRAPPED.index(text) not in starts]


def test_a_store_of_the_previous_chunker_keeps_serving_and_is_rebuilt_by_a_same_settings_reindex(
    tmp_path: Path,
    embedder: FastEmbedEmbedder,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert CHUNKER_VERSION == PREVIOUS_CHUNKER + 1
    settings = make_settings(tmp_path, chunk_size=48, chunk_overlap=16, vector_store="edge")
    query = {"query": "when is the allowance for a trip paid out?", "mode": "dense", "top_k": 50}

    # The previous release: its sentence rule wrote the document, its version is in the index pointer.
    with monkeypatch.context() as patch:
        patch.setattr(chunking, "_line_ends", _version_2_line_ends)
        with running_app(settings, embedder=embedder) as client:
            assert client.put("/v1/documents/claims", json={"text": WRAPPED}).status_code == 201
            old = [hit["text"] for hit in client.post("/v1/search", json=query).json()["results"]]
            with services_of(client).registry.engine.begin() as connection:
                config = dict(connection.execute(sa.select(index_pointer.c.config)).scalar_one())
                config["chunker"] = PREVIOUS_CHUNKER
                connection.execute(index_pointer.update().values(config=config))
    assert _starts_mid_sentence(old), "the previous rule should have cut the wrapped text in half-lines"

    caplog.set_level(logging.WARNING, logger="service.app.main")
    with running_app(settings, embedder=embedder) as client:
        services = services_of(client)
        status = client.get("/v1/admin/reindex").json()
        assert status["state"] == "idle", status  # no re-index at start-up
        assert status["current"]["chunker"] == PREVIOUS_CHUNKER
        assert (
            f"built by chunker version {PREVIOUS_CHUNKER} (this release's is {CHUNKER_VERSION})"
            in caplog.text
        )
        served = [hit["text"] for hit in client.post("/v1/search", json=query).json()["results"]]
        assert sorted(served) == sorted(old)

        # Hold the build inside its chunking: whatever is asked meanwhile is answered by the old index.
        entered, release = threading.Event(), threading.Event()
        split = Chunker.split

        def held(self: Chunker, text: str) -> list[chunking.Chunk]:
            entered.set()
            assert release.wait(120), "the test never released the build"
            return split(self, text)

        monkeypatch.setattr(Chunker, "split", held)
        try:
            started = client.post("/v1/admin/reindex", json={})
            assert started.status_code == 202, started.text
            assert entered.wait(120), "the build never started chunking"
            assert client.get("/v1/admin/reindex").json()["state"] == "building"
            during = client.post("/v1/search", json=query)
            assert during.status_code == 200, during.text
            assert sorted(hit["text"] for hit in during.json()["results"]) == sorted(old)
            assert client.get("/v1/documents/claims").status_code == 200
        finally:
            release.set()
        done = services.reindexer.wait(120).as_dict()
        assert done["state"] == "switched", done
        assert done["current"]["chunker"] == CHUNKER_VERSION
        assert done["standby"]["chunker"] == PREVIOUS_CHUNKER  # the rollback target

        new = [hit["text"] for hit in client.post("/v1/search", json=query).json()["results"]]
        assert new, "the rebuilt index lost the document"
        assert _starts_mid_sentence(new) == []
        assert client.get("/v1/documents/claims").json()["chunk_count"] == len(new)

        again = client.post("/v1/admin/reindex", json={})
        assert again.status_code == 422
        assert "already built" in again.json()["error"]["message"]
