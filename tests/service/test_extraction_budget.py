"""Extraction budgets (service.app.ingest.sandbox): a document over its CPU or memory budget is a 422 naming the
setting on PUT, upload, bulk and async PUT, nothing stored changes, other requests keep being served, a worker
killed mid-extraction fails only its document (503) and is replaced, and no worker outlives the service.

The documents are real: HTML nested tens of thousands of levels deep costs lexbor CPU quadratic in the depth
(~30 s of CPU for 1 MB), and a page of a million tiny paragraphs needs ~400 MB to parse. Budgets are CPU time and
address space enforced by the kernel in the worker, so the outcomes do not depend on how loaded the machine is;
waits poll a state (a worker busy, a process gone) with a deadline that only bounds a hang.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app.core.config import Settings
from service.app.ingest.sandbox import ExtractionLimitExceeded, Extractor
from service.app.store.embedder import FastEmbedEmbedder
from tests.service.service_process import REPO_ROOT, service_process, wait_for
from tests.service.support import make_pdf, make_settings, running_app, services_of

# ~1.2 MB of <div> nested 200,000 deep: minutes of CPU for lexbor; refused at EXTRACT_CPU_SECONDS.
SLOW_HTML = "<div>x" * 200_000
# 2 MB of half a million paragraphs: ~200 MB for the parse tree; refused at EXTRACT_MEMORY_MB=160.
HUGE_TREE_HTML = "<p>x" * 500_000
# Over the in-process threshold (16 KiB), so it runs in a worker; little visible text, so cheap to embed.
PAGE = (
    "<h1>Basalt</h1><p>Basalt columns form when thick lava flows cool slowly.</p>"
    f"<script>{'var x = 1;' * 2000}</script>"
)


def _budget_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "extract_cpu_seconds": 1,
        "extract_memory_mb": 160,
        "extract_timeout_seconds": 600,  # wall time only bounds a hang here; the CPU budget decides
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


def _refused(response: httpx.Response, limit: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "extraction_limit_exceeded"
    assert error["limit"] == limit
    assert f"raise {limit}" in error["message"]


def _extractions(client: Any, where: str, outcome: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'rag_extractions_total{{outcome="{outcome}",where="{where}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("html", "limit"), [(SLOW_HTML, "EXTRACT_CPU_SECONDS"), (HUGE_TREE_HTML, "EXTRACT_MEMORY_MB")]
)
def test_a_document_over_its_budget_is_a_422_on_every_write_path_and_nothing_stored_changes(
    tmp_path: Path, embedder: FastEmbedEmbedder, html: str, limit: str
) -> None:
    with running_app(_budget_settings(tmp_path), embedder=embedder) as client:
        stored = client.put("/v1/documents/page", json={"text": PAGE, "content_type": "text/html"})
        assert stored.status_code == 201, stored.text
        before = client.get("/v1/documents/page").json()
        refused_before = _extractions(client, "worker", limit.lower())

        _refused(client.put("/v1/documents/page", json={"text": html, "content_type": "text/html"}), limit)
        _refused(
            client.post("/v1/documents", files={"file": ("page.html", html.encode(), "text/html")}), limit
        )
        # Async: extraction happens before the 202, so no job is created for a refused document.
        _refused(
            client.put("/v1/documents/page?async=true", json={"text": html, "content_type": "text/html"}),
            limit,
        )
        refusals = 3
        if limit == "EXTRACT_MEMORY_MB":  # a cheap refusal: the bulk route too (the CPU one costs 1 s each)
            bulk = client.post(
                "/v1/documents:bulk",
                json={"documents": [{"document_id": "page", "text": html, "content_type": "text/html"}]},
            )
            assert bulk.status_code == 207, bulk.text
            assert bulk.json()["items"][0]["status_code"] == 422
            assert bulk.json()["items"][0]["error"]["limit"] == limit
            refusals += 1

        assert client.get("/v1/documents/page").json() == before
        assert [d["document_id"] for d in client.get("/v1/documents").json()["documents"]] == ["page"]
        assert client.post("/v1/search", json={"query": "basalt columns"}).json()["results"]
        assert _extractions(client, "worker", limit.lower()) - refused_before == refusals
        # The worker that hit the limit keeps serving (or was replaced): the next document goes through.
        again = client.put(
            "/v1/documents/page", json={"text": PAGE + "<p>v2</p>", "content_type": "text/html"}
        )
        assert again.status_code == 200, again.text


def test_small_requests_are_served_while_a_worker_is_busy_and_a_killed_worker_is_replaced(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = _budget_settings(tmp_path, extract_cpu_seconds=600, extract_workers=2)
    with running_app(settings, embedder=embedder) as client:
        extractor: Extractor = services_of(client).extractor
        outcome: dict[str, httpx.Response] = {}

        def slow_put() -> None:
            outcome["slow"] = client.put(
                "/v1/documents/slow", json={"text": SLOW_HTML, "content_type": "text/html"}
            )

        thread = threading.Thread(target=slow_put)
        thread.start()
        (busy,) = wait_for(lambda: extractor.worker_pids(busy=True), "a worker to start the slow document")

        # Meanwhile: small HTML (in-process), a page (the other worker), plain text, reads. Count, not time.
        statuses = []
        for i in range(4):
            statuses.append(
                client.put(
                    f"/v1/documents/small-{i}", json={"text": f"<p>note {i}</p>", "content_type": "text/html"}
                ).status_code
            )
            statuses.append(
                client.put(
                    f"/v1/documents/page-{i}", json={"text": PAGE, "content_type": "text/html"}
                ).status_code
            )
            statuses.append(client.put(f"/v1/documents/text-{i}", json={"text": f"plain {i}"}).status_code)
            statuses.append(client.get("/v1/documents", params={"limit": 5}).status_code)
        assert statuses == [201, 201, 201, 200] * 4
        assert busy in extractor.worker_pids(busy=True)  # still on the slow document all along

        os.kill(busy, signal.SIGKILL)
        thread.join(timeout=120)
        assert not thread.is_alive()
        slow = outcome["slow"]
        assert slow.status_code == 503, slow.text
        assert "extraction worker died" in slow.json()["error"]["message"]
        assert client.get("/v1/documents/slow").status_code == 404

        # The pool replaced the worker and keeps extracting.
        wait_for(lambda: len(extractor.worker_pids()) == 2, "the pool to replace the killed worker")
        assert busy not in extractor.worker_pids()
        after = client.put("/v1/documents/page-after", json={"text": PAGE, "content_type": "text/html"})
        assert after.status_code == 201, after.text


def test_an_idle_worker_killed_from_outside_does_not_break_extraction(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    """pebble gives up on a pool whose worker dies with nothing running; the Extractor starts a new one."""
    with running_app(_budget_settings(tmp_path, extract_workers=1), embedder=embedder) as client:
        extractor: Extractor = services_of(client).extractor
        assert (
            client.put("/v1/documents/a", json={"text": PAGE, "content_type": "text/html"}).status_code == 201
        )
        (idle,) = extractor.worker_pids()
        os.kill(idle, signal.SIGKILL)
        wait_for(lambda: idle not in extractor.worker_pids(), "the killed worker to be noticed")
        statuses = [
            client.put(f"/v1/documents/b{i}", json={"text": PAGE, "content_type": "text/html"}).status_code
            for i in range(3)
        ]
        # At most the first request races the broken pool (503, retryable); the rest are served.
        assert statuses[1:] == [201, 201]
        assert statuses[0] in (201, 503)


async def _until(condition: Any) -> None:
    """Poll a state (not a time): asyncio.wait_for around the scenario bounds a hang."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0.05)


