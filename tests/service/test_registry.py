"""Document registry on SQLite and on a real Postgres: migrations, compare-and-set writes, data_version, paging."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from service.app.core.errors import Conflict, InvalidInput, ServiceUnavailable
from service.app.store.registry import (
    SCHEMA_HEAD,
    DocumentRegistry,
    alembic_config,
    decode_cursor,
    encode_cursor,
)
from tests.service.support import migrated_registry


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DocumentRegistry]:
    """A migrated registry on a fresh database of each backend."""
    with migrated_registry(request, tmp_path_factory, "h2_test_registry") as registry:
        yield registry


@pytest.fixture
def tenant() -> str:
    """A tenant no other test writes to."""
    return f"t-{uuid.uuid4().hex[:12]}"


def write(
    registry: DocumentRegistry, tenant: str, document_id: str, *, expected: int | None, version: int
) -> None:
    registry.activate(
        tenant,
        document_id,
        expected_version=expected,
        version=version,
        content_hash=f"hash-{version}",
        metadata={"lang": "en", "tags": ["a", "b"], "year": 2024, "draft": False},
        content_type="text/plain",
        chunk_count=version,
    )


def migration_head() -> str:
    """The newest shipped migration (what start-up must have applied)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_migrations_create_the_schema_and_are_idempotent(registry: DocumentRegistry) -> None:
    registry.migrate()
    inspector = sa.inspect(registry.engine)
    assert {"documents", "document_sources", "tenants", "alembic_version"} <= set(inspector.get_table_names())
    assert {c["name"] for c in inspector.get_columns("documents")} == {
        "tenant_id", "document_id", "version", "content_hash", "metadata", "content_type",
        "chunk_count", "created_at", "updated_at",
    }  # fmt: skip
    assert inspector.get_pk_constraint("documents")["constrained_columns"] == ["tenant_id", "document_id"]
    with registry.engine.connect() as connection:
        assert (
            connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            == migration_head()
        )


def test_schema_head_names_the_newest_migration() -> None:
    # migrate() leaves Alembic out when the database records SCHEMA_HEAD: a migration shipped without updating it
    # would never be applied to an existing database.
    assert migration_head() == SCHEMA_HEAD


