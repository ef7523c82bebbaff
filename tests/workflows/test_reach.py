"""`ragops status` and `ragops smoke` against real servers on loopback: a small HTTP server for /readyz answers
(ready, not ready, gone) and the real service process (`python -m service`, SQLite + local Qdrant, API keys on)
for the smoke check a workflow runs after every `up`. The stack outputs come from the fake Pulumi backend, so
the path is the one a user takes: `ragops up`, then `ragops status`, then `ragops smoke`, then their own search."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from infra.workflows.cli import app
from infra.workflows.stacks import Context
from tests.support.processes import api_process
from tests.support.servers import free_port, json_server
from tests.workflows.fake_pulumi import DIGEST, FakeBackend

runner = CliRunner()
KEY = "smoke-test-key-0123456789abcdef"


def _invoke(ctx: Context, *args: str):
    return runner.invoke(app, list(args), obj=ctx)


@pytest.fixture
def readyz_server() -> Iterator[ThreadingHTTPServer]:
    """A real HTTP server on a loopback port whose /readyz answers `server.readyz_status`."""

    def answer(path: str) -> tuple[int, dict]:
        status = server.readyz_status  # type: ignore[attr-defined]
        ok = status == 200
        body = {
            "status": "ok" if ok else "unavailable",
            "checks": {"qdrant": "ok", "redis": "ok" if ok else "failed"},
        }
        return (status if path == "/readyz" else 404), body

    with json_server(answer) as server:
        server.readyz_status = 200  # type: ignore[attr-defined]
        yield server


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


PROMOTION = {"from": "dev", "digest": DIGEST, "at": "2026-03-01T12:00:00Z", "by": "octocat"}


def test_status_prints_url_image_promotion_and_live_readyz(
    ctx: Context, backend: FakeBackend, readyz_server: ThreadingHTTPServer
) -> None:
    backend.add_stack(
        "staging",
        outputs={
            "serviceUrl": _url(readyz_server),
            "imageDigest": DIGEST,
            "promotion": PROMOTION,
            "tlsIssuer": "letsencrypt-staging",
            "grafana": {
                "portForward": "kubectl -n monitoring port-forward svc/g 3000:80",
                "url": "http://localhost:3000",
            },
        },
    )
    result = _invoke(ctx, "status", "-s", "staging")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"url:       {_url(readyz_server)}" in out
    assert f"image:     {DIGEST}" in out
    assert "promotion: from dev by octocat at 2026-03-01T12:00:00Z" in out
    assert "rollback:" not in out
    assert "readyz:    ready (HTTP 200; qdrant ok, redis ok)" in out
    assert "kubectl -n monitoring port-forward svc/g 3000:80" in out
    assert "pulumi stack output apiKeys --show-secrets -s staging" in out

    readyz_server.readyz_status = 503  # type: ignore[attr-defined]
    assert (
        "readyz:    NOT ready (HTTP 503; qdrant ok, redis failed)"
        in _invoke(ctx, "status", "-s", "staging").output
    )


def test_status_of_an_unreachable_url_says_so(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev", outputs={"serviceUrl": f"http://127.0.0.1:{free_port()}", "imageDigest": DIGEST})
    result = _invoke(ctx, "status", "-s", "dev")
    assert result.exit_code == 0, result.output
    assert "readyz:    unreachable (ConnectError" in result.output
    assert "promotion: - (built from source, not promoted)" in result.output


def test_status_of_a_missing_stack_hints_at_the_backend(ctx: Context, backend: FakeBackend) -> None:
    result = _invoke(ctx, "status", "-s", "qa")
    assert result.exit_code == 1
    assert "pulumi failed: error: no stack named 'qa' found" in result.output
    out = " ".join(result.output.split())
    assert "hint: the stack is not in the backend you are logged in to" in out
    assert "stack init" not in out


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service (`python -m service`) on a free loopback port, API keys on, embedded stores."""
    data = tmp_path_factory.mktemp("service-data")
    with api_process(
        data,
        ready_path="/readyz",
        data_dir=str(data),
        api_keys=json.dumps({KEY: "default"}),
        environment="development",
        log_level="WARNING",
        rate_limit_enabled="false",
    ) as url:
        yield url


def test_a_user_goes_from_up_to_a_first_search_on_the_deployed_url(
    ctx: Context, backend: FakeBackend, service_url: str, tmp_path: Path
) -> None:
    """The README's first-run path: `ragops up`, `ragops status`, `ragops smoke`, then a search with the key."""
    backend.add_stack("dev", resources=0)
    backend.script("dev").up_outputs = {"serviceUrl": service_url, "apiKeys": json.dumps({KEY: "default"})}

    transcript = []
    for args in (("up", "-s", "dev", "-q"), ("status", "-s", "dev"), ("smoke", "-s", "dev", "--wait", "30")):
        result = _invoke(ctx, *args)
        transcript.append(f"$ ragops {' '.join(args)}\n{result.output}")
        assert result.exit_code == 0, "\n".join(transcript)
    (tmp_path / "transcript.txt").write_text("\n".join(transcript))
    print("\n".join(transcript))  # shown with -s: the transcript docs/delivery.md quotes

    up, status, smoke = transcript
    assert "up dev: 12 create" in up
    assert f"url:       {service_url}" in status
    assert "readyz:    ready (HTTP 200" in status
    assert "GET /readyz: ready" in smoke
    assert "PUT /v1/documents/ragops-smoke-" in smoke
    assert "POST /v1/search: found ragops-smoke-" in smoke
    assert "POST /v1/answer: " in smoke
    assert "answered with 1 citation(s)" in smoke
    assert "DELETE /v1/documents/ragops-smoke-" in smoke
    assert "smoke check of dev passed" in smoke

    # What the user does next with the secret output: ingest and search their own document.
    key = json.loads(backend.stacks["dev"].outputs["apiKeys"])
    auth = {"Authorization": f"Bearer {next(iter(key))}"}
    put = httpx.put(
        f"{service_url}/v1/documents/handbook",
        json={"text": "Our office plants are watered every Tuesday by the facilities team."},
        headers=auth,
        timeout=60,
    )
    assert put.status_code in (200, 201), put.text
    found = httpx.post(
        f"{service_url}/v1/search", json={"query": "when are the plants watered?"}, headers=auth, timeout=60
    )
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["document_id"] == "handbook"
    # The smoke check cleaned up after itself: only the user's document is left.
    listed = httpx.get(f"{service_url}/v1/documents", headers=auth, timeout=30).json()
    ids = [d["document_id"] for d in listed.get("documents", listed.get("items", []))]
    assert not [i for i in ids if i.startswith("ragops-smoke-")], ids


