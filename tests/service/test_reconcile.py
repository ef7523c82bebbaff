"""Restore reconciliation across a real restore: the edge store copied "before", the registry from "after".

Two tenants write documents; the vector store's directory is copied (a snapshot at T); then one document is
written, one replaced and one deleted per tenant; the store is put back to its copy while the registry stays at
"after" (what a Qdrant snapshot restore leaves). Then, as an operator would:

- a dry run reports, per collection and tenant with ids, the orphan points (the replaced version, the deleted
  document) and the documents without points (the new one, the replacement), and changes nothing;
- `python -m service.reconcile` is killed (SIGKILL) right after its first rewrite, and run again: it finishes,
  exit 0;
- a further run finds nothing (idempotent), and search serves every registry document at its active version and
  nothing deleted;
- a document whose kept text is gone (written before texts were kept) is reported by id, exit 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import reconcile as cli
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import document_sources
from tests.service.support import make_settings, running_app, services_of

REPO_ROOT = Path(__file__).resolve().parents[2]
TENANTS = ("default", "acme")


def _text(marker: str) -> str:
    return " ".join(f"{marker} salmon and trout spawn in river bed {i}." for i in range(12))  # a few chunks


def _put(client: TestClient, tenant: str, document_id: str, marker: str) -> None:
    services = services_of(client)
    client.portal.call(partial(services.ingest.ingest, tenant, document_id, text=_text(marker)))  # type: ignore[union-attr]


def _delete(client: TestClient, tenant: str, document_id: str) -> None:
    services = services_of(client)
    client.portal.call(services.ingest.delete, tenant, document_id)  # type: ignore[union-attr]


def _dry_run(client: TestClient) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["--dry-run"], services=services_of(client))
    return code, json.loads(out.getvalue())


def _run_cli(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL")},
        "ENVIRONMENT": "test",
        "DATA_DIR": str(tmp_path),
        "VECTOR_STORE": "edge",
        "CHUNK_SIZE": "64",
        "CHUNK_OVERLAP": "0",
        "GC_ENABLED": "false",
        "GC_GRACE_SECONDS": "0",
        "LOG_JSON": "true",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "service.reconcile", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _checksums(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` (the lock file too), files by SHA-256."""
    return {
        str(path.relative_to(root)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if "fastembed" not in path.parts  # the model cache, not the store
    }


def _tenant(report: dict[str, Any], tenant: str) -> dict[str, Any]:
    (collection,) = report["collections"]
    return collection["tenants"][tenant]


def _served(client: TestClient, tenant: str) -> dict[str, set[str]]:
    services = services_of(client)
    vectors = services.ingest.index.current.vectors
    active = {}
    for version in vectors.versions():
        if version.tenant_id == tenant:
            active.setdefault(version.document_id, set()).add(version.version)
    return active


def test_reconcile_after_restoring_an_old_store_under_a_newer_registry(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = make_settings(tmp_path, qdrant_path=None, vector_store="edge", chunk_size=64, chunk_overlap=0)
    # The reconciling processes judge every inactive version old enough to remove (in production the snapshot's
    # points are older than GC_GRACE_SECONDS; here they are seconds old). Writers keep the default grace.
    reconciling = settings.model_copy(update={"gc_grace_seconds": 0})
    with running_app(settings, embedder=embedder) as client:
        for tenant in TENANTS:
            for document_id in ("kept", "replaced", "deleted"):
                _put(client, tenant, document_id, "m0001")
    # The snapshot at T: the store as it is on disk with the service stopped.
    shutil.copytree(tmp_path / "edge", tmp_path / "edge-at-t")

    with running_app(settings, embedder=embedder) as client:
        for tenant in TENANTS:
            _put(client, tenant, "replaced", "m0002")
            _put(client, tenant, "added", "m0003")
            _delete(client, tenant, "deleted")
        registry = services_of(client).registry
        versions = {
            tenant: registry.active_versions(tenant, ["kept", "replaced", "added", "deleted"])
            for tenant in TENANTS
        }
    # The restore: the store goes back to T, the registry stays at "after".
    shutil.rmtree(tmp_path / "edge")
    shutil.copytree(tmp_path / "edge-at-t", tmp_path / "edge")

    with running_app(reconciling, embedder=embedder) as client:
        code, report = _dry_run(client)
        assert code == 1
        assert report["dry_run"] is True
        for tenant in TENANTS:
            found = _tenant(report, tenant)
            assert sorted(found["reindexed_ids"]) == ["added", "replaced"]
            assert sorted(i.split("@")[0] for i in found["orphan_ids"]) == ["deleted", "replaced"]
            assert found["orphan_points"] > 0
            assert found["without_text"] == 0
        # Nothing changed: the old versions are still there, the new ones still missing.
        assert set(_served(client, "acme")) == {"kept", "replaced", "deleted"}

    # The command's dry run, as an operator runs it on the stopped store: the same findings, and not one byte
    # of DATA_DIR changed (EYES7 L2: opening the store optimized it, started a consolidation, and the engine
    # rewrote its config and trackers; SQLite may leave -wal/-shm files).
    files = _checksums(tmp_path)
    scratch = tmp_path.parent / f"{tmp_path.name}-scratch"
    scratch.mkdir()
    dry = _run_cli(tmp_path, "--dry-run", TMPDIR=str(scratch))
    assert dry.returncode == 1, dry.stderr[-2000:]
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    for tenant in TENANTS:
        assert sorted(_tenant(report, tenant)["reindexed_ids"]) == ["added", "replaced"]
    assert _checksums(tmp_path) == files
    assert not any(scratch.iterdir())  # its copy is gone

    killed = _run_cli(tmp_path, RAG_FAULT_KILL_AT="reconcile_write")
    assert killed.returncode == -9, killed.stderr[-2000:]

    finished = _run_cli(tmp_path)
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.loads(finished.stdout)
    assert report["consistent"] is True
    # The killed run had removed the orphans and rewritten one document: this one did the rest.
    assert 1 <= report["reindexed"] <= 3
    assert report["without_text"] == 0

    with running_app(reconciling, embedder=embedder) as client:
        # Idempotent: a further run has nothing to do.
        code, report = _dry_run(client)
        assert code == 0
        assert (report["orphan_versions"], report["reindexed"], report["without_text"]) == (0, 0, 0)
        for tenant in TENANTS:
            # Every registry document at exactly its active version, nothing of the deleted one.
            assert _served(client, tenant) == {doc: {version} for doc, version in versions[tenant].items()}
            hits = client.post("/v1/search", json={"query": "m0003 salmon trout", "top_k": 50}).json()[
                "results"
            ]
            if tenant == "default":
                assert {hit["document_id"] for hit in hits} == {"kept", "replaced", "added"}
                texts = {hit["document_id"]: hit["text"] for hit in hits}
                assert "m0002" in texts["replaced"]

        # A write cut off between two upsert batches (a kill -9 mid-upsert) leaves a version with too few points:
        # found by its count and written again.
        services = services_of(client)
        generation = services.ingest.index.current
        source = services.registry.source("default", "kept")
        assert source is not None
        record = source.record
        points = services.ingest._points(
            generation, "default", "kept", record.version, source.text, record.metadata, record.content_hash
        )
        assert len(points) >= 2
        generation.vectors.delete_version("default", "kept", record.version)
        generation.vectors.upsert(points[:1])
        code, report = _dry_run(client)
        assert code == 1
        assert _tenant(report, "default")["reindexed_ids"] == ["kept"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main([], services=services) == 0
        assert {v.points for v in generation.vectors.versions() if v.document_id == "kept"} == {len(points)}

        # A document whose kept text is gone cannot be rebuilt here: it is reported with its id.
        with services.registry.engine.begin() as connection:
            connection.execute(
                sa.delete(document_sources).where(
                    document_sources.c.tenant_id == "acme", document_sources.c.document_id == "added"
                )
            )
        services.ingest.index.current.vectors.delete_version("acme", "added", versions["acme"]["added"])
        code, report = _dry_run(client)
        assert code == 1
        assert _tenant(report, "acme")["without_text_ids"] == ["added"]
        assert _tenant(report, "acme")["reindexed"] == 0


def test_points_of_a_document_deleted_within_the_grace_are_reported_as_pending_not_hidden(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    """EYES9 L2: a store restored from before a delete, with the default GC_GRACE_SECONDS: the deleted document's
    points are younger than the grace, so reconcile keeps them (the collector removes them later). The report
    said `consistent: true` and listed nothing while they remained; it now lists them as pending collection,
    with when they become removable, and stays consistent (search never serves them)."""
    settings = make_settings(tmp_path, qdrant_path=None, vector_store="edge", chunk_size=64, chunk_overlap=0)
    assert settings.gc_grace_seconds >= 600
    with running_app(settings, embedder=embedder) as client:
        for document_id in ("kept", "policy"):
            _put(client, "default", document_id, "m0001")
    shutil.copytree(tmp_path / "edge", tmp_path / "edge-at-t")
    with running_app(settings, embedder=embedder) as client:
        _delete(client, "default", "policy")
    shutil.rmtree(tmp_path / "edge")
    shutil.copytree(tmp_path / "edge-at-t", tmp_path / "edge")

    with running_app(settings, embedder=embedder) as client:
        for args in (["--dry-run"], []):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = cli.main(args, services=services_of(client))
            report = json.loads(out.getvalue())
            assert code == 0, report
            assert report["consistent"] is True
            assert report["orphan_versions"] == 0
            pending = report["pending_collection"]
            assert pending["versions"] == 1
            assert pending["points"] > 0
            tenant = _tenant(report, "default")
            assert [i.split("@")[0] for i in tenant["pending_ids"]] == ["policy"]
            assert tenant["pending_points"] == pending["points"]
            removable = datetime.fromisoformat(pending["removable_after"])
            assert removable > datetime.now(UTC)  # within the grace: not yet
            assert removable <= datetime.now(UTC) + timedelta(seconds=settings.gc_grace_seconds)
        # The real run kept them (the collector's job, after the grace); search does not serve them.
        assert set(_served(client, "default")) == {"kept", "policy"}
        hits = client.post("/v1/search", json={"query": "m0001 salmon trout", "top_k": 50}).json()["results"]
        assert {hit["document_id"] for hit in hits} == {"kept"}