def test_a_cancelled_extraction_frees_its_worker() -> None:
    """A request cancelled mid-extraction (its client went away) kills the worker parsing for it, so a dropped
    connection does not keep burning a worker for EXTRACT_CPU_SECONDS; the pool replaces the worker."""

    async def scenario() -> None:
        settings = Settings(
            _env_file=None, extract_workers=1, extract_cpu_seconds=600, extract_timeout_seconds=600
        )
        extractor = Extractor(settings)
        try:
            task = asyncio.create_task(extractor.html(SLOW_HTML))
            await _until(lambda: extractor.worker_pids(busy=True))
            (busy,) = extractor.worker_pids(busy=True)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _until(lambda: extractor.worker_pids() and busy not in extractor.worker_pids())
            assert (
                await extractor.html(PAGE)
                == "Basalt\n\nBasalt columns form when thick lava flows cool slowly."
            )
        finally:
            extractor.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=120))


def test_running_out_of_memory_while_extracting_is_the_422_and_the_next_document_is_served() -> None:
    """Half a million paragraphs parse in ~200 MB and extraction adds more (marker nodes, text): across these
    budgets the allocation fails in the parse, in finding the block elements or in marking them. Each is the
    memory 422, never a 503 or a crash blamed on the document, and the replaced worker serves the next page."""

    async def scenario() -> None:
        for memory_mb in (200, 225, 250):
            extractor = Extractor(Settings(_env_file=None, extract_workers=1, extract_memory_mb=memory_mb))
            try:
                with pytest.raises(ExtractionLimitExceeded) as refused:
                    await extractor.html(HUGE_TREE_HTML)
                assert refused.value.details["limit"] == "EXTRACT_MEMORY_MB", memory_mb
                assert await extractor.html(PAGE) == (
                    "Basalt\n\nBasalt columns form when thick lava flows cool slowly."
                ), memory_mb
            finally:
                extractor.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=300))


