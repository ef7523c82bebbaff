"""Backup and restore of the embedded store (`python -m service.tools.backup`), across real processes.

- While a real service owns DATA_DIR: `service.reconcile`, `backup create` and `backup restore --force` each
  exit 2 with one line naming DATA_DIR, the service's pid and what to do (no traceback), and change nothing.
- Round trip: documents written through the running service, the service stopped (SIGTERM), `create`,
  `verify`, `restore` into an empty DATA_DIR, a service started there serves every document (search) and
  accepts writes; `restore` onto a non-empty DATA_DIR is refused without --force and moves it aside with it.
- `kill -9` of `create` after it copied the registry and the edge shards (test hook): the source is byte for
  byte untouched and a service starts on it; no target exists; the `.partial` left behind is refused by
  `verify` and `restore`; a damaged file in a complete backup is refused too.
- `kill -9` of `restore` after the shards, before the registry: the service refuses to start there in one line
  (shards without a registry), a plain `restore` refuses the half-filled DATA_DIR, `restore --force` completes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from service.tools.backup import BLOCK_AT_ENV
from tests.service.service_process import REPO_ROOT, ServiceProcess, service_process, wait_for
from tests.service.test_faults import body, env_for

DOCUMENTS = [f"doc{i}" for i in range(6)]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL", BLOCK_AT_ENV)
    }
    return {**env, "ENVIRONMENT": "test", **env_for(data_dir), **extra}


def _run(module: str, *args: str, data_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=_env(data_dir, **extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256 (but the lock, and SQLite's shared-memory index, which any
    reader rewrites)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != ".lock" and not path.name.endswith("-shm")
    }


def _allocated(root: Path) -> int:
    """Bytes the files under ``root`` take on disk (their blocks), not their apparent size."""
    return sum(path.stat().st_blocks * 512 for path in root.rglob("*") if path.is_file())


def _served(http: httpx.Client) -> set[str]:
    response = http.post("/v1/search", json={"query": "salmon trout river", "top_k": 100})
    assert response.status_code == 200, response.text
    return {hit["document_id"] for hit in response.json()["results"]}


def _write(data_dir: Path, log: Path) -> None:
    with service_process(env_for(data_dir, GC_ENABLED="false"), log) as service, service.client() as http:
        for index, document_id in enumerate(DOCUMENTS):
            response = http.put(f"/v1/documents/{document_id}", json=body(f"m{index:04d}"))
            assert response.status_code in (200, 201), response.text
        assert _served(http) == set(DOCUMENTS)
        assert service.stop() in (0, -signal.SIGTERM), service.tail()  # uvicorn re-raises SIGTERM


def test_tools_refuse_with_one_line_while_the_service_owns_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "service.log"
    with service_process(env_for(data, GC_ENABLED="false"), log) as service, service.client() as http:
        assert http.put("/v1/documents/a", json=body("m0001")).status_code in (200, 201)
        before = _tree(data)
        pid = str(service.proc.pid)

        reconcile = _run("service.reconcile", "--dry-run", data_dir=data)
        made = _run("service.tools.backup", "create", str(tmp_path / "b"), data_dir=data)
        forced = _run("service.tools.backup", "restore", str(tmp_path / "b"), "--force", data_dir=data)

        for result in (reconcile, made):
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr  # one line, no traceback
            assert "Traceback" not in result.stderr
            assert f"DATA_DIR={data}" in lines[0], lines[0]
            assert f"pid {pid}" in lines[0], lines[0]
            assert "stop the service" in lines[0], lines[0]
            assert f"kill {pid}" in lines[0], lines[0]
        assert reconcile.stdout == ""
        assert not (tmp_path / "b").exists()
        assert not (tmp_path / "b.partial").exists()
        # restore checks the backup first: there is none here, so it is refused before touching anything.
        assert forced.returncode == 1, forced.stderr
        assert "not a complete backup" in forced.stderr, forced.stderr
        assert _tree(data) == before
        assert _served(http) == {"a"}  # the service did not notice


def test_restore_force_is_refused_while_a_service_runs_on_the_target(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    _write(source, tmp_path / "source.log")
    backup = tmp_path / "backup"
    assert _run("service.tools.backup", "create", str(backup), data_dir=source).returncode == 0
    with service_process(env_for(target, GC_ENABLED="false"), tmp_path / "target.log") as service:
        with service.client() as http:
            assert http.put("/v1/documents/other", json=body("m0009")).status_code in (200, 201)
        before = _tree(target)
        refused = _run("service.tools.backup", "restore", str(backup), "--force", data_dir=target)
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert f"pid {service.proc.pid}" in refused.stderr
        assert "a restore needs it" in refused.stderr
        assert _tree(target) == before
        assert not list(tmp_path.glob("target/*.pre-restore-*"))


def test_backup_restore_round_trip_serves_every_document(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    _write(source, tmp_path / "source.log")
    before = _tree(source)
    backup = tmp_path / "backups" / "one"

    made = _run("service.tools.backup", "create", str(backup), data_dir=source)
    assert made.returncode == 0, made.stderr
    assert _tree(source) == before  # the source is only read
    # The engine's preallocated files are mostly holes: the backup keeps them, or a small store takes ~200 MB.
    assert _allocated(backup / "edge") <= 2 * _allocated(source / "edge") + 2**20
    assert not (backup.parent / "one.partial").exists()
    checked = _run("service.tools.backup", "verify", str(backup), data_dir=tmp_path / "unused")
    assert checked.returncode == 0, checked.stderr
    assert "registry revision" in checked.stdout, checked.stderr
    # The summary's size is what the backup takes on disk (EYES10: it printed the apparent size, ~5x it).
    on_disk = int(made.stdout.split(" MB (", 1)[1].split(" bytes) on disk (allocated)", 1)[0])
    assert on_disk == _allocated(backup) - (backup / "manifest.json").stat().st_blocks * 512, made.stdout
    apparent = sum(
        path.stat().st_size for path in backup.rglob("*") if path.is_file() and path.name != "manifest.json"
    )
    assert f"({apparent} bytes) apparent" in made.stdout, made.stdout
    assert apparent > on_disk
    assert "on disk (allocated)" in checked.stdout
    inside = _run("service.tools.backup", "create", str(source / "edge" / "b"), data_dir=source)
    assert inside.returncode == 2
    assert "inside EDGE_PATH" in inside.stderr
    assert not (source / "edge" / "b.partial").exists()
    again = _run("service.tools.backup", "create", str(backup), data_dir=source)
    assert again.returncode == 2
    assert "already exists" in again.stderr

    restored = _run("service.tools.backup", "restore", str(backup), data_dir=target)
    assert restored.returncode == 0, restored.stderr
    assert _allocated(target / "edge") <= 2 * _allocated(source / "edge") + 2**20
    with service_process(env_for(target, GC_ENABLED="false"), tmp_path / "target.log") as service:
        with service.client() as http:
            assert _served(http) == set(DOCUMENTS)
            assert http.put("/v1/documents/after", json=body("m0100")).status_code in (200, 201)
            assert _served(http) == {*DOCUMENTS, "after"}
        assert service.stop() in (0, -signal.SIGTERM), service.tail()  # uvicorn re-raises SIGTERM

    # Onto a store that is not empty: refused, then with --force the old one is moved aside, not deleted.
    refused = _run("service.tools.backup", "restore", str(backup), data_dir=target)
    assert refused.returncode == 2
    assert "is not empty" in refused.stderr
    assert "--force" in refused.stderr
    forced = _run("service.tools.backup", "restore", str(backup), "--force", data_dir=target)
    assert forced.returncode == 0, forced.stderr
    assert len(list(target.glob("registry.db.pre-restore-*"))) == 1
    assert len(list(target.glob("edge.pre-restore-*"))) == 1
    with (
        service_process(env_for(target, GC_ENABLED="false"), tmp_path / "target2.log") as service,
        service.client() as http,
    ):
        assert _served(http) == set(DOCUMENTS)  # the backup's documents, not the later write


def test_kill_9_of_create_leaves_the_source_untouched_and_no_backup_that_restores(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _write(source, tmp_path / "source.log")
    before = _tree(source)
    backup = tmp_path / "backup"
    for point in ("registry", "edge"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.tools.backup", "create", str(backup)],
            cwd=REPO_ROOT,
            env={**_env(source), BLOCK_AT_ENV: point},
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        line = wait_for(proc.stderr.readline, f"create to block after the {point}")
        assert f"blocked after copying the {point}" in line, line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()

        assert _tree(source) == before
        assert not backup.exists()
        partial = tmp_path / "backup.partial"
        assert (partial / "registry.db").is_file()  # the kill really was midway
        for command in ("verify", "restore"):
            result = _run("service.tools.backup", command, str(partial), data_dir=tmp_path / f"empty-{point}")
            assert result.returncode == 1, result.stderr
            assert "not a complete backup" in result.stderr
            assert "interrupted" in result.stderr
        assert not (tmp_path / f"empty-{point}" / "registry.db").exists()

    # The dead process's lock went with it: a service starts on the source and serves everything.
    with service_process(env_for(source, GC_ENABLED="false"), tmp_path / "after.log") as service:
        with service.client() as http:
            assert _served(http) == set(DOCUMENTS)
        assert service.stop() in (0, -signal.SIGTERM), service.tail()  # uvicorn re-raises SIGTERM
    # A later create replaces the partial directory; a damaged file in the result is refused.
    assert _run("service.tools.backup", "create", str(backup), data_dir=source).returncode == 0
    assert not (tmp_path / "backup.partial").exists()
    shard_file = max((p for p in (backup / "edge").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with shard_file.open("r+b") as damaged:
        damaged.write(b"\xff")
    result = _run("service.tools.backup", "restore", str(backup), data_dir=tmp_path / "empty")
    assert result.returncode == 1, result.stderr
    assert "does not match its manifest" in result.stderr, result.stderr
    assert not (tmp_path / "empty" / "registry.db").exists()


def test_kill_9_of_restore_leaves_a_store_the_service_refuses_until_restore_force(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    _write(source, tmp_path / "source.log")
    backup = tmp_path / "backup"
    assert _run("service.tools.backup", "create", str(backup), data_dir=source).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.tools.backup", "restore", str(backup)],
        cwd=REPO_ROOT,
        env={**_env(target), BLOCK_AT_ENV: "restored shards"},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = wait_for(proc.stderr.readline, "restore to block before the registry")
    assert "blocked after copying the restored shards" in line, line
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (target / "registry.db").exists()
    assert any((target / "edge").iterdir())

    # The service refuses the shards without their registry (one line, nothing started), and a plain restore
    # refuses the half-filled DATA_DIR; `restore --force` finishes the job.
    refused = ServiceProcess(env_for(target, GC_ENABLED="false"), tmp_path / "refused.log")
    assert refused.wait_exit() != 0
    assert "service: error:" in refused.tail()
    assert "records no documents" in refused.tail()
    again = _run("service.tools.backup", "restore", str(backup), data_dir=target)
    assert again.returncode == 2
    assert "is not empty" in again.stderr
    forced = _run("service.tools.backup", "restore", "--force", str(backup), data_dir=target)
    assert forced.returncode == 0, forced.stderr
    with (
        service_process(env_for(target, GC_ENABLED="false"), tmp_path / "target.log") as service,
        service.client() as http,
    ):
        assert _served(http) == set(DOCUMENTS)
