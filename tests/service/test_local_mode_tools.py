"""The tools on a DATA_DIR of the local-mode store (VECTOR_STORE=local, an earlier release's default) write nothing
they should not, and what the service or a tool creates there is owner-only (note20's leftovers):

- `reconcile --dry-run` opened qdrant-client's store in place, which rewrites its `.lock` and `meta.json`: it now
  works on a copy in TMPDIR, as on the edge store, and not one byte (nor a modification time) of DATA_DIR changes;
- `backup create` took the edge store's lock by creating DATA_DIR/edge/, left behind empty;
- the local-mode store's directory was made with a plain mkdir (0755 under the usual umask), and a registry
  first created by a tool (not `python -m service`) was 0644 inside the 0700 DATA_DIR.

The store is made by a real service run with VECTOR_STORE=local; the tools run as an operator runs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app.core.config import Settings
from service.app.store.qdrant import QdrantVectorStore
from service.app.store.registry import DocumentRegistry
from tests.service.service_process import service_process
from tests.service.test_backup import DOCUMENTS, _run, _served
from tests.service.test_faults import body, env_for


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def state(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file and directory under ``root`` (the lock files and SQLite's too): content, mtime, mode."""
    found: dict[str, tuple[str, int, int]] = {}
    for path in sorted(root.rglob("*")):
        if "fastembed" in path.relative_to(root).parts:
            continue  # the model cache, not the store
        info = path.stat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(root))] = (digest, info.st_mtime_ns, stat.S_IMODE(info.st_mode))
    return found


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_local_mode_dry_run_and_backup_leave_data_dir_as_it_was(tmp_path: Path) -> None:
    data = tmp_path / "data"
    local = env_for(data, VECTOR_STORE="local", GC_ENABLED="false")
    with service_process(local, tmp_path / "service.log") as service, service.client() as http:
        for index, document_id in enumerate(DOCUMENTS):
            response = http.put(f"/v1/documents/{document_id}", json=body(f"m{index:04d}"))
            assert response.status_code in (200, 201), response.text
        assert _served(http) == set(DOCUMENTS)
        assert service.stop() in (0, -signal.SIGTERM), service.tail()
    assert (data / "qdrant" / "meta.json").is_file()
    assert (data / "qdrant" / ".lock").is_file()
    assert not (data / "edge").exists()
    assert mode(data / "qdrant") == 0o700
    before = state(data)

    backup = tmp_path / "backups" / "b1"
    made = _run("service.tools.backup", "create", str(backup), data_dir=data)
    assert made.returncode == 0, made.stderr
    assert not (data / "edge").exists()
    assert state(data) == before
    manifest = json.loads((backup / "manifest.json").read_text())
    assert any(name.startswith("qdrant/collection/") for name in manifest["files"])
    assert not (backup / "edge").exists()  # nothing to hold: no empty directory either

    # The documented check after a restore: a dry run. The restored store has no qdrant-client lock file (a
    # backup leaves it out), which opening the store in place created.
    restored = tmp_path / "restored"
    put_back = _run("service.tools.backup", "restore", str(backup), data_dir=restored)
    assert put_back.returncode == 0, put_back.stderr
    assert not (restored / "qdrant" / ".lock").exists()
    for where in (data, restored):
        before = state(where)
        scratch = tmp_path / f"scratch-{where.name}"
        scratch.mkdir()
        dry = _run(
            "service.reconcile", "--dry-run", data_dir=where, VECTOR_STORE="local", TMPDIR=str(scratch)
        )
        assert dry.returncode == 0, dry.stderr[-2000:]
        report = json.loads(dry.stdout)
        assert report["dry_run"] is True
        assert report["consistent"] is True
        assert state(where) == before
        assert not any(scratch.iterdir())  # its copy is gone

    # The store is still the earlier release's to serve, every document found.
    with service_process(local, tmp_path / "again.log") as service, service.client() as http:
        assert _served(http) == set(DOCUMENTS)
        assert service.stop() in (0, -signal.SIGTERM), service.tail()


def test_a_registry_and_a_local_mode_store_made_outside_the_service_are_owner_only(
    tmp_path: Path, usual_umask: None
) -> None:
    data = tmp_path / "data"
    registry = DocumentRegistry.from_settings(
        Settings(_env_file=None, data_dir=data)
    )  # as every tool opens it
    try:
        registry.migrate()
        beside = {p.name: mode(p) for p in data.iterdir() if p.name.startswith("registry.db")}
    finally:
        registry.close()
    assert beside["registry.db"] == 0o600
    assert beside == dict.fromkeys(beside, 0o600)  # its -wal/-shm take its mode
    assert mode(data / "registry.db") == 0o600

    settings = Settings(_env_file=None, data_dir=tmp_path / "other", vector_store="local")
    store = QdrantVectorStore.from_settings(settings, model_name="m", dimension=4)
    try:
        assert [mode(p) for p in (tmp_path / "other", tmp_path / "other" / "qdrant")] == [0o700, 0o700]
    finally:
        store.close()