def test_pdfs_are_always_extracted_in_a_worker(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    """A PDF's cost is not its size (a small file can inflate a compressed stream): it never parses inline."""
    with running_app(_budget_settings(tmp_path), embedder=embedder) as client:
        before = _extractions(client, "worker", "ok")
        data = make_pdf(["Photosynthesis makes sugar."])
        response = client.post("/v1/documents", files={"file": ("leaf.pdf", data, "application/pdf")})
        assert response.status_code == 201, response.text
        assert _extractions(client, "worker", "ok") == before + 1
        # A worker's own 422 (not a budget) comes back with its reason.
        bad = client.post("/v1/documents", files={"file": ("x.pdf", b"not a pdf at all", "application/pdf")})
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"]["code"] == "invalid_input"
        assert "no %PDF- header" in bad.json()["error"]["message"]
        inline_before = _extractions(client, "inline", "ok")
        small = client.put("/v1/documents/s", json={"text": "<p>tiny</p>", "content_type": "text/html"})
        assert small.status_code == 201
        assert _extractions(client, "inline", "ok") == inline_before + 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"extract_cpu_seconds": 30, "extract_timeout_seconds": 10},
            "EXTRACT_TIMEOUT_SECONDS must be at least",
        ),
        ({"extract_memory_mb": 64}, "extract_memory_mb"),
        ({"extract_workers": 0}, "extract_workers"),
        ({"extract_inline_max_bytes": 10_000_000}, "extract_inline_max_bytes"),
    ],
)
def test_nonsense_extraction_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(_env_file=None, **overrides)


def test_production_refuses_a_large_unbudgeted_inline_parse() -> None:
    keys = {"k" * 40: "tenant"}
    with pytest.raises(ValueError, match="EXTRACT_INLINE_MAX_BYTES above 65536 is refused"):
        Settings(_env_file=None, environment="production", api_keys=keys, extract_inline_max_bytes=200_000)
    Settings(_env_file=None, environment="production", api_keys=keys, extract_inline_max_bytes=65536)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_no_extraction_process_outlives_the_service_after_sigterm(tmp_path: Path) -> None:
    """`python -m service` (make serve, the image's CMD): SIGTERM runs the shutdown, which stops the workers and
    the forkserver they fork from."""
    with service_process({"DATA_DIR": str(tmp_path / "data")}, tmp_path / "service.log") as service:
        with service.client() as client:
            response = client.put("/v1/documents/page", json={"text": PAGE, "content_type": "text/html"})
            assert response.status_code == 201, response.text
        spawned = _descendants(service.proc.pid)
        assert len(spawned) >= 3, spawned  # the forkserver and EXTRACT_WORKERS (2) workers
        assert service.stop() in (0, -signal.SIGTERM), service.tail()  # uvicorn re-raises SIGTERM
        assert "Application shutdown complete" in service.tail()
        wait_for(lambda: not any(_alive(pid) for pid in spawned), "every extraction process to exit")


def test_workers_die_with_a_killed_api_process() -> None:
    """kill -9 of the API runs no shutdown: the forkserver sees its parent gone and exits, and its workers die
    with it (PR_SET_PDEATHSIG), so a restarted container or a crashed test leaves no parsers behind."""
    script = (
        "import asyncio, sys\n"
        "from service.app.core.config import Settings\n"
        "from service.app.ingest.sandbox import Extractor\n"
        "extractor = Extractor(Settings(_env_file=None))\n"
        f"asyncio.run(extractor.html({PAGE!r}))\n"
        "print(' '.join(map(str, extractor.worker_pids())), flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        spawned = _descendants(proc.pid)
        assert len(workers) == 2
        assert set(workers) <= spawned, (workers, spawned)
    finally:
        proc.kill()
        proc.wait()
    wait_for(
        lambda: not any(_alive(pid) for pid in spawned), "every extraction process to exit after kill -9"
    )
