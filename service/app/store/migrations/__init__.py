"""Alembic migrations of the document registry, applied in code by `DocumentRegistry.migrate()`."""
