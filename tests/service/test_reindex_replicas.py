"""Several API replicas over one registry (real `python -m service` processes sharing a SQLite registry): the
re-index lease lets exactly one build, a builder killed with SIGKILL is taken over once its lease expires, and
every replica follows a switch and a rollback made by another without a write.

Honest limits of this machine: local-mode Qdrant cannot be shared between processes (production shares a Qdrant
server), so each replica has its own copy of the store (copied from one data directory before they start).
The lease and the pointer following are what cross the process boundary here; the follower's copy of the new
collection stays empty (the builder filled its own), so its searches going empty *are* the observation that it
serves the new collection, and coming back after the rollback that it followed that too. The dual writes and the
switch inside one store are tested in tests/service/test_reindex.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from infra.workflows.stacks import REPO_ROOT
from service.app.store.embedder import FastEmbedEmbedder
from tests.service.support import make_settings, running_app, services_of
from tests.workflows.test_reindex import ADMIN, DOCS, KEY, service_process

WAIT_SECONDS = 180.0  # bounds a condition that never comes true; not a timing assertion
# Long against a stall: the holder renews every 0.2 s and a builder replica every third of the lease, so only a
# process stalled for most of it (a loaded machine, a commit waiting on a busy disk) loses its lease, and a lost
# lease here is a takeover the test does not expect (two builders). The cost: the dead holder's lease runs out
# 10 s after the kill.
LEASE_SECONDS = "10"


def _status(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/admin/reindex", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _search(url: str) -> list[str]:
    response = httpx.post(
        f"{url}/v1/search",
        json={"query": "sourdough yeast", "top_k": 3},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [hit["document_id"] for hit in response.json()["results"]]


def _until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def _hold_lease(database_url: str, ready: Path) -> subprocess.Popen[bytes]:
    """A process that takes the re-index lease and keeps renewing it: a builder, to be killed with SIGKILL."""
    script = (
        "import sys, time\n"
        "from service.app.store.registry import DocumentRegistry\n"
        "registry = DocumentRegistry(sys.argv[1])\n"
        "from service.app.core.config import Settings\n"
        "model = Settings(_env_file=None).embedding_model\n"
        "config = {'model': model, 'chunk_size': 64, 'chunk_overlap': 8}\n"
        "lease = registry.acquire_index_lease('doomed-builder', 'rag_doomed', config, float(sys.argv[3]))\n"
        "assert lease.holder == 'doomed-builder', lease\n"
        "open(sys.argv[2], 'w').close()\n"
        "while True:\n"
        "    registry.renew_index_lease('doomed-builder', float(sys.argv[3]))\n"
        "    time.sleep(0.2)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, database_url, str(ready), LEASE_SECONDS], cwd=REPO_ROOT, env=os.environ
    )


def test_one_replica_builds_a_killed_builder_is_taken_over_and_all_follow_switch_and_rollback(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    database_url = f"sqlite:///{(tmp_path / 'registry.db').as_posix()}"
    shared = {"DATABASE_URL": database_url, "REINDEX_LEASE_SECONDS": LEASE_SECONDS}
    seed = tmp_path / "seed"
    seed.mkdir()
    settings = make_settings(
        seed, database_url=database_url, vector_store="local", chunk_size=200, chunk_overlap=32
    )
    with running_app(settings, embedder=embedder) as client:
        for document_id, text in DOCS.items():
            assert client.put(f"/v1/documents/{document_id}", json={"text": text}).status_code == 201
        old = services_of(client).ingest.index.current.collection
    data = {}
    for name in ("a", "b"):
        data[name] = tmp_path / name
        shutil.copytree(seed / "qdrant", data[name] / "qdrant")

    ready = tmp_path / "holder-ready"
    holder = _hold_lease(database_url, ready)
    try:
        _until(lambda: ready.exists() or holder.poll() is not None, "the holder took the lease")
        assert holder.poll() is None, "the lease holder exited"
        changed = {**shared, "CHUNK_SIZE": "64", "CHUNK_OVERLAP": "8", "INDEX_POINTER_TTL_SECONDS": "0.2"}
        with service_process(data["a"], **changed) as a, service_process(data["b"], **changed) as b:
            # Both new pods want the re-index; neither builds while a live replica holds the lease.
            for url in (a, b):
                status = _until(lambda url=url: (s := _status(url))["state"] == "waiting" and s, "waiting")
                assert status["builder"] == "doomed-builder"
                assert status["current"]["collection"] == old
            assert sorted(_search(a)) == sorted(_search(b)) != []

            os.kill(holder.pid, signal.SIGKILL)  # the builder dies mid-build
            holder.wait()
            # After the lease expires exactly one of them takes over and builds; the other follows its switch.
            done = {
                url: _until(lambda url=url: (s := _status(url))["state"] == "switched" and s, "switched")
                for url in (a, b)
            }
            new = done[a]["current"]["collection"]
            assert new != old
            assert done[b]["current"]["collection"] == new
            built = [url for url, status in done.items() if status["documents_done"] > 0]
            assert len(built) == 1, done
            builder = built[0]
            follower = b if builder == a else a
            assert done[builder]["documents_done"] == len(DOCS)
            assert done[follower]["documents_done"] == 0
            assert done[follower]["standby"]["collection"] == old

            assert len(_search(builder)) > 0
            # The follower serves the new collection without any write (its local copy of it is empty).
            _until(lambda: _search(follower) == [], "the follower searches the new collection")

            # A rollback on the builder is followed by the other replica, again without a write.
            response = httpx.post(
                f"{builder}/v1/admin/reindex/rollback",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            _until(lambda: _search(follower) != [], "the follower searches the old collection again")
            assert _status(follower)["current"]["collection"] == old
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