def test_smoke_with_a_wrong_key_fails_naming_the_step(
    ctx: Context, backend: FakeBackend, service_url: str
) -> None:
    backend.add_stack(
        "dev", outputs={"serviceUrl": service_url, "apiKeys": json.dumps({"not-the-key": "default"})}
    )
    result = _invoke(ctx, "smoke", "-s", "dev", "--wait", "10")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert out.startswith("smoke check failed: PUT /v1/documents/ragops-smoke-")
    assert "expected HTTP 200/201, got 401" in out


def test_smoke_fails_when_readyz_never_turns_ready(
    ctx: Context, backend: FakeBackend, readyz_server: ThreadingHTTPServer
) -> None:
    readyz_server.readyz_status = 503  # type: ignore[attr-defined]
    backend.add_stack(
        "dev", outputs={"serviceUrl": _url(readyz_server), "apiKeys": json.dumps({KEY: "default"})}
    )
    result = _invoke(ctx, "smoke", "-s", "dev", "--wait", "0")
    assert result.exit_code == 1
    assert "NOT ready (HTTP 503; qdrant ok, redis failed)" in " ".join(result.output.split())


def test_smoke_of_a_localhost_name_says_it_only_resolves_here(ctx: Context, backend: FakeBackend) -> None:
    port = free_port()  # nothing listens: a stack deployed elsewhere under a loopback name is unreachable
    backend.add_stack(
        "dev", outputs={"serviceUrl": f"http://rag.localtest.me:{port}", "apiKeys": json.dumps({KEY: "d"})}
    )
    result = _invoke(ctx, "smoke", "-s", "dev", "--wait", "0")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "unreachable" in out
    assert "rag.localtest.me resolves to the machine running ragops: set rag:gateway.hostname" in out


def test_smoke_without_an_api_key_output_refuses(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack("dev", outputs={"serviceUrl": "http://127.0.0.1:9"})
    result = _invoke(ctx, "smoke", "-s", "dev")
    assert result.exit_code == 1
    assert "exports no apiKeys output" in result.output


def test_status_says_when_the_stack_runs_a_rolled_back_release(
    ctx: Context, backend: FakeBackend, readyz_server: ThreadingHTTPServer
) -> None:
    rollback = {
        "toUpdate": 7,
        "replaced": "r/x@sha256:" + "e" * 64,
        "at": "2026-03-02T09:00:00Z",
        "by": "oncall",
    }
    backend.add_stack(
        "prod",
        outputs={
            "serviceUrl": _url(readyz_server),
            "imageDigest": DIGEST,
            "promotion": {**PROMOTION, "rollback": rollback},
        },
    )
    result = _invoke(ctx, "status", "-s", "prod")
    assert result.exit_code == 0, result.output
    assert (
        f"rollback:  to update 7 by oncall at 2026-03-02T09:00:00Z (replaced {rollback['replaced']})"
        in result.output
    )


def test_smoke_fails_when_the_extractive_answer_does_not_cite_the_document() -> None:
    """An abstention ("None of the retrieved passages answers ...", no citation) is not an answer: the smoke check
    names the step, and still deletes its document."""
    from infra.workflows.reach import SmokeFailure, StackInfo, smoke

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        doc = request.url.path.rsplit("/", 1)[-1]
        if request.url.path == "/readyz":
            return httpx.Response(200, json={"status": "ok"})
        if request.method == "PUT":
            return httpx.Response(201, json={"status": "created", "chunks": 1})
        if request.url.path == "/v1/search":
            return httpx.Response(200, json={"results": [{"document_id": seen[1].rsplit("/", 1)[-1]}]})
        if request.url.path == "/v1/answer":
            body = {
                "answer": "None of the retrieved passages answers this question directly.",
                "citations": [],
            }
            return httpx.Response(200, json={**body, "generator": "extractive", "model": "extractive"})
        return httpx.Response(204 if request.method == "DELETE" and doc.startswith("ragops-smoke-") else 404)

    info = StackInfo("dev", "http://svc", None, None, None, None, api_keys={KEY: "default"})
    with pytest.raises(SmokeFailure, match=r"POST /v1/answer did not answer from the document just ingested"):
        smoke(info, wait_seconds=0, transport=httpx.MockTransport(handler))
    assert seen[-1].startswith("DELETE /v1/documents/ragops-smoke-")
