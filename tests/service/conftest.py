"""Fixtures for the service tests: real Postgres and Redis (throwaway servers unless DATABASE_URL/REDIS_URL given)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.servers import postgres_server, redis_server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL to a real, empty-at-start Postgres database."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A URL to a real Redis server."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    with redis_server() as url:
        yield url
