"""A registry commit whose answer was lost (REVIEW_SERVICE20 F8): the write must not delete the points of the version
it made active, and a retry of the write must end with the document searchable.

The lost answer is made at the database driver: the commit reaches SQLite, then the driver raises as a connection
reset after the server committed would, so the registry's own error handling (``_guarded``) turns it into the
ServiceUnavailable the write path sees."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from service.app.core.errors import ServiceUnavailable
from tests.service.support import make_settings, running_app, services_of

TEXT = "Salmon swim up the river to spawn."
Q = {"query": "salmon swim up the river", "top_k": 5}


def _lose_commit_answers(monkeypatch: pytest.MonkeyPatch, registry: Any, method: str = "activate") -> None:
    """Every registry.<method> commits, then its commit raises as a lost answer would (this thread only)."""
    armed = threading.local()
    dialect = registry.engine.dialect
    do_commit = dialect.do_commit
    activate = getattr(registry, method)

    def commit_then_lose(dbapi_connection: Any) -> None:
        do_commit(dbapi_connection)  # the commit happened ...
        if getattr(armed, "on", False):
            raise sqlite3.OperationalError("connection reset after the commit")  # ... its answer was lost

    def armed_activate(*args: Any, **kwargs: Any) -> Any:
        armed.on = True
        try:
            return activate(*args, **kwargs)
        finally:
            armed.on = False

    monkeypatch.setattr(dialect, "do_commit", commit_then_lose)
    monkeypatch.setattr(registry, method, armed_activate)


def _found(client: Any) -> list[str]:
    response = client.post("/v1/search", json=Q)
    assert response.status_code == 200, response.text
    return [hit["document_id"] for hit in response.json()["results"]]


def test_a_lost_commit_answer_keeps_the_active_versions_points(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        services = services_of(client)
        _lose_commit_answers(monkeypatch, services.registry)
        put = client.put("/v1/documents/salmon", json={"text": TEXT})
        monkeypatch.undo()

        # The registry was read back: the commit happened, so the write is acknowledged as what it was.
        assert put.status_code == 201, put.text
        assert put.json()["status"] == "created"
        record = services.registry.get("default", "salmon")
        assert record is not None
        assert record.version == put.json()["version"]
        assert services.vectors.count("default", "salmon") == 1
        assert _found(client) == ["salmon"]

        retry = client.put("/v1/documents/salmon", json={"text": TEXT})
        assert retry.status_code == 200, retry.text
        assert retry.json()["status"] == "unchanged"
        assert _found(client) == ["salmon"]


def test_a_lost_commit_answer_with_the_registry_then_unreadable_leaves_the_points(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        services = services_of(client)
        registry = services.registry
        _lose_commit_answers(monkeypatch, registry)
        reads = {"get": 0}
        get = registry.get

        def unreadable_after_the_commit(*args: Any, **kwargs: Any) -> Any:
            reads["get"] += 1
            if reads["get"] > 1:  # the first is the write's own read before it publishes
                raise ServiceUnavailable("document registry unavailable; retry later")
            return get(*args, **kwargs)

        monkeypatch.setattr(registry, "get", unreadable_after_the_commit)
        put = client.put("/v1/documents/salmon", json={"text": TEXT})
        monkeypatch.undo()

        # Outcome unknown: the client is told to retry, and nothing that may be active was deleted.
        assert put.status_code == 503, put.text
        assert reads["get"] == 2  # the write did try to find out what the registry holds
        record = registry.get("default", "salmon")
        assert record is not None
        assert services.vectors.count("default", "salmon") == 1
        assert _found(client) == ["salmon"]

        retry = client.put("/v1/documents/salmon", json={"text": TEXT})
        assert retry.status_code == 200, retry.text
        assert retry.json()["status"] == "unchanged"
        assert retry.json()["version"] == record.version
        assert _found(client) == ["salmon"]


def test_an_unavailable_registry_that_did_not_commit_still_discards_the_points(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        services = services_of(client)
        registry = services.registry
        dialect = registry.engine.dialect

        def commit_fails(dbapi_connection: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")  # nothing committed

        monkeypatch.setattr(dialect, "do_commit", commit_fails)
        put = client.put("/v1/documents/salmon", json={"text": TEXT})
        monkeypatch.undo()

        assert put.status_code == 503, put.text
        assert registry.get("default", "salmon") is None
        assert services.vectors.count("default", "salmon") == 0  # read back: not active, so discarded

        retry = client.put("/v1/documents/salmon", json={"text": TEXT})
        assert retry.status_code == 201, retry.text
        assert _found(client) == ["salmon"]


def test_a_delete_whose_commit_answer_was_lost_is_answered_as_done(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """note20: the delete happened, the client was told 503, and its retry got a 404 ("no such document"). The
    registry is read back: the row is gone, so the answer is the 204 the delete earned."""
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        services = services_of(client)
        assert client.put("/v1/documents/salmon", json={"text": TEXT}).status_code == 201
        _lose_commit_answers(monkeypatch, services.registry, "delete")
        deleted = client.delete("/v1/documents/salmon")
        monkeypatch.undo()

        assert deleted.status_code == 204, deleted.text
        assert services.registry.get("default", "salmon") is None
        assert client.get("/v1/documents/salmon").status_code == 404
        assert _found(client) == []
        # Unknown documents are still a 404, and a delete that did not commit is still a 503 and done by its retry.
        assert client.delete("/v1/documents/never").status_code == 404
        assert client.put("/v1/documents/salmon", json={"text": TEXT}).status_code == 201
        dialect = services.registry.engine.dialect

        def commit_fails(dbapi_connection: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")  # nothing committed

        monkeypatch.setattr(dialect, "do_commit", commit_fails)
        refused = client.delete("/v1/documents/salmon")
        monkeypatch.undo()
        assert refused.status_code == 503, refused.text
        assert services.registry.get("default", "salmon") is not None
        assert client.delete("/v1/documents/salmon").status_code == 204
        # A delete after that one: nothing there.
        assert client.delete("/v1/documents/salmon").status_code == 404


def test_the_retry_of_a_delete_whose_outcome_stayed_unknown_is_answered_as_done(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit's answer is lost and the registry cannot be read back either: 503 (retry), and the retry, which
    finds no row, is answered 204 (the delete happened), not 404."""
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        services = services_of(client)
        registry = services.registry
        assert client.put("/v1/documents/salmon", json={"text": TEXT}).status_code == 201
        _lose_commit_answers(monkeypatch, registry, "delete")

        get = registry.get
        reads: list[Any] = []

        def unreadable_after_the_attempt(*args: Any, **kwargs: Any) -> Any:
            reads.append(args)
            if len(reads) == 1:
                return get(*args, **kwargs)  # the read before the delete (the row is there)
            raise ServiceUnavailable("document registry unavailable; retry later")

        monkeypatch.setattr(registry, "get", unreadable_after_the_attempt)
        deleted = client.delete("/v1/documents/salmon")
        monkeypatch.undo()

        assert deleted.status_code == 503, deleted.text
        assert registry.get("default", "salmon") is None  # it did happen
        retry = client.delete("/v1/documents/salmon")
        assert retry.status_code == 204, retry.text
        assert client.delete("/v1/documents/salmon").status_code == 404  # answered once: later ones are 404s
        assert _found(client) == []


