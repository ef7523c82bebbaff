"""An operator's choice of the served index (a rollback, a manual re-index) survives pod starts: the index pointer
records who chose it and against which deployed settings, and a start-up re-indexes towards its settings only
when they changed since (service.app.jobs.reindex.startup_decision).

Across processes: real `python -m service` processes over one data directory, stopped and started as a rollout,
a restart or a scale-out would; in one process: several replicas starting together, a rollback made while a
replica waits for another one's build, and the 0009 migration of a pointer written before it (SQLite and
Postgres).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from infra.workflows import reindex as reindex_mod
from service import reindex as service_reindex
from service.app.ingest.index import IndexConfig
from service.app.jobs.reindex import startup_decision
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import DocumentRegistry, IndexPointer, index_pointer
from tests.service.service_process import wait_for
from tests.service.support import create_database, make_settings, running_app, services_of
from tests.support.processes import ApiProcess, start_api
from tests.support.servers import _stop
from tests.workflows.test_reindex import ADMIN, DOCS, KEY

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
A = IndexConfig(MODEL, 200, 32)
B = IndexConfig(MODEL, 128, 16)
C = IndexConfig(MODEL, 96, 16)
WAIT_SECONDS = 180.0  # bounds a condition that never comes true; not a timing assertion


def _settings(config: IndexConfig) -> dict[str, Any]:
    return {"model": config.model, "chunk_size": config.chunk_size, "chunk_overlap": config.chunk_overlap}


def _pointer(
    served: IndexConfig, *, chosen_by: str = "config", pinned: IndexConfig | None = None, previous=None
) -> IndexPointer:
    return IndexPointer(
        "served",
        served.as_dict(),
        "previous" if previous else None,
        previous.as_dict() if previous else None,
        chosen_by=chosen_by,
        pinned_settings=_settings(pinned) if pinned else None,
    )


# --- the decision --------------------------------------------------------------------------------------------


def test_a_config_chosen_index_follows_the_settings() -> None:
    assert not startup_decision(_pointer(A), A, A).reindex
    assert startup_decision(_pointer(A), A, B).reindex
    assert startup_decision(None, A, B).reindex
    assert startup_decision(_pointer(A), A, A, needs_sparse=True).reindex


def test_an_operators_choice_holds_until_the_deployed_settings_change() -> None:
    rolled_back = _pointer(A, chosen_by="rollback", pinned=B, previous=B)
    held = startup_decision(rolled_back, A, B)  # a restart, a scale-out: the settings it was rolled back from
    assert not held.reindex
    assert "rollback" in held.reason
    assert "not re-indexing" in held.reason
    moved = startup_decision(rolled_back, A, C)  # the stack's settings changed since
    assert moved.reindex
    assert "changed" in moved.reason
    adopted = startup_decision(rolled_back, A, A)  # the stack now deploys what the operator chose
    assert not adopted.reindex
    assert adopted.follow_settings

    manual = _pointer(C, chosen_by="manual", pinned=A, previous=A)
    assert not startup_decision(manual, C, A).reindex
    assert startup_decision(manual, C, B).reindex


def test_a_pod_with_the_settings_the_served_index_replaced_does_not_build_them_back() -> None:
    # A rollout moved the index A -> B; a pod of the old release (A) starting mid-rollout must not move all back.
    decision = startup_decision(_pointer(B, previous=A), B, A)
    assert not decision.reindex
    assert "ragops up" in decision.reason
    assert "rollback" in decision.reason
    # ... and a pointer written before migration 0009 after a rollback (chosen_by defaults to config) is safe too.
    assert not startup_decision(_pointer(A, previous=B), A, B).reindex


# --- across processes ----------------------------------------------------------------------------------------


@contextmanager
def _api(data: Path, config: IndexConfig, **extra: str) -> Iterator[ApiProcess]:
    settings = {
        "data_dir": str(data),
        "vector_store": "local",
        "api_keys": f'{{"{KEY}": "default"}}',
        "admin_api_key": ADMIN,
        "environment": "development",
        "log_level": "INFO",
        "rate_limit_enabled": "false",
        "chunk_size": str(config.chunk_size),
        "chunk_overlap": str(config.chunk_overlap),
        **extra,
    }
    started = start_api(data, ready_path="/readyz", **settings)
    try:
        yield started
    finally:
        _stop(started.proc)


def _admin(api: ApiProcess, method: str = "GET", path: str = "") -> dict[str, Any]:
    response = httpx.request(
        method,
        f"{api.url}/v1/admin/reindex{path}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=120,
    )
    assert response.status_code < 300, response.text
    return response.json()


def _start(api: ApiProcess, config: IndexConfig) -> dict[str, Any]:
    response = httpx.post(
        f"{api.url}/v1/admin/reindex",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={"chunk_size": config.chunk_size, "chunk_overlap": config.chunk_overlap},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    return response.json()


def _until_served(api: ApiProcess, config: IndexConfig) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status = _admin(api)
        served = status["serving"]
        if (served["chunk_size"], served["chunk_overlap"]) == (
            config.chunk_size,
            config.chunk_overlap,
        ) and status["state"] not in ("waiting", "building", "catching_up", "switching"):
            return status
        assert status["state"] != "failed", status
        assert time.monotonic() < deadline, f"timed out waiting to serve {config}: {status}"
        time.sleep(0.1)


def _chunking(status: dict[str, Any]) -> tuple[int, int]:
    return status["serving"]["chunk_size"], status["serving"]["chunk_overlap"]


def _hits(api: ApiProcess) -> list[str]:
    response = httpx.post(
        f"{api.url}/v1/search",
        json={"query": "sourdough yeast", "top_k": 3},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [hit["document_id"] for hit in response.json()["results"]]


def test_rollback_and_manual_choice_survive_restarts_until_the_settings_change(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # 1. Deployed A. An operator tries B by hand; a restart with A keeps B (before: re-indexed back to A).
    with _api(data, A) as api:
        for document_id, text in DOCS.items():
            response = httpx.put(
                f"{api.url}/v1/documents/{document_id}",
                json={"text": text},
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=60,
            )
            assert response.status_code == 201, response.text
        _start(api, B)
        manual = _until_served(api, B)
        assert manual["chosen_by"] == "manual"
        assert manual["pinned_settings"] == _settings(A)
    with _api(data, A) as api:
        status = _admin(api)
        assert _chunking(status) == (B.chunk_size, B.chunk_overlap)
        assert status["state"] == "idle"
        assert status["chosen_by"] == "manual"
        assert "not re-indexing" in status["startup"]
        assert "bread" in _hits(api)
        assert any("start-up re-index decision: not re-indexing" in line for line in api.log_lines())

    # 2. The stack adopts B: the operator's choice becomes the configuration's, nothing is rebuilt.
    with _api(data, B) as api:
        status = _admin(api)
        assert _chunking(status) == (B.chunk_size, B.chunk_overlap)
        assert status["chosen_by"] == "config"
        assert status["pinned_settings"] is None
        assert status["documents_done"] == 0
        # 3. Rolled back to A while B is deployed: pinned to B.
        rolled = _admin(api, "POST", "/rollback")
        assert rolled["state"] == "rolled_back"
        assert _chunking(_admin(api)) == (A.chunk_size, A.chunk_overlap)
    for _restart in range(2):  # a restart, and another (a scale-out starts the same way)
        with _api(data, B) as api:
            status = _admin(api)
            assert _chunking(status) == (A.chunk_size, A.chunk_overlap), status
            assert status["current"]["chunk_size"] == A.chunk_size
            assert status["chosen_by"] == "rollback"
            assert status["pinned_settings"] == _settings(B)
            assert status["state"] == "idle"
            assert status["documents_done"] == 0
            assert "bread" in _hits(api)
            # `ragops reindex status` and `python -m service.reindex status` say so.
            assert "chosen by an operator (rollback)" in reindex_mod.summary(status)
            assert "pod starts keep it until the stack's settings change" in reindex_mod.summary(status)
            assert "chosen by an operator (rollback)" in service_reindex.summary(status)

    # 4. The stack's settings change: the pin no longer holds, the start-up re-indexes to them.
    with _api(data, C) as api:
        status = _until_served(api, C)
        assert status["chosen_by"] == "config"
        assert status["state"] == "switched"
        assert status["documents_done"] == len(DOCS)
        assert "re-indexing" in status["startup"]
        assert "bread" in _hits(api)


# --- several replicas in one process -------------------------------------------------------------------------


def test_replicas_starting_together_honour_a_rollback_and_a_waiting_one_gives_up(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    database_url = f"sqlite:///{(tmp_path / 'registry.db').as_posix()}"

    def settings(name: str, config: IndexConfig):
        return make_settings(
            tmp_path / name,
            database_url=database_url,
            vector_store="local",
            chunk_size=config.chunk_size,
            chunk_overlap=config.chunk_overlap,
            gc_enabled=False,
            reindex_lease_seconds=0.3,  # polls a held lease every 0.1 s (the holder takes its own for 600)
            index_pointer_ttl_seconds=0,
        )

    with running_app(settings("seed", A), embedder=embedder) as client:
        for document_id, text in DOCS.items():
            assert client.put(f"/v1/documents/{document_id}", json={"text": text}).status_code == 201
        registry = services_of(client).registry
        served = registry.index_pointer()
        # Another replica holds the lease for B's build: a replica deployed with B queues behind it.
        holder = "other-host:1:builder"
        assert registry.acquire_index_lease(holder, "rag_b_target", B.as_dict(), 600).holder == holder
        with running_app(settings("waiting", B), embedder=embedder) as waiting:
            reindexer = services_of(waiting).reindexer
            # Its start-up re-index reports "building" until its thread has found the lease held: wait for that
            # (read at once, a loaded machine could still show "building").
            status = wait_for(
                lambda: (s := reindexer.status()).state == "waiting" and s,
                "the replica to wait for the lease",
            )
            assert status.builder == holder
            # The operator rolls back meanwhile: the pointer now holds A against the deployed B.
            with registry.engine.begin() as connection:
                connection.execute(
                    index_pointer.update().values(chosen_by="rollback", pinned_settings=_settings(B))
                )
            registry.release_index_lease(holder)
            done = reindexer.wait(WAIT_SECONDS)
            assert done.state == "idle", done
            assert "while this replica waited" in reindexer.startup
            assert registry.index_pointer().collection == served.collection
            assert registry.index_lease() is None or registry.index_lease().holder != reindexer.holder
            # Three more replicas with B start at once: none re-indexes, all serve the rolled-back index.
            with (
                running_app(settings("r1", B), embedder=embedder) as r1,
                running_app(settings("r2", B), embedder=embedder) as r2,
                running_app(settings("r3", B), embedder=embedder) as r3,
            ):
                for replica in (r1, r2, r3):
                    status = services_of(replica).reindexer.status()
                    assert status.state == "idle"
                    assert not services_of(replica).reindexer.running()
                    assert status.current["collection"] == served.collection
                    assert status.chosen_by == "rollback"
        assert registry.index_pointer().collection == served.collection


# --- migration -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_choice_migration_keeps_an_existing_pointer_as_the_configurations(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from alembic import command

    from service.app.store.registry import alembic_config

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = create_database(request.getfixturevalue("postgres_url"), "h2_test_pointer_choice")
    command.upgrade(alembic_config(url=url), "0008_write_order")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO index_pointer (name, collection, config, previous_collection, previous_config, "
                "updated_at) VALUES ('default', 'rag_a', :config, 'rag_b', :previous, '2026-01-01 00:00:00')"
            ),
            {"config": _json(A), "previous": _json(B)},
        )
    engine.dispose()
    registry = DocumentRegistry(url)
    registry.migrate()
    try:
        pointer = registry.index_pointer()
        assert (pointer.collection, pointer.previous_collection) == ("rag_a", "rag_b")
        assert pointer.chosen_by == "config"
        assert pointer.pinned_settings is None
        # The columns work: a rollback records its pin, a switch by the configuration clears it.
        registry.switch_index(
            "rag_b", B.as_dict(), expected="rag_a", chosen_by="rollback", pinned_settings=_settings(A)
        )
        pinned = registry.index_pointer()
        assert (pinned.chosen_by, pinned.pinned_settings) == ("rollback", _settings(A))
        assert registry.follow_settings("rag_a") is False  # not the served collection: nothing relabelled
        assert registry.follow_settings("rag_b") is True
        assert registry.index_pointer().chosen_by == "config"
        assert registry.index_pointer().pinned_settings is None
    finally:
        registry.close()


def _json(config: IndexConfig) -> str:
    return json.dumps(config.as_dict())
