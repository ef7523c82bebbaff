"""POST /v1/answer when the LLM provider answers 200 with something that is not a (non-empty) chat completion.

A captive portal or corporate proxy in front of LLM_BASE_URL, a web UI on the port, a provider incident: the
reply is invalid JSON, an HTML page, an event stream nobody asked for, JSON without `choices`, an error object,
an empty completion, a stream of broken events or a connection cut mid-stream. The provider is a real server
process on a loopback port (tests/support/openai_server.py, scripted with `raw` bodies and verbatim `events`),
the app is the real app; the tests check status, body, SSE events, the failure metric the RagLlmErrorRate alert
reads (`rag_llm_requests_total{outcome="error"}`, scraped from /metrics) and that nothing leaks a traceback or
the key. The cases are those of the new-user trial that found the 500s (EYES D2), plus the neighbours.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app.answer.service import NOT_SUPPORTED_ANSWER
from tests.service.support import llm_settings, running_app
from tests.support.llm_servers import ScriptedServer, openai_test_server
from tests.support.openai_server import chunk_json

API_KEY = "sk-test-9d2e7c41b0aa-never-leak-me"
VACATION = "Employees get 25 days of paid vacation per year. Unused days expire at the end of March."
QUESTION = {"query": "How many days of paid vacation do employees get?", "score_threshold": -1.0}
STREAM = {**QUESTION, "stream": True}


def raw(body: Any, content_type: str = "application/json", status: int = 200) -> dict[str, Any]:
    text = body if isinstance(body, str) else json.dumps(body)
    return {"raw": {"status": status, "content_type": content_type, "body": text}}


def completion(content: Any, finish_reason: str | None = "stop") -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice]}


GARBAGE = raw("{not json")
HTML = raw("<html><body>Proxy login required</body></html>", "text/html")
EMPTY_CHOICES = raw({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []})

# (behaviour, cause, words the message must contain) for a non-streamed answer
NON_STREAMED = {
    "invalid JSON": (GARBAGE, "bad_response", ["not JSON", "application/json"]),
    "an HTML page": (HTML, "bad_response", ["text/html", "HTML page"]),
    "an event stream": (raw("data: {broken\n\n", "text/event-stream"), "bad_response", ["text/event-stream"]),
    "JSON without choices": (raw({"object": "list", "data": []}), "bad_response", ["`choices` is NoneType"]),
    "a JSON array": (raw([1, 2]), "bad_response", ["JSON list"]),
    "JSON nested too deep": (raw("[" * 100_000 + "]" * 100_000), "bad_response", ["not JSON"]),
    "a 202 with no body": (raw("", "text/plain", status=202), "bad_response", ["text/plain, 0 bytes"]),
    # The provider's message echoes our Authorization header: it must not reach the client or the logs.
    "an error object": (
        raw({"error": {"message": f"denied for Bearer {API_KEY}", "type": "overloaded_error"}}),
        "bad_response",
        ["an error object (overloaded_error)"],
    ),
    "content that is not text": (raw(completion([{"type": "text"}])), "bad_response", ["content` is list"]),
    "choices []": (EMPTY_CHOICES, "empty_response", ["empty completion", "`choices` is []"]),
    "content null": (raw(completion(None, "length")), "empty_response", ["no text", "finish_reason length"]),
    "only whitespace": (raw(completion(" \n ")), "empty_response", ["no text", "finish_reason stop"]),
}

# (behaviour, cause) of a stream request that fails before its first token: a JSON 503, not an SSE 200
BEFORE_FIRST_TOKEN = {
    "invalid JSON": (GARBAGE, "bad_response"),
    "an HTML page": (HTML, "bad_response"),
    "choices []": (EMPTY_CHOICES, "empty_response"),
    "a broken event": ({"events": ["{broken"]}, "bad_response"),
    "an event of the wrong shape": ({"events": ['{"choices": 7}']}, "bad_response"),
    "only [DONE]": ({"events": []}, "empty_response"),
    "only blank pieces": ({"events": [chunk_json(""), chunk_json("  ")]}, "empty_response"),
    "a cut before any event": ({"events": [], "cut": True}, "connection"),
}

FIRST = chunk_json("Employees get 25 days [1]")
# (behaviour, cause) of a stream that fails after its first token: 200, tokens, then one `error` event
MID_STREAM = {
    "a broken event": ({"events": [FIRST, "{broken"]}, "bad_response"),
    "a connection cut": ({"events": [FIRST], "cut": True}, "connection"),
    "an error event": ({"events": [FIRST, '{"error": {"message": "overloaded"}}']}, "server_error"),
}


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedServer]:
    with openai_test_server() as server:
        yield server


def settings(tmp_path: Path, server: ScriptedServer, **overrides: Any) -> Any:
    # Many failures in a row on purpose: the breaker has its own test below.
    return llm_settings(tmp_path, server.base_url, API_KEY, **{"llm_circuit_failures": 1000, **overrides})


def seeded(client: TestClient) -> TestClient:
    body = {"text": VACATION, "content_type": "text/plain"}
    assert client.put("/v1/documents/handbook:vacation", json=body).status_code == 201
    return client


@pytest.fixture(scope="module")
def client(
    llm: ScriptedServer, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    with running_app(settings(tmp_path_factory.mktemp("answers"), llm), embedder=embedder) as app:
        yield seeded(app)


@pytest.fixture
def server(llm: ScriptedServer) -> ScriptedServer:
    llm.reset()
    return llm


def metric(client: TestClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} is not exported")


ERRORS = 'rag_llm_requests_total{outcome="error"}'
OKS = 'rag_llm_requests_total{outcome="ok"}'


def cause_series(cause: str) -> str:
    return f'rag_llm_errors_total{{cause="{cause}"}}'


def sse_events(text: str) -> list[tuple[str, Any]]:
    events, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name:
            events.append((name, json.loads(line.removeprefix("data: "))))
            name = None
    return events


def assert_no_leak(text: str) -> None:
    assert "Traceback" not in text
    assert API_KEY not in text
    assert API_KEY[:12] not in text


@pytest.mark.parametrize("case", NON_STREAMED)
def test_a_malformed_reply_is_a_503_naming_the_provider_problem(
    case: str,
    client: TestClient,
    server: ScriptedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    behaviour, cause, words = NON_STREAMED[case]
    server.script(behaviour)
    errors, by_cause, oks = metric(client, ERRORS), metric(client, cause_series(cause)), metric(client, OKS)
    caplog.set_level(logging.DEBUG)
    out = io.StringIO()
    with redirect_stdout(out):
        response = client.post("/v1/answer", json=QUESTION)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert error["cause"] == cause
    status = behaviour["raw"]["status"]
    verb = (
        f"answered {status} with a body that is not a chat completion"
        if cause == "bad_response"
        else "answered"
    )
    assert error["message"].startswith(f"the LLM at {server.base_url} {verb}")
    for word in words:
        assert word in error["message"]
    assert_no_leak(response.text)
    assert_no_leak(caplog.text + out.getvalue())
    assert len(server.requests()) == 1
    assert metric(client, ERRORS) == errors + 1
    assert metric(client, cause_series(cause)) == by_cause + 1
    assert metric(client, OKS) == oks


@pytest.mark.parametrize("case", BEFORE_FIRST_TOKEN)
def test_a_stream_that_fails_before_its_first_token_is_a_503_not_an_empty_200(
    case: str, client: TestClient, server: ScriptedServer
) -> None:
    behaviour, cause = BEFORE_FIRST_TOKEN[case]
    server.script(behaviour)
    errors = metric(client, ERRORS)
    response = client.post("/v1/answer", json=STREAM)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["cause"] == cause
    assert server.base_url in response.json()["error"]["message"] or cause == "connection"
    assert_no_leak(response.text)
    assert metric(client, ERRORS) == errors + 1


@pytest.mark.parametrize("case", MID_STREAM)
def test_a_stream_that_fails_mid_answer_ends_with_an_error_event_and_no_citations(
    case: str, client: TestClient, server: ScriptedServer
) -> None:
    behaviour, cause = MID_STREAM[case]
    server.script(behaviour)
    errors = metric(client, ERRORS)
    response = client.post("/v1/answer", json=STREAM)
    assert response.status_code == 200
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-1] == "error", names
    assert set(names[:-1]) == {"token"}  # no `citations` for an answer that was not produced, no `usage`
    assert "".join(data["text"] for name, data in events if name == "token") == "Employees get 25 days [1]"
    error = events[-1][1]["error"]
    assert error["code"] == "service_unavailable"
    assert error["cause"] == cause
    assert_no_leak(response.text)
    assert metric(client, ERRORS) == errors + 1


def test_a_whole_completion_in_reply_to_a_stream_request_is_streamed_as_one_piece(
    client: TestClient, server: ScriptedServer
) -> None:
    # Some proxies and servers ignore `stream`: a valid completion is still an answer.
    server.script(raw(completion("Employees get 25 days [1].")))
    response = client.post("/v1/answer", json=STREAM)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["token", "citations", "usage"]
    assert events[0][1]["text"] == "Employees get 25 days [1]."
    assert [c["n"] for c in events[1][1]["citations"]] == [1]


def test_a_reply_of_only_unknown_markers_is_not_presented_as_an_answer(
    client: TestClient, server: ScriptedServer
) -> None:
    server.script(raw(completion("[7] [9]")), {"events": [chunk_json("[7]"), chunk_json(" [9]")]})
    body = client.post("/v1/answer", json=QUESTION).json()
    assert body["answer"] == NOT_SUPPORTED_ANSWER
    assert body["citations"] == []
    events = sse_events(client.post("/v1/answer", json=STREAM).text)
    assert events[0] == ("token", {"text": NOT_SUPPORTED_ANSWER})
    assert events[1] == ("citations", {"citations": []})


def test_malformed_replies_open_the_circuit(tmp_path: Path, embedder: Any, server: ScriptedServer) -> None:
    server.script(GARBAGE, HTML)
    overrides = {"llm_circuit_failures": 2, "llm_circuit_reset_seconds": 600}
    with running_app(settings(tmp_path, server, **overrides), embedder=embedder) as app:
        client = seeded(app)
        assert client.post("/v1/answer", json=QUESTION).json()["error"]["cause"] == "bad_response"
        assert client.post("/v1/answer", json=STREAM).json()["error"]["cause"] == "bad_response"
        refused = client.post("/v1/answer", json=QUESTION)
    assert refused.status_code == 503
    assert refused.json()["error"]["cause"] == "circuit_open"
    assert len(server.requests()) == 2  # the open circuit never reached the provider


def test_a_stream_that_stalls_mid_answer_ends_with_a_timeout_error_event(
    tmp_path: Path, embedder: Any, server: ScriptedServer
) -> None:
    server.script({"events": [FIRST], "stall": 30})
    with running_app(settings(tmp_path, server, llm_timeout_seconds=0.5), embedder=embedder) as app:
        response = seeded(app).post("/v1/answer", json=STREAM)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["token", "error"]
    assert events[-1][1]["error"]["cause"] == "timeout"
