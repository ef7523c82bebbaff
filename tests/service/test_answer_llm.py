"""POST /v1/answer with an LLM: a real OpenAI-compatible server process on loopback, the official client.

The server (tests/support/openai_server.py) is scripted per test to answer, stream, fail with 429/5xx/400, stall
past the timeout, or stream forever until the client goes away. Tests assert what the service returns AND what
the server saw (how many calls arrived, whether a stream was cut), never how long anything took.
"""

from __future__ import annotations

import gc
import io
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app.answer.models import AnswerRequest
from service.app.answer.prompt import TokenizerCounter, build_prompt
from service.app.api.routes.answer import answer_question
from service.app.core.metrics import LLM_ERRORS, LLM_REQUESTS
from service.app.main import create_app
from service.app.search.models import SearchResult
from tests.service.support import llm_settings as provider_settings
from tests.service.support import running_app
from tests.support.llm_servers import ScriptedServer, openai_test_server
from tests.support.servers import free_port

API_KEY = "sk-test-4f1c9e2ab7d0-never-log-me"
VACATION = "Employees get 25 days of paid vacation per year. Unused days expire at the end of March."
PARKING = "Parking permits cost 40 euros per month. Bicycles park for free in the basement."
# Threshold -1: both documents become sources, so [1] and [2] are valid and [7]/[8]/[9] are not.
QUESTION = {"query": "How many days of paid vacation do employees get?", "score_threshold": -1.0}


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedServer]:
    with openai_test_server() as server:
        yield server


@pytest.fixture
def server(llm: ScriptedServer) -> ScriptedServer:
    llm.reset()
    return llm


def llm_settings(tmp_path: Path, server: ScriptedServer, **overrides: Any) -> Any:
    return provider_settings(tmp_path, server.base_url, API_KEY, **overrides)


def seed(client: TestClient) -> None:
    for doc_id, text in (("handbook:vacation", VACATION), ("handbook:parking", PARKING)):
        body = {"text": text, "content_type": "text/plain"}
        assert client.put(f"/v1/documents/{doc_id}", json=body).status_code == 201


@contextmanager
def llm_app(tmp_path: Path, embedder: Any, server: ScriptedServer, **overrides: Any) -> Iterator[TestClient]:
    with running_app(llm_settings(tmp_path, server, **overrides), embedder=embedder) as client:
        seed(client)
        yield client


def sse_events(text: str) -> list[tuple[str, str]]:
    events, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name:
            events.append((name, line.removeprefix("data: ")))
            name = None
    return events


