"""The re-index lease in the registry (SQLite and Postgres): of replicas racing for it exactly one holds it, an
expired lease (its holder died) is taken over, renewal fails for a replica it was taken from, release is the
holder's only. The cross-process behaviour on top of it: tests/service/test_reindex_replicas.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app.store.registry import DocumentRegistry
from tests.service.support import create_database

CONFIG = {"model": "m", "chunk_size": 64, "chunk_overlap": 8}


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentRegistry]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = create_database(request.getfixturevalue("postgres_url"), "lease_test")
    registry = DocumentRegistry(url)
    registry.migrate()
    yield registry
    registry.close()


def _race(registry: DocumentRegistry, contenders: int) -> set[str]:
    """Every contender tries to take the lease at once; returns the holders they were told about."""
    barrier = threading.Barrier(contenders)
    seen: list[str] = []
    errors: list[BaseException] = []

    def contend(name: str) -> None:
        try:
            barrier.wait()
            seen.append(registry.acquire_index_lease(name, "target", CONFIG, 60).holder)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(f"replica-{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return set(seen)


def test_one_replica_holds_the_lease_and_an_expired_one_is_taken_over(registry: DocumentRegistry) -> None:
    assert registry.index_lease() is None
    # A free lease: racing replicas all agree on one holder.
    (winner,) = _race(registry, 6)
    lease = registry.index_lease()
    assert lease is not None
    assert lease.holder == winner
    assert lease.live()
    assert lease.config == CONFIG
    other = "replica-0" if winner != "replica-0" else "replica-1"
    assert not registry.renew_index_lease(other, 60)
    assert registry.renew_index_lease(winner, 60)
    registry.release_index_lease(other)  # not its lease: nothing happens
    assert registry.index_lease().holder == winner

    # The holder dies: its lease lapses (an expiry in the past stands for the time passing), one replica takes it.
    assert registry.acquire_index_lease(winner, "target", CONFIG, -1).holder == winner
    assert not registry.index_lease().live()
    (successor,) = _race(registry, 6)
    assert registry.index_lease().live()
    if successor != winner:
        assert not registry.renew_index_lease(winner, 60)  # the dead builder, back, cannot switch on
    registry.release_index_lease(successor)
    assert registry.index_lease() is None
