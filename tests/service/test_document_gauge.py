"""rag_documents{tenant}: active documents per tenant, read from the registry at each scrape by the process that
answers it, so it is right after a restart (nothing to rebuild), after deletes (a tenant emptied reads 0), across a
re-index and on every worker; a tenant nobody wrote to since the last scrape is not counted again."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import open_registry
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
    # A new process, before any write: the count comes from the registry, not from what this process saw (the
    # emptied tenant still reads 0: it has written, so the registry knows it).
    restarted = start_api(tmp_path, **settings)
    try:
        assert documents_gauge(httpx.get(f"{restarted.url}/metrics").text) == {"tenant-a": 2, "tenant-b": 0}
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


def test_a_tenant_emptied_reads_0_on_every_worker_sharing_the_metrics_directory(tmp_path: Path) -> None:
    """WORKERS > 1 shares PROMETHEUS_MULTIPROC_DIR between processes, and a scrape reaches any one of them. Here two
    real API processes share it and the registry (as two workers do; each has its own embedded store). The gauge
    was a Gauge merged from every process's file: process A reported the tenant, the tenant was emptied, and a
    scrape answered by B read A's stale count (B had never reported the tenant, so it did not set it to 0)."""
    shared = tmp_path / "multiproc"
    shared.mkdir()
    common = {
        "api_keys": API_KEYS,
        "environment": "test",
        "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "prometheus_multiproc_dir": str(shared),
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_api(tmp_path / "a", data_dir=str(tmp_path / "a" / "data"), **common)
    second = None
    try:
        put = httpx.put(
            f"{first.url}/v1/documents/x1", json={"text": "the text of x1"}, headers=bearer(KEY_B), timeout=60
        )
        assert put.status_code == 201, put.text
        assert documents_gauge(httpx.get(f"{first.url}/metrics").text) == {"tenant-b": 1}
        gone = httpx.delete(f"{first.url}/v1/documents/x1", headers=bearer(KEY_B), timeout=60)
        assert gone.status_code == 204, gone.text
        second = start_api(tmp_path / "b", data_dir=str(tmp_path / "b" / "data"), **common)
        assert documents_gauge(httpx.get(f"{second.url}/metrics").text) == {"tenant-b": 0}
        assert documents_gauge(httpx.get(f"{first.url}/metrics").text) == {"tenant-b": 0}
    finally:
        _stop(first.proc)
        if second is not None:
            _stop(second.proc)


def test_a_scrape_counts_only_the_tenants_written_since_the_last_one(tmp_path: Path) -> None:
    """A tenant whose data_version did not move keeps its count: a scrape scans no document of an idle tenant
    (the gauge was one pass over the whole documents table per scrape on every replica)."""
    registry = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        for tenant, count in (("t1", 3), ("t2", 2)):
            for index in range(count):
                registry.activate(
                    tenant,
                    f"d{index}",
                    expected_version=None,
                    version=1,
                    content_hash="h",
                    metadata={},
                    content_type="text/plain",
                    chunk_count=1,
                )
        counted: list[str] = []
        original = registry.engine.connect

        def spying_connect():  # every statement the counts run, as SQL text
            connection = original()
            execute = connection.execute

            def recording(statement, *args, **kwargs):
                counted.append(str(statement))
                return execute(statement, *args, **kwargs)

            connection.execute = recording
            return connection

        registry.engine.connect = spying_connect
        counts = registry.document_counts({})
        assert {tenant: count for tenant, (_, count) in counts.items()} == {"t1": 3, "t2": 2}
        counted.clear()
        registry.delete("t2", "d0")
        again = registry.document_counts(counts)
        assert {tenant: count for tenant, (_, count) in again.items()} == {"t1": 3, "t2": 1}
        scans = [statement for statement in counted if "count(" in statement]
        assert len(scans) == 1, counted  # t2's only; t1 was not scanned
        counted.clear()
        assert registry.document_counts(again) == again
        assert not [statement for statement in counted if "count(" in statement], counted
    finally:
        registry.close()
