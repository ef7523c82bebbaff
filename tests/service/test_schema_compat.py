"""The schema compatibility contract across a real rollback boundary (EYES_OPS3 O5).

A newer release migrates the registry with its migration directory (today's scripts plus a migration of its own,
run through Alembic and env.py exactly as its start-up would); then THIS release's real ``open_registry`` opens
that database, as a rolled-back pod would: it starts when the newer revision declares this release compatible
and refuses, naming both revisions and changing nothing, when it does not. A release from before the contract
(the migration directory without 0011) refuses any database at 0011, which is the cutover docs/delivery.md states.
"""

from __future__ import annotations

import ast
import logging
import shutil
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from service.app.store import registry as registry_mod
from service.app.store.registry import (
    MIGRATIONS_DIR,
    SCHEMA_COMPATIBLE_FROM,
    SCHEMA_HEAD,
    DocumentRegistry,
    RegistryOpenError,
    open_registry,
    schema_sequence,
)
from tests.service.support import create_database

NEXT = "0012_release_notes"
NEXT_MIGRATION = '''"""A later release's migration (test): a new table.

Revision ID: {revision}
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None
compatible_from = "{compatible_from}"


def upgrade() -> None:
    op.create_table("release_notes", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("release_notes")
'''


def declared() -> dict[str, dict[str, str]]:
    """Every shipped migration's revision, down_revision and compatible_from, read from its file."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        values = {}
        for node in ast.parse(path.read_text()).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            if isinstance(target, ast.Name) and target.id in {"revision", "down_revision", "compatible_from"}:
                values[target.id] = ast.literal_eval(node.value)
        found[values["revision"]] = values
    return found


def test_every_migration_declares_its_compatibility_in_a_linear_numbered_chain() -> None:
    migrations = declared()
    chain = [s.revision for s in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions("base", "heads")][::-1]
    assert chain[-1] == SCHEMA_HEAD
    for position, revision in enumerate(chain, start=1):
        entry = migrations[revision]
        # Releases order a revision they do not ship by its number: ids must carry their place in the chain.
        assert schema_sequence(revision) == position, revision
        oldest = entry.get("compatible_from")
        assert oldest in chain[:position], (
            f"{revision}: compatible_from {oldest!r} is not itself or an earlier one"
        )
        if position > 1:  # a schema cannot admit a release its predecessor's schema did not
            previous = migrations[chain[position - 2]]["compatible_from"]
            assert schema_sequence(oldest) >= schema_sequence(previous), revision
    assert migrations[SCHEMA_HEAD]["compatible_from"] == SCHEMA_COMPATIBLE_FROM  # the image label's value
    # 0011 records the classification of the earlier ones: the same values their files declare.
    earlier = ast.parse((MIGRATIONS_DIR / "versions" / "0011_schema_compat.py").read_text())
    recorded = next(
        ast.literal_eval(n.value)
        for n in earlier.body
        if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "EARLIER"
    )
    assert recorded == {r: m["compatible_from"] for r, m in migrations.items() if r != "0011_schema_compat"}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return create_database(
        request.getfixturevalue("postgres_url"), f"schema_compat_{zlib.crc32(request.node.nodeid.encode())}"
    )


def release_with(tmp_path: Path, name: str, *, drop: str | None = None, extra: str | None = None) -> Path:
    """A release's migration directory: today's scripts, without ``drop``, plus ``extra`` (a migration file)."""
    scripts = tmp_path / name
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    if drop is not None:
        (scripts / "versions" / f"{drop}.py").unlink()
    if extra is not None:
        (scripts / "versions" / f"{NEXT}.py").write_text(extra)
    return scripts


def start_release(url: str, scripts: Path) -> None:
    """What a release's start-up does to the database: ``alembic upgrade head`` with its own scripts."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(scripts))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def snapshot(url: str) -> tuple[object, ...]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return (
                connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar(),
                sorted(sa.inspect(connection).get_table_names()),
                connection.execute(sa.text("SELECT count(*) FROM schema_compat")).scalar(),
            )
    finally:
        engine.dispose()


def test_a_fresh_database_records_the_compatibility_of_every_revision(database: str) -> None:
    registry = open_registry(database)
    try:
        with registry.engine.connect() as connection:
            rows = dict(
                connection.execute(sa.text("SELECT revision, compatible_from FROM schema_compat")).all()
            )
            applied = connection.execute(
                sa.text("SELECT applied_at FROM schema_compat WHERE revision = :r"), {"r": SCHEMA_HEAD}
            ).scalar()
    finally:
        registry.close()
    assert rows == {r: m["compatible_from"] for r, m in declared().items()}
    assert applied is not None  # written by env.py in the migration's own step