def test_answer_cites_valid_sources_and_drops_markers_to_nothing(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    server.default(reply="Employees get 25 days [1]. Parking is separate [2, 9]. Also [7].")
    with llm_app(tmp_path, embedder, server) as client:
        response = client.post("/v1/answer", json=QUESTION)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == "Employees get 25 days [1]. Parking is separate [2]. Also."
    assert [c["n"] for c in body["citations"]] == [1, 2]
    assert body["citations"][0]["document_id"] == "handbook:vacation"
    assert body["model"] == "test-model"
    assert body["generator"] == "llm"
    assert body["usage"]["estimated"] is False
    assert body["usage"]["total_tokens"] > 0
    (call,) = server.requests()
    assert call["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert call["body"]["model"] == "test-model"
    assert call["body"]["max_tokens"] == 512
    user = call["body"]["messages"][-1]["content"]
    assert "[1] (from handbook:vacation" in user
    assert "25 days of paid vacation" in user
    assert user.rstrip().endswith(QUESTION["query"])


def test_no_relevant_chunk_means_no_llm_call(tmp_path: Path, embedder: Any, server: ScriptedServer) -> None:
    with llm_app(tmp_path, embedder, server) as client:
        body = client.post("/v1/answer", json={"query": "gluon plasma in neutron stars"}).json()
        streamed = client.post("/v1/answer", json={"query": "gluon plasma in neutron stars", "stream": True})
    assert body["generator"] == "no_context"
    assert body["citations"] == []
    assert [name for name, _ in sse_events(streamed.text)] == ["token", "citations", "usage"]
    assert server.requests() == []


def test_stream_sends_tokens_then_citations_then_usage(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    # One character per chunk: every marker arrives split over several tokens.
    server.default(reply="Employees get 25 days [1][8]. See [2].", piece_chars=1)
    with llm_app(tmp_path, embedder, server) as client:
        response = client.post("/v1/answer", json={**QUESTION, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-2:] == ["citations", "usage"]
    assert set(names[:-2]) == {"token"}
    import json

    text = "".join(json.loads(data)["text"] for name, data in events if name == "token")
    assert text == "Employees get 25 days [1]. See [2]."
    citations = json.loads(events[-2][1])["citations"]
    assert [c["n"] for c in citations] == [1, 2]
    usage = json.loads(events[-1][1])
    assert usage["model"] == "test-model"
    assert usage["usage"]["estimated"] is False
    assert server.requests()[0]["body"]["stream_options"] == {"include_usage": True}


def test_429_is_retried_with_the_providers_delay(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    server.script({"status": 429, "headers": {"retry-after-ms": "10"}}, {"status": 503})
    with llm_app(tmp_path, embedder, server, llm_max_retries=2) as client:
        response = client.post("/v1/answer", json=QUESTION)
    assert response.status_code == 200, response.text
    assert len(server.requests()) == 3


def test_retries_exhausted_is_503_naming_the_cause(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    server.script(*[{"status": 500, "headers": {"retry-after-ms": "1"}}] * 3)
    before = LLM_ERRORS.labels(cause="server_error")._value.get()
    with llm_app(tmp_path, embedder, server, llm_max_retries=2) as client:
        response = client.post("/v1/answer", json=QUESTION)
    assert response.status_code == 503
    assert response.json()["error"]["cause"] == "server_error"
    assert len(server.requests()) == 3
    assert LLM_ERRORS.labels(cause="server_error")._value.get() == before + 1


def test_a_stalled_provider_times_out(tmp_path: Path, embedder: Any, server: ScriptedServer) -> None:
    server.script({"delay": 30})
    with llm_app(tmp_path, embedder, server, llm_timeout_seconds=0.5) as client:
        response = client.post("/v1/answer", json=QUESTION)
    assert response.status_code == 503
    assert response.json()["error"]["cause"] == "timeout"


def test_the_circuit_opens_after_repeated_failures(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    server.script({"status": 500}, {"status": 502})
    with llm_app(tmp_path, embedder, server, llm_circuit_failures=2, llm_circuit_reset_seconds=600) as client:
        assert client.post("/v1/answer", json=QUESTION).status_code == 503
        assert client.post("/v1/answer", json=QUESTION).status_code == 503
        refused = client.post("/v1/answer", json=QUESTION)
        streamed = client.post("/v1/answer", json={**QUESTION, "stream": True})
    assert refused.status_code == 503
    assert refused.json()["error"]["cause"] == "circuit_open"
    assert 500 <= int(refused.headers["retry-after"]) <= 601
    assert streamed.status_code == 503
    assert streamed.json()["error"]["cause"] == "circuit_open"
    assert len(server.requests()) == 2  # the open circuit never reached the provider


def test_client_errors_do_not_open_the_circuit(tmp_path: Path, embedder: Any, server: ScriptedServer) -> None:
    server.script({"status": 400}, {"status": 401})
    with llm_app(tmp_path, embedder, server, llm_circuit_failures=1) as client:
        assert client.post("/v1/answer", json=QUESTION).json()["error"]["cause"] == "bad_request"
        assert client.post("/v1/answer", json=QUESTION).json()["error"]["cause"] == "auth"
        assert client.post("/v1/answer", json=QUESTION).status_code == 200


def test_a_spent_token_budget_is_429_with_retry_after(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    with llm_app(tmp_path, embedder, server, llm_token_budget="30/hour") as client:
        first = client.post("/v1/answer", json=QUESTION)
        second = client.post("/v1/answer", json=QUESTION)
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] > 30
    assert second.status_code == 429
    assert 1 <= int(second.headers["retry-after"]) <= 3600
    assert "token budget" in second.json()["error"]["message"]
    assert len(server.requests()) == 1


def test_the_token_budget_is_shared_through_redis(
    tmp_path: Path, embedder: Any, server: ScriptedServer, redis_url: str
) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    overrides = {"llm_token_budget": "30/hour", "redis_url": redis_url, "cache_enabled": False}
    with llm_app(tmp_path / "a", embedder, server, **overrides) as replica_a:
        assert replica_a.post("/v1/answer", json=QUESTION).status_code == 200
    with llm_app(tmp_path / "b", embedder, server, **overrides) as replica_b:
        assert replica_b.post("/v1/answer", json=QUESTION).status_code == 429


def test_the_api_key_never_appears_in_logs(
    tmp_path: Path, embedder: Any, server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script({"status": 401}, {"status": 500}, {"delay": 30})
    out = io.StringIO()
    caplog.set_level(logging.DEBUG)  # every logger, the openai package's and httpx's included
    with (
        redirect_stdout(out),
        llm_app(
            tmp_path,
            embedder,
            server,
            log_level="DEBUG",
            log_json=True,
            llm_timeout_seconds=0.5,
            llm_max_retries=1,
        ) as client,
    ):
        for _ in range(4):
            client.post("/v1/answer", json=QUESTION)
        client.post("/v1/answer", json={**QUESTION, "stream": True})
    assert any(r.name.startswith("openai") for r in caplog.records)  # the client did log, at debug level
    assert "LLM call failed" in caplog.text
    assert API_KEY not in caplog.text
    assert API_KEY not in out.getvalue()
    assert API_KEY[:12] not in caplog.text + out.getvalue()


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app on a real uvicorn server in a thread, so a client can really disconnect."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            thread.join(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def test_client_disconnect_stops_the_upstream_stream(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    server.default(reply="Employees get 25 days [1].", piece_chars=3, hang=True)
    cancelled = LLM_REQUESTS.labels(outcome="cancelled")._value.get()
    with running_app(llm_settings(tmp_path, server), embedder=embedder) as client:
        seed(client)
    app = create_app(llm_settings(tmp_path, server), embedder=embedder)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/answer", json={**QUESTION, "stream": True}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("event: ")) == "event: token"
            (hanging,) = server.wait_events("hanging")
            # Leaving the block closes the connection mid-stream: the user closed the tab.
        (disconnected,) = server.wait_events("disconnected")
    assert disconnected["pieces"] == hanging["pieces"]
    assert LLM_REQUESTS.labels(outcome="cancelled")._value.get() == cancelled + 1


def test_the_prompt_keeps_the_best_sources_that_fit(embedder: Any) -> None:
    counter = TokenizerCounter(embedder.tokenizer, name="minilm")
    long = SearchResult(document_id="long", chunk_index=0, text="word " * 600, score=0.9, metadata={})
    short = SearchResult(
        document_id="short", chunk_index=3, text="Vacation is 25 days.", score=0.8, metadata={}
    )
    prompt = build_prompt("How much vacation?", [long, short], counter, context_tokens=1024, max_tokens=512)
    assert [(s.n, s.result.document_id) for s in prompt.sources] == [(1, "short")]
    counted = sum(counter.count(m["content"]) for m in prompt.messages)
    assert counted <= prompt.prompt_tokens <= 1024 - 512
    roomy = build_prompt("How much vacation?", [long, short], counter, context_tokens=4096, max_tokens=512)
    assert [s.result.document_id for s in roomy.sources] == ["long", "short"]


def test_a_client_gone_before_the_first_event_closes_the_upstream_stream(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    """The SSE response's iteration never starts when sending its start fails (ASGI servers raise OSError on a
    send to a closed connection) or its task group is cancelled first: the answer's events were a generator
    never started, whose finally never ran, so the upstream response stayed open until garbage collection.
    Collection is off here and every object is kept alive: only an explicit close can end the upstream."""
    server.default(reply="Employees get 25 days [1].", piece_chars=3, hang=True)
    cancelled = LLM_REQUESTS.labels(outcome="cancelled")._value.get()
    kept: list[Any] = []

    async def client_already_gone(client: TestClient) -> None:
        services = client.app.state.services  # type: ignore[attr-defined]
        events = await services.answer.open_stream("default", AnswerRequest(**QUESTION, stream=True))
        response = await answer_question(AnswerRequest(**QUESTION, stream=True), services, "default")
        kept.extend([events, response])
        scope = {"type": "http", "method": "POST", "path": "/v1/answer", "headers": []}

        async def receive() -> dict[str, Any]:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            raise OSError("the client closed the connection")

        with pytest.raises(OSError, match="closed the connection"):
            await response(scope, receive, send)
        # The first stream (never given to a response) is closed explicitly, as the route's response does.
        await events.aclose()

    gc.disable()
    try:
        with llm_app(tmp_path, embedder, server) as client:
            client.portal.call(client_already_gone, client)  # type: ignore[union-attr]
            disconnected = server.wait_events("disconnected", count=2)
    finally:
        gc.enable()
    assert len(disconnected) == 2
    assert LLM_REQUESTS.labels(outcome="cancelled")._value.get() == cancelled + 2
