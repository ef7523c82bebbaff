"""Fixtures for the production-feature tests (load with `pytest_plugins = ["tests.service.prod_fixtures"]`):
the real app (real embedder, local Qdrant, SQLite unless overridden) with API keys for two tenants."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app.main import create_app
from tests.service.prod_support import KEY_A, KEY_B, MakeClient, bearer, production_settings
from tests.service.support import FailingEmbedder


@pytest.fixture
def make_client(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> MakeClient:
    """`with make_client(**setting_overrides) as client:` a started app (lifespan run) sharing the real embedder."""

    @contextmanager
    def factory(**overrides: Any) -> Iterator[TestClient]:
        settings = production_settings(tmp_path_factory.mktemp("app"), **overrides)
        with TestClient(create_app(settings, embedder=FailingEmbedder(embedder))) as client:
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
