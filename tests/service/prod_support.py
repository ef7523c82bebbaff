"""Fixtures for the production-feature tests: the real app (real embedder, local Qdrant, SQLite unless a test
passes DATABASE_URL) with API keys for two tenants. Import the fixtures a module uses from here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app.core.config import Settings
from service.app.main import create_app

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
API_KEYS = f"{KEY_A}:tenant-a,{KEY_B}:tenant-b"

MakeClient = Callable[..., AbstractContextManager[TestClient]]


def production_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings confined to tmp_path with auth on (two tenants), no rate limits, in-process cache and jobs."""
    values: dict[str, Any] = {
        "environment": "test",
        "data_dir": tmp_path,
        "database_url": f"sqlite:///{(tmp_path / 'registry.db').as_posix()}",
        "qdrant_url": None,
        "qdrant_path": tmp_path / "qdrant",
        "redis_url": None,
        "api_keys": API_KEYS,
        "rate_limit_enabled": False,
        "log_json": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_client(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> MakeClient:
    """`with make_client(**setting_overrides) as client:` a started app (lifespan run) sharing the real embedder."""

    @contextmanager
    def factory(**overrides: Any) -> Iterator[TestClient]:
        settings = production_settings(tmp_path_factory.mktemp("app"), **overrides)
        with TestClient(create_app(settings, embedder=embedder)) as client:
            yield client

    return factory


@pytest.fixture
def client(make_client: MakeClient) -> Iterator[TestClient]:
    with make_client() as started:
        yield started


@pytest.fixture
def headers_a() -> dict[str, str]:
    return bearer(KEY_A)


@pytest.fixture
def headers_b() -> dict[str, str]:
    return bearer(KEY_B)


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
