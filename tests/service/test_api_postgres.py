"""The same API on a real Postgres registry (migrated at start-up): create, update, search, list, delete."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient

from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import alembic_config
from tests.service.support import create_database, long_text, make_settings, running_app, services_of


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, embedder: FastEmbedEmbedder, postgres_url: str
) -> Iterator[TestClient]:
    """An app whose registry is a fresh Postgres database."""
    database_url = create_database(postgres_url, "h2_test_api")
    settings = make_settings(tmp_path_factory.mktemp("pg-api"), database_url=database_url, chunk_size=48)
    with running_app(settings, embedder=embedder) as client:
        yield client


def migration_head() -> str:
    """The newest shipped migration (what start-up must have applied)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_start_up_migrates_the_postgres_registry(client: TestClient) -> None:
    registry = services_of(client).registry
    assert registry.dialect == "postgresql"
    with registry.engine.connect() as connection:
        assert (
            connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            == migration_head()
        )


def test_document_lifecycle_on_postgres(client: TestClient) -> None:
    created = client.put(
        "/v1/documents/pg-doc", json={"text": long_text("ALPHA", 2), "metadata": {"db": "pg"}}
    )
    assert created.status_code == 201
    assert (
        client.put(
            "/v1/documents/pg-doc", json={"text": long_text("ALPHA", 2), "metadata": {"db": "pg"}}
        ).json()["status"]
        == "unchanged"
    )
    updated = client.put(
        "/v1/documents/pg-doc", json={"text": long_text("BRAVO", 1), "metadata": {"db": "pg"}}
    )
    assert updated.json()["status"] == "updated"

    results = client.post(
        "/v1/search", json={"query": "river ecology", "top_k": 50, "filter": {"db": "pg"}}
    ).json()["results"]
    assert sorted(r["chunk_index"] for r in results) == list(range(updated.json()["chunks"]))
    assert all("BRAVO" in r["text"] for r in results)

    listed = client.get("/v1/documents").json()
    assert [d["document_id"] for d in listed["documents"]] == ["pg-doc"]
    assert listed["documents"][0]["metadata"] == {"db": "pg"}
    assert services_of(client).registry.data_version("default") > 0

    assert client.delete("/v1/documents/pg-doc").status_code == 204
    assert client.get("/v1/documents/pg-doc").status_code == 404
    assert client.post("/v1/search", json={"query": "river ecology"}).json()["results"] == []
