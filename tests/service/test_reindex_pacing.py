"""A re-index's catch-up scan of the embedded store is paced like the orphan collector's, and still exact.

A catch-up pass reads every point of the target; each edge scan page runs in native code holding the GIL, so
the pass calls the collector's pacer (service.app.store.gc.Pacer) between pages (service.app.jobs.reindex). Here
the pacer of a real re-index in the real app (qdrant-edge, pages of two points so a small store spans many)
stops at its first call until the test has searched and written a document beside it: that only completes if
the pass holds no gate or lock between pages. The re-index must still switch to a target that holds every active
version, the one written mid-scan included; and a shutdown during a paused scan ends the re-index at once.
How much the pacing spares the searches is measured, not asserted: bench/reindex_stall.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app.jobs.reindex import Reindexer
from service.app.store import edge
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.gc import Pacer
from tests.service.support import make_settings, running_app, services_of
from tests.service.test_reindex import active_versions_held, text_of

WAIT = 120.0  # bounds a hand-off that never comes; not a timing assertion


class HoldingPacer(Pacer):
    """The re-index's own pacer (its stop event included), whose first call waits for the test."""

    def __init__(self, stop: threading.Event, hold: bool) -> None:
        super().__init__(minimum=0.0, stop=stop)
        self.hold = hold
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __call__(self) -> None:
        if self.hold and not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(WAIT), "the test never resumed the scan"
        super().__call__()


@pytest.fixture
def client(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setattr(edge, "VERSIONS_PAGE", 2)  # a handful of documents spans many scan pages
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8, gc_enabled=False, vector_store="edge")
    with running_app(settings, embedder=embedder) as client:
        for index in range(6):
            assert client.put(f"/v1/documents/d{index}", json={"text": text_of(index, 0)}).status_code == 201
        yield client


def install_pacers(monkeypatch: pytest.MonkeyPatch, reindexer: Reindexer) -> list[HoldingPacer]:
    made: list[HoldingPacer] = []

    def pacer() -> HoldingPacer:
        made.append(HoldingPacer(reindexer._stop, hold=not made))  # the first pass's scan is held
        return made[-1]

    monkeypatch.setattr(reindexer, "_pacer", pacer)
    return made


def test_the_catch_up_scan_pauses_between_pages_lets_reads_and_writes_through_and_misses_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = services_of(client)
    old = services.ingest.index.current
    pacers = install_pacers(monkeypatch, services.reindexer)

    response = client.post("/v1/admin/reindex", json={"chunk_size": 24, "chunk_overlap": 4})
    assert response.status_code == 202, response.text
    _until_made(pacers)
    assert pacers[0].paused.wait(WAIT), "the catch-up scan never paused between pages"
    # Mid-scan, through the API: a search and a whole write (dual-written: the target is the shadow now).
    hits = client.post("/v1/search", json={"query": "how do glaciers shape valleys", "top_k": 3})
    assert hits.status_code == 200, hits.text
    assert hits.json()["results"]
    written = client.put("/v1/documents/mid-scan", json={"text": text_of(4, 7)})
    assert written.status_code == 201, written.text
    assert services.reindexer.status().state == "catching_up"
    pacers[0].resume.set()

    status = services.reindexer.wait(timeout=WAIT)
    assert status.state == "switched", status
    new = services.ingest.index.current
    assert new.collection != old.collection
    assert new.config.chunk_size == 24
    # Every catch-up pass (one before the switch, one after) paused between its pages, not once per pass.
    assert len(pacers) >= 2
    assert all(p.slices >= 3 for p in pacers), [p.slices for p in pacers]
    # The same result as unpaced: the new collection holds every active version, the mid-scan write included.
    active, held = active_versions_held(client, new)
    assert ("default", "mid-scan", written.json()["version"]) in active
    assert active <= held
    results = client.post("/v1/search", json={"query": "glaciers carve valleys", "top_k": 10}).json()[
        "results"
    ]
    assert {hit["document_id"] for hit in results} & {"d5", "mid-scan"}


def test_shutdown_during_a_paused_scan_ends_the_reindex_without_switching(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = services_of(client)
    old = services.ingest.index.current
    pacers = install_pacers(monkeypatch, services.reindexer)

    assert client.post("/v1/admin/reindex", json={"chunk_size": 24}).status_code == 202
    _until_made(pacers)
    assert pacers[0].paused.wait(WAIT)
    closing = threading.Thread(target=services.reindexer.close)  # what the app's shutdown calls
    closing.start()
    pacers[0].resume.set()  # the pacer sees the stop at once instead of pausing
    closing.join(WAIT)
    assert not closing.is_alive()

    status = services.reindexer.status()
    assert status.state == "failed", status
    assert status.error == "RuntimeError: the service is shutting down"
    assert services.ingest.index.current is old  # search never moved
    assert services.ingest.index.state.shadow is None
    assert services.registry.index_pointer().collection == old.collection


def _until_made(pacers: list[HoldingPacer]) -> None:
    """Wait for the first catch-up pass to make its pacer (the build before it embeds every document)."""
    deadline = time.monotonic() + WAIT
    while not pacers:
        assert time.monotonic() < deadline, "the re-index never reached its catch-up scan"
        time.sleep(0.05)