def test_this_release_runs_on_a_newer_schema_declared_compatible_with_it(
    database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    newer = release_with(
        tmp_path,
        "newer",
        extra=NEXT_MIGRATION.format(revision=NEXT, down=SCHEMA_HEAD, compatible_from=SCHEMA_HEAD),
    )
    first = open_registry(database)  # this release deployed
    first.activate(
        "t", "kept", expected_version=None, version=1, content_hash="h", metadata={}, content_type="text/plain",
        chunk_count=1,
    )  # fmt: skip
    first.close()
    start_release(database, newer)  # the next release migrated it
    before = snapshot(database)
    assert before[0] == NEXT

    with caplog.at_level(logging.WARNING, logger=registry_mod.__name__):
        rolled_back = open_registry(database)  # the rollback: this release starts on the newer schema
    try:
        assert rolled_back.schema_ahead == (NEXT, SCHEMA_HEAD)
        assert f"is at schema {NEXT}, ahead of this release's {SCHEMA_HEAD}" in caplog.text
        kept = rolled_back.get("t", "kept")
        assert kept is not None
        assert kept.version == 1  # it serves what the newer release left
        rolled_back.activate(
            "t", "kept", expected_version=1, version=2, content_hash="h2", metadata={}, content_type="text/plain",
            chunk_count=1,
        )  # fmt: skip
        assert rolled_back.get("t", "kept").version == 2  # and writes
    finally:
        rolled_back.close()
    assert snapshot(database) == before  # nothing migrated back or stamped

    start_release(database, newer)  # forward again: the newer release finds its own head
    assert snapshot(database) == before


@pytest.mark.parametrize("recorded", ["itself", "no row"])
def test_this_release_refuses_a_newer_schema_not_declared_compatible(
    database: str, tmp_path: Path, recorded: str
) -> None:
    newer = release_with(
        tmp_path, "newer", extra=NEXT_MIGRATION.format(revision=NEXT, down=SCHEMA_HEAD, compatible_from=NEXT)
    )
    start_release(database, newer)
    if recorded == "no row":  # a revision whose row is missing is treated as compatible with nothing older
        engine = sa.create_engine(database)
        with engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM schema_compat WHERE revision = :r"), {"r": NEXT})
        engine.dispose()
    before = snapshot(database)

    with pytest.raises(RegistryOpenError) as refused:
        open_registry(database)

    message = str(refused.value)
    assert (
        f"is at schema {NEXT}, written by a newer version (this release's schema is {SCHEMA_HEAD})" in message
    )
    if recorded == "itself":
        assert f"only be run by releases at schema {NEXT} or newer" in message
    else:
        assert "records no compatibility" in message
    assert "fix forward" in message
    if database.startswith("sqlite"):
        # make serve's registry: its own backup tool, run from the newer release (EYES9 L3), not a cluster rollback.
        assert "`python -m service.tools.backup restore --force <backup>`" in message
        assert "'Backing up and restoring the embedded store'" in message
        assert "Rolling back a release" not in message
    else:
        assert "restore the registry from a backup" in message
        assert "'Rolling back a release'" in message
    assert snapshot(database) == before


def test_a_release_from_before_the_contract_cannot_run_on_it(database: str, tmp_path: Path) -> None:
    # The cutover, reproduced as EYES_OPS3 O5 did: the previous release's start-up (Alembic with its scripts,
    # which end at 0010) on a registry this release migrated. It refuses whatever 0011 records: it has no code
    # that reads the record. `ragops rollback` refuses that target up front (its image has no schema label).
    open_registry(database).close()
    before = snapshot(database)
    with pytest.raises(CommandError, match=f"Can't locate revision identified by '{SCHEMA_HEAD}'"):
        start_release(database, release_with(tmp_path, "previous", drop=SCHEMA_HEAD))
    assert snapshot(database) == before


def test_an_older_schema_is_still_migrated_forward(database: str, tmp_path: Path) -> None:
    start_release(database, release_with(tmp_path, "previous", drop=SCHEMA_HEAD))  # the release before: 0010
    registry: DocumentRegistry = open_registry(database)
    try:
        assert registry.schema_ahead is None
        assert registry.schema_revision() == SCHEMA_HEAD
        assert registry.schema_compatible_from(SCHEMA_HEAD) == SCHEMA_COMPATIBLE_FROM
    finally:
        registry.close()
