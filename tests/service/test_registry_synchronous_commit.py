"""WRITE_DURABILITY=power_loss on a Postgres that runs ``synchronous_commit=off``: the registry's own connections
turn it back on (a COMMIT that returned is flushed), and process_crash keeps the server's setting. The throwaway
Postgres of the tests runs with ``synchronous_commit=off`` (tests/support/servers.py), as a tuned bulk-load server
would; the role-level case is what a managed database's operator sets with ALTER ROLE."""

from __future__ import annotations

import logging

import psycopg
import pytest
import sqlalchemy as sa

from service.app.store import registry as registry_module
from service.app.store.registry import DocumentRegistry


def _setting(registry: DocumentRegistry) -> str:
    with registry.engine.connect() as connection:
        return connection.execute(sa.text("SHOW synchronous_commit")).scalar_one()


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_warned_async_commit", [])


@pytest.mark.parametrize(
    ("durable", "expected"), [(True, "on"), (False, "off")], ids=["power_loss", "process_crash"]
)
def test_the_registry_never_commits_asynchronously_when_durable(
    postgres_url: str, durable: bool, expected: str, fresh_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    server = psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    with server:
        assert server.execute("SHOW synchronous_commit").fetchone() == ("off",)  # the server's own setting
    caplog.set_level(logging.WARNING, logger=registry_module.__name__)
    registry = DocumentRegistry(postgres_url, durable=durable)
    try:
        # Every pooled connection, not only the first: two held at once are two connections.
        with registry.engine.connect() as one, registry.engine.connect() as two:
            seen = {c.execute(sa.text("SHOW synchronous_commit")).scalar_one() for c in (one, two)}
            one.rollback()
            two.rollback()
        assert seen == {expected}
        assert _setting(registry) == expected  # after the pool's reset (a rollback) on return
        warned = [r for r in caplog.records if "synchronous_commit=off" in r.getMessage()]
        assert len(warned) == (1 if durable else 0)
    finally:
        registry.engine.dispose()


def test_a_stronger_server_setting_is_kept(postgres_url: str, fresh_warning: None) -> None:
    """remote_apply (or local, remote_write) already flushes locally: the registry does not lower it to on."""
    admin = psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    with admin:
        database = admin.execute("SELECT current_database()").fetchone()[0]
        admin.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = remote_apply')
    try:
        registry = DocumentRegistry(postgres_url, durable=True)
        try:
            assert _setting(registry) == "remote_apply"
        finally:
            registry.engine.dispose()
    finally:
        with psycopg.connect(
            postgres_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        ) as c:
            c.execute(f'ALTER DATABASE "{database}" RESET synchronous_commit')
