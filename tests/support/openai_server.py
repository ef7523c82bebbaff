"""An OpenAI-compatible Chat Completions server for tests, run as its own process (`python -m ...`).

It speaks the wire format exactly as the official `openai` package defines it: every body and every
``data:`` line of a stream is a `ChatCompletion`/`ChatCompletionChunk` from ``openai.types`` serialised by
pydantic, streams end with ``data: [DONE]``, errors use OpenAI's ``{"error": {...}}`` body. What it does for
the next calls is scripted over HTTP, so tests can produce what a provider does on a bad day:

    POST /_script  [{"status": 429, "headers": {"retry-after-ms": "1"}}, {"reply": "..."}]   next calls, in order
    POST /_default {"reply": "...", "piece_chars": 3}                                        after the script
    GET  /_requests                     every call received: path, headers, JSON body
    GET  /_events?kind=disconnected&count=1&timeout=30   waits until the server saw that many such events

Behaviours: ``status`` (an error answer), ``delay`` (seconds before answering: for client timeouts),
``reply`` + ``piece_chars`` (the answer, streamed in pieces of that many characters), ``hang`` (stream the
reply, then keep the stream open sending nothing but empty pieces until the client disconnects: for
cancellation), ``usage`` (false: report no usage).

Malformed replies, for the failure tests: ``raw`` ``{"status", "content_type", "body"}`` answers exactly that
body (invalid JSON, an HTML page, ``choices: []``...), streamed or not; ``events`` (a list of ``data:`` payloads
sent verbatim as a stream, e.g. a valid chunk then ``{broken``) with ``stall`` (seconds of silence after them:
for a read timeout mid-stream) and ``cut`` (true: then drop the connection, without ending the chunked body or
sending ``[DONE]``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvicorn
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_REPLY = "Employees get 25 days of paid vacation [1]."


class State:
    def __init__(self) -> None:
        self.script: list[dict[str, Any]] = []
        self.default: dict[str, Any] = {"reply": DEFAULT_REPLY, "piece_chars": 4}
        self.requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()

    async def record(self, event: dict[str, Any]) -> None:
        async with self.changed:
            self.events.append(event)
            self.changed.notify_all()


STATE = State()


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _usage(body: dict[str, Any], reply: str) -> CompletionUsage:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion = len(reply.split())
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _chunk(model: str, *, content: str | None = None, finish: str | None = None, **extra: Any) -> str:
    choices = (
        []
        if "usage" in extra
        else [
            ChunkChoice(index=0, delta=ChoiceDelta(role="assistant", content=content), finish_reason=finish)
        ]
    )
    chunk = ChatCompletionChunk(
        id="chatcmpl-test",
        object="chat.completion.chunk",
        created=int(time.time()),
        model=model,
        choices=choices,
        **extra,
    )
    return f"data: {chunk.model_dump_json()}\n\n"


class Cut(Exception):
    """Raised inside a streaming body: uvicorn drops the connection mid-body (no final chunk)."""


async def _verbatim(payloads: list[str], *, cut: bool, stall: float):
    for payload in payloads:
        yield f"data: {payload}\n\n"
    if stall:
        await asyncio.sleep(stall)
    if cut:
        raise Cut("scripted connection cut")
    yield "data: [DONE]\n\n"


def chunk_json(content: str, model: str = "test-model") -> str:
    """One valid stream chunk's JSON, for scripting ``events``."""
    return _chunk(model, content=content).removeprefix("data: ").strip()


async def chat_completions(request: Request) -> Response:
    body = await request.json()
    STATE.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
    behaviour = STATE.script.pop(0) if STATE.script else dict(STATE.default)
    if behaviour.get("delay"):
        await asyncio.sleep(float(behaviour["delay"]))
    if behaviour.get("status"):
        status = int(behaviour["status"])
        error = {
            "message": f"scripted {status}",
            "type": "server_error" if status >= 500 else "invalid_request_error",
        }
        return JSONResponse({"error": error}, status_code=status, headers=behaviour.get("headers"))
    model = body.get("model", "test-model")
    if "raw" in behaviour:
        raw = behaviour["raw"]
        return Response(
            str(raw.get("body", "")).encode(),
            status_code=int(raw.get("status", 200)),
            headers={"content-type": str(raw.get("content_type", "application/json"))},
        )
    if "events" in behaviour:
        return StreamingResponse(
            _verbatim(
                behaviour["events"], cut=bool(behaviour.get("cut")), stall=float(behaviour.get("stall", 0))
            ),
            media_type="text/event-stream",
        )
    reply = str(behaviour.get("reply", DEFAULT_REPLY))
    usage = _usage(body, reply) if behaviour.get("usage", True) else None
    if not body.get("stream"):
        completion = ChatCompletion(
            id="chatcmpl-test",
            object="chat.completion",
            created=int(time.time()),
            model=model,
            choices=[
                Choice(
                    index=0,
                    message=ChatCompletionMessage(role="assistant", content=reply),
                    finish_reason="stop",
                )
            ],
            usage=usage,
        )
        return Response(completion.model_dump_json(), media_type="application/json")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    async def events():
        sent = 0
        try:
            for piece in _pieces(reply, int(behaviour.get("piece_chars", 4))):
                yield _chunk(model, content=piece)
                sent += 1
            if behaviour.get("hang"):
                await STATE.record({"kind": "hanging", "pieces": sent})
                while True:  # a model that never stops: only the client going away ends this
                    await asyncio.sleep(0.05)
                    yield _chunk(model, content="")
            yield _chunk(model, finish="stop")
            if include_usage and usage is not None:
                yield _chunk(model, usage=usage)
            yield "data: [DONE]\n\n"
            await STATE.record({"kind": "completed", "pieces": sent})
        except (asyncio.CancelledError, OSError):
            await asyncio.shield(STATE.record({"kind": "disconnected", "pieces": sent}))
            raise

    return StreamingResponse(events(), media_type="text/event-stream")


async def script(request: Request) -> Response:
    STATE.script.extend(await request.json())
    return JSONResponse({"queued": len(STATE.script)})


async def default(request: Request) -> Response:
    STATE.default = await request.json()
    return JSONResponse(STATE.default)


async def reset(_request: Request) -> Response:
    STATE.script.clear()
    STATE.requests.clear()
    STATE.events.clear()
    STATE.default = {"reply": DEFAULT_REPLY, "piece_chars": 4}
    return JSONResponse({})


async def requests(_request: Request) -> Response:
    return JSONResponse(STATE.requests)


async def events(request: Request) -> Response:
    kind = request.query_params.get("kind", "disconnected")
    count = int(request.query_params.get("count", "1"))
    timeout = float(request.query_params.get("timeout", "30"))

    def matching() -> list[dict[str, Any]]:
        return [e for e in STATE.events if e["kind"] == kind]

    try:
        async with STATE.changed:
            await asyncio.wait_for(STATE.changed.wait_for(lambda: len(matching()) >= count), timeout)
    except TimeoutError:
        pass
    return JSONResponse(matching())


async def health(_request: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/_script", script, methods=["POST"]),
        Route("/_default", default, methods=["POST"]),
        Route("/_reset", reset, methods=["POST"]),
        Route("/_requests", requests),
        Route("/_events", events),
        Route("/_health", health),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
