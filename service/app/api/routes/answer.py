"""Answer route: a grounded, cited answer to a question over the caller's documents. Logic in AnswerService."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from service.app.answer.models import AnswerRequest, AnswerResponse
from service.app.api.deps import ServicesDep, TenantDep
from service.app.api.middleware import SHUT_DOWN
from service.app.api.routing import AuthenticatedRoute
from service.app.core.errors import error_responses
from service.app.core.security import rate_limit

router = APIRouter(
    prefix="/v1",
    tags=["answer"],
    dependencies=[Depends(rate_limit("search"))],
    route_class=AuthenticatedRoute,
)

PING_SECONDS = 15  # keeps idle proxies from cutting a stream while the model thinks

_STREAM_DOC = {
    "description": "with stream=true: Server-Sent Events `token` {text}*, `citations` {citations}, "
    "`usage` {model, generator, usage} (last); `error` {error} if the model fails mid-answer",
    "content": {"text/event-stream": {}},
}


async def _sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in events:
            yield ServerSentEvent(data=json.dumps(event["data"], ensure_ascii=False), event=event["event"])
    finally:
        # Client gone (sse-starlette cancels this generator): close the upstream stream now, not at GC.
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


class _AnswerEvents(EventSourceResponse):
    """The SSE response that closes the answer's events when it ends, however it ends.

    ``_sse`` closes them when its iteration stops, but it never starts when sending the response start fails
    or the task group is cancelled first (the client left before the first SSE iteration): the upstream LLM
    response then stayed open until garbage collection.
    """

    def __init__(self, events: AsyncIterator[dict[str, Any]]) -> None:
        # sse-starlette ends a stream as soon as the server starts shutting down (it would otherwise hold the
        # shutdown for as long as the model talks); the event tells this request it was cut, for the log.
        self._shutdown = anyio.Event()
        super().__init__(
            _sse(events),
            ping=PING_SECONDS,
            headers={"Cache-Control": "no-store"},
            shutdown_event=self._shutdown,
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
            if self._shutdown.is_set():
                scope.setdefault("state", {})[SHUT_DOWN] = (
                    "answer streams end when the service shuts down; the client sees the stream end without "
                    "its usage event and may ask again"
                )
        finally:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()  # a no-op when _sse closed them already


@router.post(
    "/answer", response_model=AnswerResponse, responses={**error_responses(413, 415, 503), 200: _STREAM_DOC}
)
async def answer_question(body: AnswerRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Answer the question from the caller's documents, citing them as [n]; stream=true for Server-Sent Events."""
    if body.stream:
        events = await services.answer.open_stream(tenant, body)
        return _AnswerEvents(events)
    result = await services.answer.answer(tenant, body)
    return Response(result.model_dump_json(), media_type="application/json")