@pytest.mark.parametrize("lost", ["commit-answer", "before-the-database"])
def test_a_failed_delete_of_a_document_that_never_existed_is_no_204(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch, lost: str
) -> None:
    """REVIEW_SERVICE21 LOW 6: the attempt fails (its commit answer lost, or it never reached the database) and the
    read-back works and finds no row. There was no row before the attempt either, so nothing was deleted: the
    503 stands (not 204 "it happened"), and its retry is the 404 of a document that never existed."""
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        services = services_of(client)
        registry = services.registry
        if lost == "commit-answer":
            _lose_commit_answers(monkeypatch, registry, "delete")
        else:

            def unreachable(*args: Any, **kwargs: Any) -> Any:
                raise ServiceUnavailable("document registry unavailable; retry later")  # a pool timeout, say

            monkeypatch.setattr(registry, "delete", unreachable)
        deleted = client.delete("/v1/documents/never")
        monkeypatch.undo()

        assert deleted.status_code == 503, deleted.text
        assert registry.get("default", "never") is None
        assert client.delete("/v1/documents/never").status_code == 404
        # A document that existed is still answered as deleted when the commit's answer is lost.
        assert client.put("/v1/documents/salmon", json={"text": TEXT}).status_code == 201
        _lose_commit_answers(monkeypatch, registry, "delete")
        gone = client.delete("/v1/documents/salmon")
        monkeypatch.undo()
        assert gone.status_code == 204, gone.text


@pytest.mark.parametrize("committed", [False, True], ids=["before-the-commit", "after-the-commit"])
def test_an_activate_failing_otherwise_discards_the_points_at_once_unless_the_version_is_active(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """note20: an activate failing with an error other than Conflict/ServiceUnavailable (a bug, a failed sync of
    the points) left the new points for the orphan collector's grace period. The registry is read back as for a
    lost answer: not active -> discarded at once; active -> kept (and searchable)."""
    with running_app(make_settings(tmp_path, gc_enabled=False), embedder=embedder) as client:
        services = services_of(client)
        registry = services.registry
        activate = registry.activate

        def failing(*args: Any, **kwargs: Any) -> Any:
            if committed:
                activate(*args, **kwargs)
            raise RuntimeError("an unexpected failure")

        monkeypatch.setattr(registry, "activate", failing)
        put = client.put("/v1/documents/salmon", json={"text": TEXT})
        monkeypatch.undo()

        assert put.status_code == 500, put.text
        record = registry.get("default", "salmon")
        assert (record is not None) == committed
        assert services.vectors.count("default", "salmon") == (1 if committed else 0)
        assert _found(client) == (["salmon"] if committed else [])
