"""Backup of a store an earlier release left (local-mode Qdrant at DATA_DIR/qdrant) and the documented rollback.

EYES10 S5: `backup create` on such a DATA_DIR copied only the registry (it looked at VECTOR_STORE, not at the
disk) and exited 0; after `migrate_store` (which retires qdrant/ as qdrant.migrated) the documented rollback
(`restore --force`, start the old release) served every document's listing and an empty search. The store is
made by a real service run with VECTOR_STORE=local (the 2026-11-25 default layout), and "the old release" is a
service with VECTOR_STORE=local on the restored DATA_DIR: it reads QDRANT_PATH exactly as that release did.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from qdrant_client import QdrantClient

from tests.service.service_process import service_process
from tests.service.test_backup import DOCUMENTS, _run, _served
from tests.service.test_faults import body, env_for


def test_backup_of_a_local_mode_store_keeps_its_vectors_through_migrate_and_rollback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old_release = env_for(data, VECTOR_STORE="local", GC_ENABLED="false")
    with service_process(old_release, tmp_path / "old.log") as service, service.client() as http:
        for index, document_id in enumerate(DOCUMENTS):
            response = http.put(f"/v1/documents/{document_id}", json=body(f"m{index:04d}"))
            assert response.status_code in (200, 201), response.text
        assert _served(http) == set(DOCUMENTS)
        assert service.stop() in (0, -signal.SIGTERM), service.tail()
    assert (data / "qdrant" / "meta.json").is_file()

    # A service of the earlier release still running on it (qdrant-client's lock): refused in one line.
    holder = QdrantClient(path=str(data / "qdrant"))
    try:
        busy = _run("service.tools.backup", "create", str(tmp_path / "busy"), data_dir=data)
    finally:
        holder.close()
    assert busy.returncode == 2, busy.stderr
    assert busy.stderr.count("\n") == 1, busy.stderr
    assert "in use by a running service" in busy.stderr, busy.stderr
    assert not (tmp_path / "busy").exists()

    # The operator follows operations.md with the new release's defaults (VECTOR_STORE unset: edge).
    backup = tmp_path / "backups" / "pre-upgrade"
    made = _run("service.tools.backup", "create", str(backup), data_dir=data)
    assert made.returncode == 0, made.stderr
    manifest = json.loads((backup / "manifest.json").read_text())
    assert any(name.startswith("qdrant/collection/") for name in manifest["files"]), sorted(manifest["files"])
    assert not any(name.endswith("/.lock") or name == "qdrant/.lock" for name in manifest["files"])
    assert _run("service.tools.backup", "verify", str(backup), data_dir=data).returncode == 0

    migrated = _run("service.tools.migrate_store", data_dir=data)
    assert migrated.returncode == 0, migrated.stderr
    assert (data / "qdrant.migrated").is_dir()
    assert not (data / "qdrant").exists()
    with service_process(env_for(data, GC_ENABLED="false"), tmp_path / "new.log") as service:
        with service.client() as http:
            assert _served(http) == set(DOCUMENTS)
            assert http.put("/v1/documents/after", json=body("m0100")).status_code in (200, 201)
        assert service.stop() in (0, -signal.SIGTERM), service.tail()

    # The rollback: restore --force from the new checkout, then the old release starts and finds its vectors.
    restored = _run("service.tools.backup", "restore", "--force", str(backup), data_dir=data)
    assert restored.returncode == 0, restored.stderr
    assert (data / "qdrant" / "meta.json").is_file()
    assert len(list(data.glob("edge.pre-restore-*"))) == 1
    with service_process(old_release, tmp_path / "rolled-back.log") as service, service.client() as http:
        assert _served(http) == set(DOCUMENTS)  # not [] (EYES10), and not the post-upgrade write
        assert service.stop() in (0, -signal.SIGTERM), service.tail()

    # And the upgrade again after the rollback: qdrant.migrated is already there, the retired copy gets its own name.
    again = _run("service.tools.migrate_store", data_dir=data)
    assert again.returncode == 0, again.stderr
    assert not (data / "qdrant").exists()
    assert len(list(data.glob("qdrant.migrated-*"))) == 1
    with (
        service_process(env_for(data, GC_ENABLED="false"), tmp_path / "new2.log") as service,
        service.client() as http,
    ):
        assert _served(http) == set(DOCUMENTS)


def test_restoring_a_vectorless_backup_beside_a_retired_store_says_to_move_it_back(tmp_path: Path) -> None:
    # What an earlier version of the tool made of a local-mode DATA_DIR: the registry and an empty edge/.
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    sqlite3.connect(source / "registry.db").close()
    backup = tmp_path / "registry-only"
    assert _run("service.tools.backup", "create", str(backup), data_dir=source).returncode == 0
    target.mkdir()
    plain = _run("service.tools.backup", "restore", str(backup), data_dir=target)
    assert plain.returncode == 0, plain.stderr
    assert "warning" not in plain.stderr  # nothing retired there: nothing to say

    (target / "qdrant.migrated" / "collection").mkdir(parents=True)
    rolled_back = _run("service.tools.backup", "restore", "--force", str(backup), data_dir=target)
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert rolled_back.stderr.startswith("backup: warning: this backup holds no vectors"), rolled_back.stderr
    assert f"mv {target / 'qdrant.migrated'} {target / 'qdrant'}" in rolled_back.stderr


def test_a_backup_with_a_local_mode_store_is_not_restored_into_a_memory_qdrant_path(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "qdrant" / "collection" / "c").mkdir(parents=True)
    (source / "qdrant" / "meta.json").write_text('{"collections": {}}')
    sqlite3.connect(source / "registry.db").close()
    backup = tmp_path / "with-qdrant"
    made = _run("service.tools.backup", "create", str(backup), data_dir=source)
    assert made.returncode == 0, made.stderr
    assert (backup / "qdrant" / "meta.json").is_file()
    assert not (backup / "qdrant" / ".lock").exists()  # qdrant-client's lock file, taken during the copy

    target = tmp_path / "target"
    refused = _run("service.tools.backup", "restore", str(backup), data_dir=target, QDRANT_PATH=":memory:")
    assert refused.returncode == 2, refused.stderr
    assert "QDRANT_PATH is :memory:" in refused.stderr
    assert not (target / "registry.db").exists()