def test_a_database_at_head_is_checked_without_loading_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    first = DocumentRegistry(url)
    assert first.schema_revision() is None
    first.migrate()
    first.close()
    # A fresh process, as at every start-up: migrate() on a database at head must not import Alembic.
    probe = (
        "import sys; from service.app.store.registry import DocumentRegistry; r = DocumentRegistry(sys.argv[1]); "
        "r.migrate(); print(r.schema_revision(), 'alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, url], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [SCHEMA_HEAD, "False"]


def test_activate_creates_then_replaces_with_compare_and_set(registry: DocumentRegistry, tenant: str) -> None:
    assert registry.get(tenant, "doc") is None
    write(registry, tenant, "doc", expected=None, version=1)
    created = registry.get(tenant, "doc")
    assert created is not None
    assert created.version == 1
    assert created.chunk_count == 1
    assert created.metadata == {"lang": "en", "tags": ["a", "b"], "year": 2024, "draft": False}
    assert created.created_at.tzinfo is not None

    write(registry, tenant, "doc", expected=1, version=5)
    updated = registry.get(tenant, "doc")
    assert updated is not None
    assert updated.version == 5
    assert updated.content_hash == "hash-5"
    assert updated.created_at == created.created_at
    assert updated.updated_at >= created.updated_at


def test_a_writer_that_lost_the_race_gets_conflict_and_changes_nothing(
    registry: DocumentRegistry, tenant: str
) -> None:
    write(registry, tenant, "doc", expected=None, version=1)
    before = registry.data_version(tenant)
    with pytest.raises(Conflict):
        write(registry, tenant, "doc", expected=None, version=2)  # someone created it meanwhile
    with pytest.raises(Conflict):
        write(registry, tenant, "doc", expected=7, version=8)  # stale expectation
    record = registry.get(tenant, "doc")
    assert record is not None
    assert record.version == 1
    assert registry.data_version(tenant) == before


def test_data_version_is_bumped_by_every_write_and_delete_of_the_tenant_only(
    registry: DocumentRegistry, tenant: str
) -> None:
    other = tenant + "-other"
    assert registry.data_version(tenant) == 0
    seen = []
    write(registry, tenant, "a", expected=None, version=1)
    seen.append(registry.data_version(tenant))
    write(registry, tenant, "a", expected=1, version=2)
    seen.append(registry.data_version(tenant))
    write(registry, tenant, "b", expected=None, version=1)
    seen.append(registry.data_version(tenant))
    assert registry.delete(tenant, "a") is not None
    seen.append(registry.data_version(tenant))
    assert seen == sorted(set(seen)), seen  # every write and delete moved it forward
    assert seen[0] > 0
    assert registry.delete(tenant, "a") is None
    assert registry.data_version(tenant) == seen[-1]
    assert registry.data_version(other) == 0


def test_data_version_after_a_restore_never_comes_back_to_a_value_cached_before_it(
    registry: DocumentRegistry, tenant: str
) -> None:
    # A registry restored under running API processes rolls the versions back; with +1 bumps the writes after it
    # reached the versions those processes had cached with other contents, so rag_documents kept the old count
    # (and the search cache its old answers) until the tenant's next write.
    write(registry, tenant, "a", expected=None, version=1)
    write(registry, tenant, "b", expected=None, version=1)
    backup = registry.data_version(tenant)
    cached: dict[str, tuple[int, int]] = dict(registry.document_counts({}))
    write(registry, tenant, "c", expected=None, version=1)  # after the backup
    cached = registry.document_counts(cached)
    assert cached[tenant][1] == 3
    assert registry.delete(tenant, "c") is not None  # ... restored: back to the backup's documents
    _set_data_version(registry, tenant, backup)  # and its version
    assert registry.delete(tenant, "b") is not None  # a write after the restore
    assert registry.document_counts(cached)[tenant][1] == 1
    assert registry.data_version(tenant) != cached[tenant][0]


def _set_data_version(registry: DocumentRegistry, tenant: str, value: int) -> None:
    import sqlalchemy as sa

    from service.app.store.registry import tenants

    with registry.engine.begin() as connection:
        connection.execute(sa.update(tenants).where(tenants.c.tenant_id == tenant).values(data_version=value))


def test_tenants_are_isolated(registry: DocumentRegistry, tenant: str) -> None:
    other = tenant + "-other"
    write(registry, tenant, "same-id", expected=None, version=1)
    write(registry, other, "same-id", expected=None, version=9)
    assert registry.get(tenant, "same-id").version == 1  # type: ignore[union-attr]
    assert registry.get(other, "same-id").version == 9  # type: ignore[union-attr]
    assert registry.active_versions(tenant, ["same-id", "missing"]) == {"same-id": 1}
    registry.delete(other, "same-id")
    assert registry.get(tenant, "same-id") is not None


def test_list_pages_through_every_document_in_id_order(registry: DocumentRegistry, tenant: str) -> None:
    ids = [f"doc-{i:03d}" for i in range(23)]
    for document_id in reversed(ids):
        write(registry, tenant, document_id, expected=None, version=1)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = registry.list(tenant, cursor=cursor, limit=10)
        seen += [record.document_id for record in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    assert pages == 3
    exact = registry.list(tenant, limit=23)
    assert len(exact.items) == 23
    assert exact.next_cursor is None


def test_list_rejects_bad_limits_and_cursors(registry: DocumentRegistry, tenant: str) -> None:
    for limit in (0, 101):
        with pytest.raises(InvalidInput):
            registry.list(tenant, limit=limit)
    for cursor in ("not-base64!!", encode_cursor("x")[:-3] + "###", "eyJub3BlIjogMX0"):
        with pytest.raises(InvalidInput):
            registry.list(tenant, cursor=cursor, limit=5)
    assert decode_cursor(encode_cursor("doc:1/ü")) == "doc:1/ü"


def test_an_unreachable_database_is_service_unavailable() -> None:
    registry = DocumentRegistry("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(ServiceUnavailable, match="registry unavailable"):
        registry.get("t", "d")
    registry.close()


def test_the_active_version_keeps_its_source_text(registry: DocumentRegistry, tenant: str) -> None:
    registry.activate(
        tenant, "doc", expected_version=None, version=1, content_hash="h1", metadata={},
        content_type="text/plain", chunk_count=1, text="first text",
    )  # fmt: skip
    source = registry.source(tenant, "doc")
    assert source is not None
    assert (source.record.version, source.text) == (1, "first text")
    registry.activate(
        tenant, "doc", expected_version=1, version=2, content_hash="h2", metadata={},
        content_type="text/plain", chunk_count=1, text="second text \u00e9\u65e5",
    )  # fmt: skip
    source = registry.source(tenant, "doc")
    assert source is not None
    assert (source.record.version, source.text) == (2, "second text \u00e9\u65e5")
    with registry.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT version FROM document_sources WHERE tenant_id = :t"), {"t": tenant}
        ).all()
    assert [row.version for row in rows] == [2], "a replaced version's text is dropped with it"
    registry.delete(tenant, "doc")
    assert registry.source(tenant, "doc") is None
    with registry.engine.connect() as connection:
        left = connection.execute(
            sa.text("SELECT count(*) FROM document_sources WHERE tenant_id = :t"), {"t": tenant}
        ).scalar()
    assert left == 0


def test_a_lost_compare_and_set_keeps_the_winner_text(registry: DocumentRegistry, tenant: str) -> None:
    registry.activate(
        tenant, "doc", expected_version=None, version=1, content_hash="h1", metadata={},
        content_type="text/plain", chunk_count=1, text="winner",
    )  # fmt: skip
    with pytest.raises(Conflict):
        registry.activate(
            tenant, "doc", expected_version=None, version=2, content_hash="h2", metadata={},
            content_type="text/plain", chunk_count=1, text="loser",
        )  # fmt: skip
    source = registry.source(tenant, "doc")
    assert source is not None
    assert source.text == "winner"


def test_source_pages_cover_every_tenant_and_report_documents_without_text(
    registry: DocumentRegistry, tenant: str
) -> None:
    other = f"{tenant}-b"
    for owner, document_id in [(tenant, "a"), (tenant, "b"), (other, "a")]:
        registry.activate(
            owner, document_id, expected_version=None, version=1, content_hash="h", metadata={},
            content_type="text/plain", chunk_count=1, text=f"{owner}/{document_id}",
        )  # fmt: skip
    write(registry, tenant, "no-text", expected=None, version=1)  # as before migration 0003: no text
    kept: list[tuple[str, str, str]] = []
    missing: list[tuple[str, str]] = []
    after = None
    while True:
        with_text, without = registry.source_page(after, limit=2)
        page = [(s.record.tenant_id, s.record.document_id) for s in with_text]
        page += [(r.tenant_id, r.document_id) for r in without]
        if not page:
            break
        kept += [(s.record.tenant_id, s.record.document_id, s.text) for s in with_text]
        missing += [(r.tenant_id, r.document_id) for r in without]
        after = max(page)
    mine = [entry for entry in kept if entry[0] in (tenant, other)]
    assert mine == [(tenant, "a", f"{tenant}/a"), (tenant, "b", f"{tenant}/b"), (other, "a", f"{other}/a")]
    assert (tenant, "no-text") in missing
    registry.ensure_source(tenant, "no-text", 1, "sent again")
    registry.ensure_source(tenant, "no-text", 1, "not this")  # already kept: unchanged
    registry.ensure_source(tenant, "a", 99, "stale version")  # not the active version: ignored
    assert registry.source(tenant, "no-text").text == "sent again"
    assert registry.source(tenant, "a").text == f"{tenant}/a"


def test_the_document_sources_migration_keeps_existing_documents(tmp_path: pytest.TempPathFactory) -> None:
    from alembic import command

    from service.app.store.registry import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url=url), "0002_jobs")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO documents VALUES ('t', 'd', 5, 'h', '{}', 'text/plain', 1, "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    engine.dispose()
    registry = DocumentRegistry(url)
    registry.migrate()
    assert registry.get("t", "d").version == 5
    assert registry.source("t", "d") is None
    assert registry.source_page() == ([], [registry.get("t", "d")])
    registry.close()
