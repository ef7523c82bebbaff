"""Embedded async jobs across the real process boundary: `python -m service` with its defaults (SQLite registry,
qdrant-edge, in-process jobs) is killed with SIGKILL and stopped with SIGTERM while jobs run and wait; every
job it acknowledged (202) is resumed by the next start, ends succeeded, and its document is stored and searchable
exactly once."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from tests.service.prod_support import API_KEYS, KEY_A, bearer
from tests.support.processes import ApiProcess, start_api
from tests.support.servers import _stop

HEADERS = bearer(KEY_A)
WAIT_SECONDS = 120.0  # bounds a job that never finishes; not a timing assertion


def long_text(seed: int, topic: str, words: int = 1000) -> str:
    """About twenty chunks (a second or more of embedding: a job that is still running when the process is signalled),
    ending with a sentence only this document has."""
    rng = random.Random(seed)
    body = " ".join(f"field{rng.randrange(10_000)}" for _ in range(words))
    return f"{body}.\n\n{topic}"


TOPICS = {
    "big-a": "Violet auroras shimmer above the frozen Norwegian fjords during the polar winter nights.",
    "small-b": "Sourdough bread rises slowly because wild yeast ferments the flour overnight.",
    "small-c": "The violin's spruce top vibrates to project the sound of its strings.",
    "small-d": "Honeybees perform a waggle dance to tell the hive where nectar can be found.",
    "big-e": "Deep ocean hydrothermal vents feed tube worms through chemosynthetic bacteria.",
    "small-f": "Saturn's rings are made mostly of water ice with a little rocky debris.",
}


def submit(url: str, document_id: str, text: str) -> str:
    response = httpx.put(
        f"{url}/v1/documents/{document_id}?async=true", json={"text": text}, headers=HEADERS, timeout=30
    )
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def job(url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/jobs/{job_id}", headers=HEADERS, timeout=30)
    assert response.status_code == 200, (job_id, response.text)
    return response.json()


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stored_statuses(data: Path) -> dict[str, tuple[str, int]]:
    """job id -> (status, attempts) as the registry file holds them (read with the process gone)."""
    with sqlite3.connect(data / "registry.db") as connection:
        return {
            row[0]: (row[1], row[2])
            for row in connection.execute("SELECT job_id, status, attempts FROM jobs")
        }


def assert_stored_once(url: str, document_id: str, text: str) -> None:
    document = httpx.get(f"{url}/v1/documents/{document_id}", headers=HEADERS, timeout=30)
    assert document.status_code == 200, document.text
    hits = httpx.post(
        f"{url}/v1/search", json={"query": TOPICS[document_id], "top_k": 20}, headers=HEADERS, timeout=30
    ).json()["results"]
    assert hits[0]["document_id"] == document_id
    assert TOPICS[document_id] in hits[0]["text"]
    chunks = [(hit["document_id"], hit["chunk_index"]) for hit in hits]
    assert len(chunks) == len(set(chunks)), f"a chunk of {document_id} is stored twice: {chunks}"
    assert sum(TOPICS[document_id] in hit["text"] for hit in hits) == 1


def start(tmp_path: Path, **settings: str) -> ApiProcess:
    return start_api(
        tmp_path,
        ready_path="/readyz",
        api_keys=API_KEYS,
        environment="test",
        data_dir=str(tmp_path / "data"),
        jobs_max_concurrency="1",
        log_json="true",
        **settings,
    )


def test_acknowledged_jobs_survive_kill_9_and_sigterm_mid_job_and_end_stored_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    texts = {
        doc: long_text(i, topic) if doc.startswith("big") else topic
        for i, (doc, topic) in enumerate(TOPICS.items())
    }

    # 1. kill -9 while the first job runs and three more wait.
    first = start(tmp_path)
    ids = {doc: submit(first.url, doc, texts[doc]) for doc in ("big-a", "small-b", "small-c", "small-d")}
    wait_for(lambda: job(first.url, ids["big-a"])["status"] == "running", "big-a to run")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    left = stored_statuses(data)
    assert left[ids["big-a"]] == ("running", 1)  # killed mid-job, as intended
    assert {left[ids[doc]][0] for doc in ("small-b", "small-c", "small-d")} == {"queued"}

    # 2. The next start resumes them all (the running one at once: the store lock proves the old process gone).
    second = start(tmp_path, jobs_shutdown_grace_seconds="0")
    try:
        for doc in ("big-a", "small-b", "small-c", "small-d"):
            wait_for(lambda doc=doc: job(second.url, ids[doc])["status"] in ("succeeded", "failed"), doc)
            done = job(second.url, ids[doc])
            assert done["status"] == "succeeded", done
            assert done["result"]["status"] == "created"
            assert_stored_once(second.url, doc, texts[doc])

        # 3. SIGTERM with a job running and one waiting (grace 0: neither may finish here).
        ids["big-e"] = submit(second.url, "big-e", texts["big-e"])
        ids["small-f"] = submit(second.url, "small-f", texts["small-f"])
        wait_for(lambda: job(second.url, ids["big-e"])["status"] == "running", "big-e to run")
        second.proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once its shutdown (the lifespan's included) is complete.
        assert second.proc.wait(timeout=WAIT_SECONDS) in (0, -signal.SIGTERM)
    finally:
        _stop(second.proc)
    records = [json.loads(line) for line in second.log_lines() if line.startswith("{")]
    left_for_later = {
        (record["job_id"], record["tenant"], record["document_id"])
        for record in records
        if record["message"].endswith("left queued for the next start") and record["level"] == "WARNING"
    }
    assert left_for_later == {(ids["big-e"], "tenant-a", "big-e"), (ids["small-f"], "tenant-a", "small-f")}
    assert {stored_statuses(data)[ids[doc]][0] for doc in ("big-e", "small-f")} == {"queued"}

    # 4. The third start finishes them; every job id of every process still answers, succeeded.
    third = start(tmp_path)
    try:
        for doc in ("big-e", "small-f"):
            wait_for(lambda doc=doc: job(third.url, ids[doc])["status"] in ("succeeded", "failed"), doc)
        for doc, job_id in ids.items():
            done = job(third.url, job_id)
            assert done["status"] == "succeeded", done
            assert_stored_once(third.url, doc, texts[doc])
        listed = httpx.get(f"{third.url}/v1/documents?limit=100", headers=HEADERS, timeout=30).json()
        assert sorted(document["document_id"] for document in listed["documents"]) == sorted(TOPICS)
        assert httpx.get(f"{third.url}/v1/jobs/{'0' * 32}", headers=HEADERS, timeout=30).status_code == 404
    finally:
        _stop(third.proc)
