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
- timeouts: LLM_TIMEOUT_SECONDS for connect, each read (so a stream that stalls for that long is cut) and write.

Metrics: latency (`rag_llm_request_duration_seconds`, time to first token), calls by outcome, errors by cause,
tokens in/out. The API key is only ever handed to the client object; it is never logged or put in an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
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


def classify(exc: BaseException) -> str:
    """The `cause` label of a failed call."""
    if isinstance(exc, OpenedState):
        return "circuit_open"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "auth"
    if isinstance(exc, openai.APIStatusError):
        return "server_error" if exc.status_code >= 500 else "bad_request"
    return "protocol"


class LlmClient:
    """Chat Completions with timeouts, retries, a circuit breaker and metrics; `complete` or `stream`."""

    def __init__(self, settings: Settings, *, http_client: httpx2.AsyncClient | None = None) -> None:
        assert settings.llm_base_url, "Settings validation requires LLM_BASE_URL"
        assert settings.llm_model, "Settings validation requires LLM_MODEL with LLM_BASE_URL"
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""
        self.model = settings.llm_model
        self.base_url = settings.llm_base_url
        self._client = openai.AsyncOpenAI(
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
        else:
            message = f"the language model call failed: {cause}"
        # The exception type and status only: provider messages may echo request headers.
        logger.warning("LLM call failed", extra={"cause": cause, "error_type": type(exc).__name__})
        return LlmUnavailable(message, cause=cause, retry_after=retry_after)

    def _request(self, messages: Sequence[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "messages": list(messages), "max_tokens": max_tokens, "temperature": 0.0}

    async def complete(self, messages: Sequence[dict[str, str]], *, max_tokens: int) -> Completion:
        """One non-streamed answer; LlmUnavailable (503) when the provider fails after retries."""
        started = time.perf_counter()
        try:
            async with await self._breakers.get_breaker(CIRCUIT):
                response = await self._client.chat.completions.create(**self._request(messages, max_tokens))
        except (openai.OpenAIError, OpenedState) as exc:
            LLM_SECONDS.labels(outcome="error").observe(time.perf_counter() - started)
            raise self._failure(exc) from None
        LLM_SECONDS.labels(outcome="ok").observe(time.perf_counter() - started)
        LLM_REQUESTS.labels(outcome="ok").inc()
        choice = response.choices[0] if response.choices else None
        completion = Completion(
            text=(choice.message.content or "") if choice else "",
            finish_reason=choice.finish_reason if choice else None,
        )
        if response.usage is not None:
            completion.prompt_tokens = response.usage.prompt_tokens
            completion.completion_tokens = response.usage.completion_tokens
        self._count_tokens(completion)
        return completion

    async def open_stream(
        self, messages: Sequence[dict[str, str]], *, max_tokens: int, state: StreamState
    ) -> AsyncIterator[str]:
        """Start a streamed answer and return its text pieces.

        The request is sent (and retried, and refused by an open breaker) here, before the first piece, so the
        caller can still answer with an HTTP error status. Closing the returned iterator early (the client went
        away) closes the upstream response, which the provider sees as a disconnect and stops generating.
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
        return self._pieces(stream, breaker, state, started)

    async def _pieces(
        self, stream: Any, breaker: Any, state: StreamState, started: float
    ) -> AsyncIterator[str]:
        outcome = "cancelled"
        completion = state.completion
        try:
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        completion.prompt_tokens = chunk.usage.prompt_tokens
                        completion.completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.finish_reason:
                            completion.finish_reason = choice.finish_reason
                        piece = choice.delta.content if choice.delta else None
                        if piece:
                            if state.pieces == 0:
                                LLM_FIRST_TOKEN_SECONDS.observe(time.perf_counter() - started)
                            state.pieces += 1
                            completion.text += piece
                            yield piece
            outcome = "ok"
        except openai.OpenAIError as exc:
            outcome = "error"
            await breaker.__aexit__(type(exc), exc, exc.__traceback__)
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
    def _count_tokens(completion: Completion) -> None:
        if completion.prompt_tokens is not None:
            LLM_TOKENS.labels(direction="input").inc(completion.prompt_tokens)
        if completion.completion_tokens is not None:
            LLM_TOKENS.labels(direction="output").inc(completion.completion_tokens)


async def _shielded(awaitable: Any) -> None:
    with anyio.CancelScope(shield=True):
        await awaitable
