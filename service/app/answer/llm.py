"""One client for every OpenAI-compatible Chat Completions server, on the official `openai` package.

OpenAI, Azure OpenAI (its ``/openai/v1/`` endpoint), vLLM, Ollama (``/v1``), llama.cpp's server (``/v1``) and
Gemini's OpenAI-compatible endpoint all take the same request; only LLM_BASE_URL, LLM_MODEL and LLM_API_KEY
differ. Servers that need no key get a placeholder (the package insists on one).

Failure handling, outermost first:
- a circuit breaker (`purgatory`, in process): LLM_CIRCUIT_FAILURES failed calls in a row open it for
  LLM_CIRCUIT_RESET_SECONDS, during which calls fail at once with 503 + Retry-After instead of queueing on a
  dead provider; client errors (400, 401, 404...) and a caller going away do not count as failures;
- retries with exponential backoff and jitter: the openai client's own (LLM_MAX_RETRIES), not tenacity,
  because it already retries exactly the retryable cases (connection errors, 408, 409, 429, 5xx), honours the
  provider's ``Retry-After``/``retry-after-ms`` and ``x-should-retry`` headers, and retries a stream only before
  its first byte; wrapping it in tenacity would duplicate that and multiply the attempts;
- timeouts: LLM_TIMEOUT_SECONDS for connect, each read (so a stream that stalls for that long is cut) and write;
- malformed replies: a 2xx whose body is not a chat completion (invalid JSON, an HTML login page from a proxy, a
  stream of broken events, JSON without ``choices``) is ``bad_response``, a well-formed completion with no text
  (``choices: []``, ``content: null``, only whitespace) is ``empty_response``; both are failures like a 5xx
  (503, counted by the breaker and the error metrics), never an empty answer presented as grounded. The body is
  checked here, not by the package's lenient model construction (which yields a ``str`` for an HTML page, and
  raw ``JSONDecodeError``/``AttributeError`` for the rest), and only structure is checked, so providers that
  omit optional fields (``created``, ``usage``, ``finish_reason``) still work.
- not HTTP at all: a reply the HTTP parser refuses (an illegal status line, a bad ``Content-Length`` or header:
  LLM_BASE_URL pointing at a port that speaks another protocol, or a broken proxy) is ``protocol``, named by
  what the parser refused (never the bytes, which may echo our request). It used to be ``connection``, which
  sends the operator to the network and the provider's status page instead of the URL. A server that accepts
  the connection and closes it without a byte stays ``connection`` (nothing tells the two apart). A failure of
  the call that is none of these (a defect here, not the provider) is ``internal``. A ``protocol`` failure is
  not retried: the same URL answers the same bytes again, so LLM_MAX_RETRIES retries would only multiply the
  wait (with backoff) before the same 503. The openai client retries every transport error, so the client here
  hands such a failure back as an ``APIConnectionError`` already, which the package propagates without retrying.

Metrics: latency (`rag_llm_request_duration_seconds`, time to first token), calls by outcome, errors by cause,
tokens in/out. The API key is only ever handed to the client object; it is never logged or put in an error.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import h11
import httpx2
import openai
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from service.app.core.config import Settings
from service.app.core.errors import ServiceUnavailable
from service.app.core.metrics import (
    LLM_ERRORS,
    LLM_FIRST_TOKEN_SECONDS,
    LLM_REQUESTS,
    LLM_SECONDS,
    LLM_TOKENS,
)

logger = logging.getLogger(__name__)

CIRCUIT = "llm"
NO_KEY = "no-key"  # what keyless servers (Ollama, llama.cpp, vLLM without --api-key) receive


class LlmUnavailable(ServiceUnavailable):
    """The language model could not answer; ``cause`` says why, Retry-After when it is known."""

    def __init__(self, message: str, *, cause: str, retry_after: int | None = None) -> None:
        details: dict[str, Any] = {"cause": cause}
        if retry_after is not None:
            details["retry_after"] = retry_after
        super().__init__(message, **details)
        self.cause = cause
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class BadResponse(Exception):
    """The provider answered 2xx with something that is not a (non-empty) chat completion.

    ``cause`` is ``bad_response`` or ``empty_response``; ``detail`` is built from the reply's structure only
    (content type, size, the JSON parser's position, field types), never from its text, which may echo our
    request headers and so the API key.
    """

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.status = 200  # the reply's 2xx status, set by the caller that has the response


MAX_BODY_BYTES = 1 << 20  # read of a reply to a stream request that is not an event stream (then not JSON)
_TOKEN = re.compile(r"[\w.:/-]{1,64}")


def _token(value: Any) -> str:
    """A provider-supplied label (finish_reason, error type) only when it looks like one; else its type."""
    if isinstance(value, str) and _TOKEN.fullmatch(value):
        return value
    return type(value).__name__


def endpoint(url: str) -> str:
    """The base URL as it may appear in an error: no user:password, query (Azure's api-key) or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _describe(content_type: str, size: int) -> str:
    kind = content_type.split(";")[0].strip().lower() or "no content type"
    what = f"{kind}, {size} bytes"
    if kind == "text/html":
        what += " (an HTML page: a proxy, login or error page?)"
    elif kind == "text/event-stream":
        what += " (an event stream, though none was asked for)"
    return what


def parse_completion(content_type: str, body: bytes) -> Completion:
    """A chat completion body, checked for structure; BadResponse (bad/empty) when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than the parser goes
        where = f" ({exc.msg} at char {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadResponse("bad_response", f"{_describe(content_type, len(body))}, not JSON{where}") from None
    if not isinstance(data, dict):
        raise BadResponse("bad_response", f"JSON {type(data).__name__}, not an object")
    if "choices" not in data and data.get("error"):
        error = data["error"]
        label = _token(error.get("type") or error.get("code")) if isinstance(error, dict) else "error"
        raise BadResponse("bad_response", f"an error object ({label}) instead of choices")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise BadResponse("bad_response", f"`choices` is {type(choices).__name__}, not a list")
    completion = Completion()
    usage = data.get("usage")
    if isinstance(usage, dict):
        completion.prompt_tokens = _count(usage.get("prompt_tokens"))
        completion.completion_tokens = _count(usage.get("completion_tokens"))
    if not choices:
        raise BadResponse("empty_response", "an empty completion: `choices` is []")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise BadResponse("bad_response", "`choices[0].message` is not an object")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise BadResponse("bad_response", f"`choices[0].message.content` is {type(content).__name__}")
    finish = choice.get("finish_reason")
    completion.finish_reason = _token(finish) if finish is not None else None
    completion.text = content or ""
    if not completion.text.strip():
        raise BadResponse("empty_response", _empty(completion, refusal=bool(message.get("refusal"))))
    return completion


def _empty(completion: Completion, *, refusal: bool = False) -> str:
    what = "an empty completion: no text"
    if refusal:
        what += ", a refusal"
    return f"{what} (finish_reason {completion.finish_reason or 'none'})"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _chunk_pieces(chunk: Any, completion: Completion) -> list[str]:
    """The text pieces of one stream chunk (usage and finish_reason recorded); BadResponse on a wrong shape."""
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        completion.prompt_tokens = _count(getattr(usage, "prompt_tokens", None))
        completion.completion_tokens = _count(getattr(usage, "completion_tokens", None))
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        raise BadResponse("bad_response", f"a stream event whose `choices` is {type(choices).__name__}")
    pieces = []
    for choice in choices:
        finish = getattr(choice, "finish_reason", None)
        if finish:
            completion.finish_reason = _token(finish)
        delta = getattr(choice, "delta", None)
        piece = getattr(delta, "content", None) if delta is not None else None
        if piece is not None and not isinstance(piece, str):
            raise BadResponse("bad_response", f"a stream event whose delta content is {type(piece).__name__}")
        if piece:
            pieces.append(piece)
    return pieces


@dataclass
class Completion:
    """What one call produced: text and the provider's token counts (None when it reported none)."""

    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


@dataclass
class StreamState:
    """Filled in while a stream runs, readable after it ended or was cut."""

    completion: Completion = field(default_factory=Completion)
    pieces: int = 0


def _is_client_error(exc: BaseException) -> bool:
    # 4xx other than 429 is our request or our credentials, not an outage: it must not open the breaker.
    return isinstance(exc, openai.APIStatusError) and exc.status_code < 500 and exc.status_code != 429


def not_http(exc: BaseException) -> str | None:
    """What the HTTP parser (h11, under httpcore) refused in the server's reply, when that is why the call failed:
    its message up to the first colon (``illegal status line``, ``bad Content-Length``), so none of the reply's
    bytes. None for anything else, a peer that closed the connection included."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain openai -> httpx -> httpcore -> h11 is four deep
        if seen is None:
            return None
        if isinstance(seen, h11.RemoteProtocolError):
            text = str(seen)
            if "closed connection" in text or "peer state" in text:
                return None
            return (
                re.sub(r"[^A-Za-z -]", "", text.split(":", 1)[0]).strip()[:60] or "a reply that is not HTTP"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def classify(exc: BaseException) -> str:
    """The `cause` label of a failed call."""
    if isinstance(exc, BadResponse):
        return exc.cause
    if isinstance(exc, OpenedState):
        return "circuit_open"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "protocol" if not_http(exc) else "connection"
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "auth"
    if isinstance(exc, openai.APIStatusError):
        return "server_error" if exc.status_code >= 500 else "bad_request"
    if isinstance(exc, openai.APIResponseValidationError):
        return "bad_response"
    if isinstance(exc, openai.APIError):
        return "server_error"  # an error event inside a 200 stream: the provider failed mid-answer
    return "internal"


class _OpenAI(openai.AsyncOpenAI):
    """The openai client, except that a reply which is not HTTP is not retried (see the module's docstring).

    The package retries any transport error (``request_exceptions``) and propagates an ``OpenAIError`` raised
    while sending as it is (openai/_base_client.py, ``AsyncAPIClient.request``): raising the connection error
    here, from the parser's error, ends the attempts at the first one."""

    async def _send_request(self, request: httpx2.Request, *, stream: bool, **kwargs: Any) -> httpx2.Response:
        try:
            return await super()._send_request(request, stream=stream, **kwargs)
        except httpx2.RequestError as exc:
            if not_http(exc):
                raise openai.APIConnectionError(request=request) from exc
            raise


class LlmClient:
    """Chat Completions with timeouts, retries, a circuit breaker and metrics; `complete` or `stream`."""

    def __init__(self, settings: Settings, *, http_client: httpx2.AsyncClient | None = None) -> None:
        assert settings.llm_base_url, "Settings validation requires LLM_BASE_URL"
        assert settings.llm_model, "Settings validation requires LLM_MODEL with LLM_BASE_URL"
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""
        self.model = settings.llm_model
        self.base_url = settings.llm_base_url
        self.endpoint = endpoint(settings.llm_base_url)
        self._client = _OpenAI(
            base_url=settings.llm_base_url,
            api_key=key or NO_KEY,
            timeout=httpx2.Timeout(settings.llm_timeout_seconds),
            max_retries=settings.llm_max_retries,
            http_client=http_client,
        )
        self._reset_seconds = settings.llm_circuit_reset_seconds
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.llm_circuit_failures,
            default_ttl=settings.llm_circuit_reset_seconds,
            exclude=[
                (openai.APIStatusError, _is_client_error),
                anyio.get_cancelled_exc_class(),
                GeneratorExit,
            ],
        )

    async def close(self) -> None:
        await self._client.close()

    async def circuit_state(self) -> str:
        breaker = await self._breakers.get_breaker(CIRCUIT)
        return breaker.context.state

    def _failure(self, exc: BaseException) -> LlmUnavailable:
        cause = classify(exc)
        LLM_ERRORS.labels(cause=cause).inc()
        LLM_REQUESTS.labels(outcome="error").inc()
        retry_after = None
        if isinstance(exc, OpenedState):
            retry_after = max(1, int(exc.opened_at + self._reset_seconds - time.time()) + 1)
            message = "the language model is failing; calls are paused (circuit breaker open)"
        elif isinstance(exc, openai.APIStatusError):
            message = f"the language model answered HTTP {exc.status_code}"
        elif isinstance(exc, BadResponse) and cause == "empty_response":
            message = f"the LLM at {self.endpoint} answered with {exc.detail}"
        elif isinstance(exc, BadResponse):
            message = f"the LLM at {self.endpoint} answered {exc.status} with a body that is not a chat completion: "
            message += exc.detail
        elif cause == "protocol":
            message = (
                f"the server at {self.endpoint} did not answer in HTTP ({not_http(exc)}): check that "
                "LLM_BASE_URL is the OpenAI-compatible endpoint, with its scheme and port"
            )
        elif isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIConnectionError):
            message = f"the LLM at {self.endpoint} reported an error in its reply ({cause})"
        else:
            message = f"the language model call failed: {cause}"
        # The exception type and status only: provider messages may echo request headers.
        extra = {"cause": cause, "error_type": type(exc).__name__, "llm_endpoint": self.endpoint}
        if isinstance(exc, BadResponse):
            extra["detail"] = exc.detail  # built from the reply's structure only
        logger.warning("LLM call failed", extra=extra)
        return LlmUnavailable(message, cause=cause, retry_after=retry_after)

    def _request(self, messages: Sequence[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "messages": list(messages), "max_tokens": max_tokens, "temperature": 0.0}

    async def complete(self, messages: Sequence[dict[str, str]], *, max_tokens: int) -> Completion:
        """One non-streamed answer; LlmUnavailable (503) when the provider fails after retries."""
        started = time.perf_counter()
        try:
            async with await self._breakers.get_breaker(CIRCUIT):
                raw = await self._client.chat.completions.with_raw_response.create(
                    **self._request(messages, max_tokens)
                )
                # Checked inside the breaker: a provider that keeps answering garbage is failing.
                http = raw.http_response
                try:
                    completion = parse_completion(http.headers.get("content-type", ""), http.content)
                except BadResponse as exc:
                    exc.status = http.status_code
                    raise
        except (openai.OpenAIError, OpenedState, BadResponse) as exc:
            LLM_SECONDS.labels(outcome="error").observe(time.perf_counter() - started)
            raise self._failure(exc) from None
        LLM_SECONDS.labels(outcome="ok").observe(time.perf_counter() - started)
        LLM_REQUESTS.labels(outcome="ok").inc()
        self._count_tokens(completion)
        return completion

    async def open_stream(
        self, messages: Sequence[dict[str, str]], *, max_tokens: int, state: StreamState
    ) -> AsyncIterator[str]:
        """Start a streamed answer and return its text pieces, the first one already received.

        The request is sent (and retried, and refused by an open breaker) and its first piece of text awaited
        here, so everything that fails before the first token (connecting, the status, a reply that is not an
        event stream, a broken or empty stream) raises LlmUnavailable while the caller can still answer with an
        HTTP error status. Failures after it are raised by the returned iterator. Closing it early (the client
        went away) closes the upstream response, which the provider sees as a disconnect and stops generating.
        """
        started = time.perf_counter()
        breaker = await self._breakers.get_breaker(CIRCUIT)
        try:
            await breaker.__aenter__()
        except OpenedState as exc:
            raise self._failure(exc) from None
        try:
            stream = await self._client.chat.completions.create(
                **self._request(messages, max_tokens),
                stream=True,
                stream_options={"include_usage": True},
            )
        except BaseException as exc:
            await breaker.__aexit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, openai.OpenAIError):
                LLM_SECONDS.labels(outcome="error").observe(time.perf_counter() - started)
                raise self._failure(exc) from None
            raise
        pieces = self._pieces(stream, breaker, state, started)
        try:
            first = await pieces.__anext__()
        except StopAsyncIteration:  # pragma: no cover - _pieces raises BadResponse before ending empty
            raise self._failure(BadResponse("empty_response", _empty(state.completion))) from None
        return _Prefetched(first, pieces)

    async def _pieces(
        self, stream: Any, breaker: Any, state: StreamState, started: float
    ) -> AsyncIterator[str]:
        outcome = "cancelled"
        completion = state.completion
        try:
            async with stream:
                response = stream.response
                content_type = response.headers.get("content-type", "")
                if not content_type.lower().startswith("text/event-stream"):
                    # Not an event stream (a proxy's HTML page, an error, a whole completion as JSON): read
                    # (bounded) and judged as a non-streamed reply would be, with the same diagnosis.
                    body = b""
                    async for part in response.aiter_bytes():
                        body += part
                        if len(body) > MAX_BODY_BYTES:
                            break
                    whole = parse_completion(content_type, body)
                    # A valid whole completion (a provider or proxy that ignores `stream`): one piece.
                    completion.text, completion.finish_reason = whole.text, whole.finish_reason
                    completion.prompt_tokens = whole.prompt_tokens
                    completion.completion_tokens = whole.completion_tokens
                    LLM_FIRST_TOKEN_SECONDS.observe(time.perf_counter() - started)
                    state.pieces += 1
                    yield whole.text
                else:
                    async with aclosing(self._stream_pieces(stream, state, started)) as pieces:
                        async for piece in pieces:
                            yield piece
                if state.pieces == 0:
                    raise BadResponse("empty_response", _empty(completion))
            outcome = "ok"
        except (openai.OpenAIError, BadResponse) as exc:
            if isinstance(exc, BadResponse):
                exc.status = stream.response.status_code
            outcome = "error"
            await _shielded(breaker.__aexit__(type(exc), exc, exc.__traceback__))
            raise self._failure(exc) from None
        except BaseException as exc:
            # The caller stopped reading (client disconnected: GeneratorExit or cancellation): not a failure.
            await _shielded(breaker.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        else:
            await breaker.__aexit__(None, None, None)
            LLM_REQUESTS.labels(outcome="ok").inc()
            self._count_tokens(completion)
        finally:
            LLM_SECONDS.labels(outcome=outcome).observe(time.perf_counter() - started)
            if outcome == "cancelled":
                LLM_REQUESTS.labels(outcome="cancelled").inc()

    @staticmethod
    async def _stream_pieces(stream: Any, state: StreamState, started: float) -> AsyncIterator[str]:
        completion = state.completion
        try:
            async for chunk in stream:
                for piece in _chunk_pieces(chunk, completion):
                    completion.text += piece
                    if state.pieces == 0:
                        if not completion.text.strip():
                            continue  # leading whitespace waits: an all-blank answer is empty
                        piece = completion.text
                        LLM_FIRST_TOKEN_SECONDS.observe(time.perf_counter() - started)
                    state.pieces += 1
                    yield piece
        except (ValueError, TypeError, AttributeError) as exc:
            # openai's SSE decoding: JSONDecodeError for a `data:` line that is not JSON, and loose model
            # construction errors for JSON of the wrong shape. The type and the position only.
            where = f" ({exc.msg} at char {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
            detail = f"a stream event that is not a chat completion chunk: {type(exc).__name__}{where}"
            raise BadResponse("bad_response", detail) from None

    @staticmethod
    def _count_tokens(completion: Completion) -> None:
        if completion.prompt_tokens is not None:
            LLM_TOKENS.labels(direction="input").inc(completion.prompt_tokens)
        if completion.completion_tokens is not None:
            LLM_TOKENS.labels(direction="output").inc(completion.completion_tokens)


class _Prefetched:
    """The pieces of a stream whose first piece was already received; `aclose` closes the upstream stream."""

    def __init__(self, first: str, rest: Any) -> None:
        self._first: str | None = first
        self._rest = rest

    def __aiter__(self) -> _Prefetched:
        return self

    async def __anext__(self) -> str:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._rest.__anext__()  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        self._first = None
        await self._rest.aclose()


async def _shielded(awaitable: Any) -> None:
    with anyio.CancelScope(shield=True):
        await awaitable
