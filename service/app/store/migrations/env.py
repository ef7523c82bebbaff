"""Alembic environment for the registry: runs on the connection the service passes in, or on sqlalchemy.url.

There is no alembic.ini: `service.app.store.registry.alembic_config()` builds the Config in code. On Postgres
an advisory lock serialises concurrent start-ups (several replicas or workers migrating at once). Each revision
applied records its declared ``compatible_from`` in ``schema_compat`` in its own transaction step (the contract:
migrations/versions/0011_schema_compat.py), so a release that meets the database ahead of it can decide.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy.engine import Connection

from service.app.store.registry import metadata_obj, schema_compat

# Arbitrary constant key for pg_advisory_xact_lock ("rag" registry migrations).
MIGRATION_LOCK_KEY = 727_165_001


def record_compatibility(*, ctx: MigrationContext, step: MigrationInfo, **_: object) -> None:
    """After each upgrade step: write the revision's ``compatible_from`` into ``schema_compat`` (from 0011 on)."""
    if not step.is_upgrade or step.up_revision_id is None:
        return
    script = context.script.get_revision(step.up_revision_id)
    compatible_from = getattr(script.module, "compatible_from", None) if script is not None else None
    if compatible_from is None:
        raise RuntimeError(
            f"migration {step.up_revision_id} declares no compatible_from (see 0011_schema_compat)"
        )
    connection = ctx.connection
    if connection is None or not sa.inspect(connection).has_table(schema_compat.name):
        return  # a revision before 0011: its row is written by 0011
    connection.execute(schema_compat.delete().where(schema_compat.c.revision == step.up_revision_id))
    connection.execute(
        schema_compat.insert().values(
            revision=step.up_revision_id, compatible_from=compatible_from, applied_at=datetime.now(UTC)
        )
    )


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=metadata_obj,
        render_as_batch=connection.dialect.name == "sqlite",
        on_version_apply=record_compatibility,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata_obj,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
