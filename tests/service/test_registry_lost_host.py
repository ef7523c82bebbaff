"""A Postgres host that stops answering (its node or zone lost: packets dropped, no RST) must cost a call a bounded
wait, not the kernel's ~15 minutes of retransmissions: every search reads the registry.

The loss is real: iptables drops every packet to and from a throwaway Postgres's port on loopback, as a vanished
host would, so the kernel of the client keeps retransmitting and nothing answers (a user-space proxy that stops
forwarding would still acknowledge the bytes, which is a different failure). Root is what these machines run as.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from service.app.core.errors import ServiceUnavailable
from service.app.store.registry import DocumentRegistry, open_registry, postgres_connect_args
from tests.support.servers import postgres_server

#: How long a call may take at most before the test calls it hung: far above the 2 s timeouts set below and far
#: below what a missing timeout costs (~127 s for a connect, ~924 s for an established connection).
HUNG_AFTER_SECONDS = 60.0


@contextmanager
def packets_dropped(port: int) -> Iterator[None]:
    """Drop every TCP packet to or from ``port`` on loopback, as if the host behind it had vanished."""
    rules = [
        ["OUTPUT", "-p", "tcp", "-d", "127.0.0.1", "--dport", str(port), "-j", "DROP"],
        ["OUTPUT", "-p", "tcp", "-s", "127.0.0.1", "--sport", str(port), "-j", "DROP"],
    ]
    added = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-I", *rule], check=True, capture_output=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-w", "-D", *rule], check=True, capture_output=True)


def outcome(call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised (None if it returned), failing the test if it is still waiting after
    HUNG_AFTER_SECONDS (the thread is left behind: it is a daemon)."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            result.append(exc)
        else:
            result.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HUNG_AFTER_SECONDS)
    assert result, f"the call still waits on the lost host after {HUNG_AFTER_SECONDS:.0f} s"
    return result[0]


def test_a_lost_postgres_host_fails_calls_fast_and_the_registry_recovers() -> None:
    with postgres_server("lost_host") as url:
        port = sa.make_url(url).port
        assert port is not None
        registry = open_registry(url, connect_timeout=2, tcp_timeout=2)
        try:
            assert registry.data_version("acme") == 0  # a pooled connection now exists
            with packets_dropped(port):
                # The pooled connection: its ping is sent and never acknowledged.
                pooled = outcome(registry.ping)
                assert isinstance(pooled, ServiceUnavailable), pooled
                # A new connection: the SYN is never answered.
                fresh = DocumentRegistry(url, connect_timeout=2, tcp_timeout=2)
                try:
                    connect = outcome(fresh.ping)
                finally:
                    fresh.close()
                assert isinstance(connect, ServiceUnavailable), connect
            # The host is back: the next call reconnects, no restart needed.
            registry.ping()
            assert registry.data_version("acme") == 0
        finally:
            registry.close()


def test_connect_arguments_bound_every_wait_and_the_url_wins() -> None:
    args = postgres_connect_args({}, connect_timeout=5, tcp_timeout=15)
    assert args == {
        "connect_timeout": 5,
        "tcp_user_timeout": 15_000,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    # A keepalive probe round (idle + count x interval) gives up within the TCP timeout.
    assert args["keepalives_idle"] + args["keepalives_count"] * args["keepalives_interval"] <= 15
    given = postgres_connect_args({"connect_timeout": "30"}, connect_timeout=5, tcp_timeout=15)
    assert "connect_timeout" not in given  # DATABASE_URL's own keyword is left to libpq
    assert postgres_connect_args({}, connect_timeout=0.5, tcp_timeout=0.2)["connect_timeout"] == 2


@pytest.mark.parametrize("key", ["database_connect_timeout_seconds", "database_tcp_timeout_seconds"])
def test_the_settings_reach_the_engine(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.app.core.config import Settings

    seen: dict[str, float] = {}

    def fake_engine(url: str, *, connect_timeout: float, tcp_timeout: float, durable: bool) -> object:
        seen.update(
            database_connect_timeout_seconds=connect_timeout, database_tcp_timeout_seconds=tcp_timeout
        )
        raise RuntimeError("stop here")

    monkeypatch.setattr("service.app.store.registry.make_engine", fake_engine)
    settings = Settings(database_url="postgresql://rag@db/rag", **{key: 42})
    with pytest.raises(RuntimeError, match="stop here"):
        DocumentRegistry.from_settings(settings)
    assert seen[key] == 42


def test_a_slow_pointer_read_does_not_queue_the_requests_behind_it() -> None:
    """While one thread re-reads the index pointer from a registry that stopped answering, the searches and
    writes that would follow the pointer go on with what the process serves: they queued behind that read."""
    from service.app.jobs.reindex import Reindexer

    entered, release = threading.Event(), threading.Event()

    class StalledRegistry:
        reads = 0

        def index_pointer(self) -> None:
            self.reads += 1
            entered.set()
            release.wait(HUNG_AFTER_SECONDS)
            raise ServiceUnavailable("document registry unavailable; retry later")

    registry = StalledRegistry()
    reindexer = Reindexer(
        registry=registry,  # type: ignore[arg-type]
        ingest=None,  # type: ignore[arg-type]
        index=None,  # type: ignore[arg-type]
        make_generation=lambda config: None,  # type: ignore[arg-type,return-value]
        pointer_ttl_seconds=0,
    )
    stalled = threading.Thread(target=reindexer.sync, daemon=True)
    stalled.start()
    assert entered.wait(HUNG_AFTER_SECONDS)
    try:
        assert outcome(reindexer.sync) is None  # returned while the other read is still stalled
        assert registry.reads == 1
    finally:
        release.set()
        stalled.join(HUNG_AFTER_SECONDS)
    assert (
        outcome(lambda: reindexer.sync(force=True)) is None
    )  # a forced follow reads (and survives the outage)
    assert registry.reads == 2
