"""`python -m service.reconcile --dry-run` changes nothing, and says so up front when it cannot:

- a PostgreSQL registry (opened in place, not copied) was migrated by the dry run's open; a dry run on one whose
  schema is behind this release's is now refused in one line and leaves it at its revision, and on one at this
  release's schema it runs and leaves every table as it was (a real Postgres);
- on the embedded store the dry run works on a copy in TMPDIR: without room for it there, it is refused before
  anything is copied (it used to fail part-way, or fill the disk TMPDIR shares with others).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from alembic import command

from service.app.store.registry import SCHEMA_HEAD, DocumentRegistry, alembic_config, metadata_obj
from tests.service.prod_support import API_KEYS, KEY_A, bearer
from tests.service.support import create_database
from tests.support.processes import _stop, start_api

REPO_ROOT = Path(__file__).resolve().parents[2]
BEHIND = "0010_write_order_prune"  # the revision before SCHEMA_HEAD


def run_reconcile(data: Path, tmpdir: Path, *args: str, code: str | None = None, **extra: str) -> Any:
    """The command as an operator runs it (``code``: instead, this Python, which then calls its main)."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "QDRANT_URL", "REDIS_URL")},
        "ENVIRONMENT": "test",
        "DATA_DIR": str(data),
        "VECTOR_STORE": "edge",
        "GC_ENABLED": "false",
        "LOG_JSON": "true",
        "TMPDIR": str(tmpdir),
        "API_KEYS": API_KEYS,
        **extra,
    }
    command_line = ["-m", "service.reconcile"] if code is None else ["-c", code]
    return subprocess.run(
        [sys.executable, *command_line, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def revision(url: str) -> str | None:
    registry = DocumentRegistry(url)
    try:
        return registry.schema_revision()
    finally:
        registry.close()


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every registry table (and the schema revision), in a stable order."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            tables = {
                table.name: sorted(
                    (tuple(str(value) for value in row) for row in connection.execute(sa.select(table))),
                )
                for table in metadata_obj.sorted_tables
            }
            tables["alembic_version"] = [
                tuple(row) for row in connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            ]
    finally:
        engine.dispose()
    return tables


def test_a_dry_run_leaves_a_postgres_registry_unmigrated_and_unchanged(
    postgres_url: str, tmp_path: Path
) -> None:
    url = create_database(postgres_url, "reconcile_dry_run")
    data = tmp_path / "data"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # A registry the service of the previous release made: one revision behind this release's head.
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), BEHIND)
    finally:
        engine.dispose()

    behind = run_reconcile(data, scratch, "--dry-run", DATABASE_URL=url)

    assert behind.returncode == 2, behind.stdout + behind.stderr[-3000:]
    assert "Traceback" not in behind.stderr, behind.stderr
    # (The test server runs with synchronous_commit=off: the registry's JSON warning about it may come first.)
    (line,) = [line for line in behind.stderr.splitlines() if not line.startswith("{")]
    assert line.startswith("reconcile: error: "), line
    for needle in (BEHIND, SCHEMA_HEAD, "would migrate it", "reconcile_dry_run"):
        assert needle in line, line
    assert revision(url) == BEHIND  # it used to be migrated to SCHEMA_HEAD here
    assert not any(scratch.iterdir())

    # At this release's schema, with a document the real service wrote: the dry run reports, and not one row of
    # any table changes.
    started = start_api(tmp_path, data_dir=str(data), database_url=url, api_keys=API_KEYS, environment="test")
    try:
        put = httpx.put(
            f"{started.url}/v1/documents/d1", json={"text": "one text"}, headers=bearer(KEY_A), timeout=60
        )
        assert put.status_code == 201, put.text
    finally:
        _stop(started.proc)
    before = dump(url)
    assert before["alembic_version"] == [(SCHEMA_HEAD,)]

    at_head = run_reconcile(data, scratch, "--dry-run", DATABASE_URL=url)

    assert at_head.returncode == 0, at_head.stdout + at_head.stderr[-3000:]
    report = json.loads(at_head.stdout)
    assert report["dry_run"] is True
    assert report["consistent"] is True
    assert dump(url) == before
    assert not any(scratch.iterdir())


# The command with the free space it reads for TMPDIR replaced: no test filesystem can be made small here.
WITH_FREE_BYTES = """
import sys
import service.reconcile as cli
cli.free_bytes = lambda directory: {free}
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_dry_run_without_room_in_tmpdir_for_its_copy_is_refused_before_copying(tmp_path: Path) -> None:
    data = tmp_path / "data"
    started = start_api(tmp_path, data_dir=str(data), api_keys=API_KEYS, environment="test")
    try:
        for index in range(3):
            put = httpx.put(
                f"{started.url}/v1/documents/d{index}",
                json={"text": f"text number {index}"},
                headers=bearer(KEY_A),
                timeout=60,
            )
            assert put.status_code == 201, put.text
    finally:
        _stop(started.proc)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    store = sum(p.stat().st_blocks * 512 for p in (data / "edge").rglob("*") if p.is_file())

    refused = run_reconcile(data, scratch, "--dry-run", code=WITH_FREE_BYTES.format(free=store // 2))

    assert refused.returncode == 2, refused.stdout + refused.stderr[-3000:]
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("reconcile: error: "), line
    for needle in ("TMPDIR", str(scratch), f"{store // 2 / 2**20:.0f} MiB free", str(data / "edge")):
        assert needle in line, line
    assert not any(scratch.iterdir())  # nothing was copied

    # With the room it needs, the same dry run runs (and leaves TMPDIR as it found it).
    ran = run_reconcile(data, scratch, "--dry-run", code=WITH_FREE_BYTES.format(free=store + 2**30))
    assert ran.returncode == 0, ran.stdout + ran.stderr[-3000:]
    assert json.loads(ran.stdout)["dry_run"] is True
    assert not any(scratch.iterdir())
