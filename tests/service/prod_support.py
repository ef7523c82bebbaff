"""Helpers for the production-feature tests: settings with API keys for two tenants, bearer headers, a fresh
Postgres database. The fixtures built on them live in tests/service/prod_fixtures.py."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.app.core.config import Settings
from tests.service.support import confined_to

KEY_A = "key-a-0123456789abcdef0123456789abcdef"
KEY_B = "key-b-fedcba9876543210fedcba9876543210"
API_KEYS = f"{KEY_A}:tenant-a,{KEY_B}:tenant-b"

MakeClient = Callable[..., AbstractContextManager[TestClient]]


def production_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings confined to tmp_path with auth on (two tenants), no rate limits, in-process cache and jobs."""
    values: dict[str, Any] = {
        **confined_to(tmp_path),
        "api_keys": API_KEYS,
        "rate_limit_enabled": False,
        "log_json": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def fresh_database(server_url: str, name: str) -> str:
    """A new, empty database on the Postgres server of `server_url`; returns its SQLAlchemy URL."""
    import sqlalchemy as sa

    url = sa.make_url(server_url)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)
