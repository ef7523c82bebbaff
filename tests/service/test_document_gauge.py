"""rag_documents{tenant}: active documents per tenant, read from the registry at each scrape, so it is right
after a restart (nothing to rebuild), after deletes (a tenant emptied reads 0) and across a re-index."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.app.store.embedder import FastEmbedEmbedder
from tests.service.prod_support import API_KEYS, KEY_A, KEY_B, bearer
from tests.service.support import make_settings, running_app, services_of
from tests.support.processes import _stop, start_api


def documents_gauge(text: str) -> dict[str, float]:
    """The rag_documents samples of a /metrics body, by tenant."""
    return {
        sample.labels["tenant"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "rag_documents"
        for sample in family.samples
    }


def test_the_document_gauge_counts_per_tenant_across_deletes_and_a_restart(tmp_path: Path) -> None:
    settings = {"data_dir": str(tmp_path / "data"), "api_keys": API_KEYS, "environment": "test"}
    started = start_api(tmp_path, **settings)
    try:
        for key, document_id in ((KEY_A, "a1"), (KEY_A, "a2"), (KEY_A, "a3"), (KEY_B, "b1")):
            put = httpx.put(
                f"{started.url}/v1/documents/{document_id}",
                json={"text": f"the text of {document_id}"},
                headers=bearer(key),
                timeout=60,
            )
            assert put.status_code == 201, put.text
        # Sent again unchanged: still one document.
        httpx.put(f"{started.url}/v1/documents/a1", json={"text": "the text of a1"}, headers=bearer(KEY_A))
        assert documents_gauge(httpx.get(f"{started.url}/metrics").text) == {"tenant-a": 3, "tenant-b": 1}
        for key, document_id in ((KEY_A, "a2"), (KEY_B, "b1")):
            gone = httpx.delete(f"{started.url}/v1/documents/{document_id}", headers=bearer(key), timeout=60)
            assert gone.status_code == 204, gone.text
        assert documents_gauge(httpx.get(f"{started.url}/metrics").text) == {"tenant-a": 2, "tenant-b": 0}
        started.proc.send_signal(signal.SIGTERM)
        assert started.proc.wait(timeout=120) in (0, -signal.SIGTERM)
    finally:
        _stop(started.proc)
    # A new process, before any write: the count comes from the registry, not from what this process saw.
    restarted = start_api(tmp_path, **settings)
    try:
        assert documents_gauge(httpx.get(f"{restarted.url}/metrics").text) == {"tenant-a": 2}
    finally:
        _stop(restarted.proc)


def nonzero(text: str) -> dict[str, float]:
    # In-process, the gauge is this test process's: tenants of other tests' apps read 0 here.
    return {tenant: value for tenant, value in documents_gauge(text).items() if value}


def test_the_document_gauge_is_unchanged_by_a_reindex(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8)
    with running_app(settings, embedder=embedder) as client:
        for index in range(5):
            assert (
                client.put(f"/v1/documents/d{index}", json={"text": f"document {index}"}).status_code == 201
            )
        assert nonzero(client.get("/metrics").text) == {"default": 5}
    # Changed chunking: the start-up re-indexes every document into a new collection and switches to it.
    changed = make_settings(tmp_path, chunk_size=24, chunk_overlap=4)
    with running_app(changed, embedder=embedder) as client:
        status = services_of(client).reindexer.wait(timeout=600)
        assert status.state == "switched", status
        assert nonzero(client.get("/metrics").text) == {"default": 5}
        assert client.delete("/v1/documents/d0").status_code == 204
        assert nonzero(client.get("/metrics").text) == {"default": 4}
