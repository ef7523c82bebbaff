"""`python -m service.reindex start --wait` through a load balancer: each poll may reach another replica, with its
own job status. A scripted admin API (a real loopback server) plays the replicas' answers in order."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from service.reindex import main
from tests.support.servers import json_server

OLD = {"model": "m", "chunk_size": 200, "chunk_overlap": 32}
NEW = {"model": "m", "chunk_size": 64, "chunk_overlap": 8}
REPEATS = 50


def _status(state: str, serving: dict, collection: str, target: dict | None = None) -> dict[str, Any]:
    return {
        "state": state,
        "current": {"collection": collection, **serving},
        "target": target,
        "serving": {"collection": collection, **serving},
        "documents_total": 3,
        "documents_done": 0,
        "documents_replayed": 0,
        "documents_without_text": 0,
        "without_text": [],
        "error": "conflict: the index pointer moved" if state == "failed" else None,
    }


@pytest.fixture
def replicas() -> Iterator[ThreadingHTTPServer]:
    """GETs answer the next of `server.statuses` (the last repeats, REPEATS times at most: then an error, so a
    watch that never ends fails at once); a POST answers `server.started`."""

    def answer(_path: str) -> tuple[int, dict]:
        statuses = server.statuses  # type: ignore[attr-defined]
        if len(statuses) > 1:
            return 200, statuses.pop(0)
        server.repeats += 1  # type: ignore[attr-defined]
        if server.repeats > REPEATS:  # type: ignore[attr-defined]
            return 500, {"error": {"message": "polled past the scripted statuses"}}
        return 200, statuses[0]

    def post(_path: str, _body: Any) -> tuple[int, dict]:
        return 202, server.started  # type: ignore[attr-defined]

    with json_server(answer, post) as server:
        server.repeats = 0  # type: ignore[attr-defined]
        yield server


def _start_wait(server: ThreadingHTTPServer) -> int:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.server_address[1]}") as client:
        return main(
            ["--interval", "0.01", "start", "--chunk-size", "64", "--chunk-overlap", "8", "--wait"], client
        )


def test_start_wait_is_not_ended_by_another_replicas_earlier_switch(
    replicas: ThreadingHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first poll reaches a replica that still shows the previous re-index's end (switched, to c-old), the
    # next one a replica that has not seen the new build yet (idle); only the pointer on c-new ends the wait.
    replicas.started = {**_status("building", OLD, "c-old", NEW), "serving": None}  # type: ignore[attr-defined]
    replicas.statuses = [  # type: ignore[attr-defined]
        _status("switched", OLD, "c-old"),  # read before the start: the pointer names c-old
        _status("switched", OLD, "c-old"),
        _status("idle", OLD, "c-old"),
        _status("building", OLD, "c-old", NEW),
        _status("switching", NEW, "c-new", NEW),  # the pointer moved; that replica's last catch-up runs
        _status("failed", NEW, "c-new", NEW),  # a replica that lost the compare-and-set: the pointer decides
    ]
    assert _start_wait(replicas) == 0
    out = capsys.readouterr().out
    assert "serving c-new" in out


def test_start_wait_fails_when_the_build_fails_and_gives_up_after_its_timeout(
    replicas: ThreadingHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    replicas.started = {**_status("building", OLD, "c-old", NEW), "serving": None}  # type: ignore[attr-defined]
    replicas.statuses = [_status("idle", OLD, "c-old"), _status("failed", OLD, "c-old", NEW)]  # type: ignore[attr-defined]
    assert _start_wait(replicas) == 1
    assert "conflict" in capsys.readouterr().out

    replicas.statuses = [_status("idle", OLD, "c-old")]  # type: ignore[attr-defined]
    replicas.repeats = 0  # type: ignore[attr-defined]
    with httpx.Client(base_url=f"http://127.0.0.1:{replicas.server_address[1]}") as client:
        code = main(["--interval", "0.01", "--timeout", "0", "start", "--chunk-size", "64", "--wait"], client)
    assert code == 1
    assert "still idle after 0s" in capsys.readouterr().out


def test_start_wait_is_not_ended_by_a_replicas_failure_of_an_earlier_build(
    replicas: ThreadingHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The operator fixed what failed the last build towards NEW and started it again; one replica behind the
    # load balancer still shows that earlier build's failure (started before this one): not this build's end.
    started = "2026-11-27T07:00:00+00:00"
    replicas.started = {  # type: ignore[attr-defined]
        **_status("building", OLD, "c-old", NEW),
        "serving": None,
        "started_at": started,
    }
    stale = {**_status("failed", OLD, "c-old", NEW), "started_at": "2026-11-27T06:10:00+00:00"}
    replicas.statuses = [  # type: ignore[attr-defined]
        _status("switched", OLD, "c-old"),  # read before the start
        stale,
        {**_status("building", OLD, "c-old", NEW), "started_at": started},
        stale,
        _status("switched", NEW, "c-new", NEW),
    ]
    assert _start_wait(replicas) == 0
    assert "serving c-new" in capsys.readouterr().out

    # This build's own failure (started at or after the start's answer) still ends it with exit 1.
    replicas.statuses = [  # type: ignore[attr-defined]
        _status("switched", OLD, "c-old"),
        stale,
        {**_status("failed", OLD, "c-old", NEW), "started_at": started},
    ]
    replicas.repeats = 0  # type: ignore[attr-defined]
    assert _start_wait(replicas) == 1
