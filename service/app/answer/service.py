"""AnswerService: retrieve through the search service, then answer with the LLM or extractively, cited.

Retrieval goes through the same `search` object the /v1/search route uses (so tenancy, filters, the cache and
its invalidation are the same), cut at the score threshold. Nothing above it: the service says so and no model
is called. Otherwise the prompt gets the best sources that fit the token budget, the LLM answers (or the
extractive generator quotes), and only markers that name a source in the prompt survive; `citations` lists the
sources the answer cites, under the numbers it uses.

Streaming (`open_stream`) does everything that can fail with an HTTP status (retrieval, the tenant's token
budget, the breaker, connecting to the provider, its first response headers) before the first event, and then
yields events: ``token`` (text), ``citations``, ``usage`` (last). The provider's first token is awaited before
the first event, so a reply that is broken or empty from the start is a 503 like a non-streamed one. A failure
after the first token is an ``error`` event that ends the stream (no ``citations``, no ``usage``). Abandoning
the iterator (the client disconnected) closes the upstream stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from service.app.answer.budget import TokenBudget
from service.app.answer.citations import CitationFilter, clean_citations
from service.app.answer.extractive import Extract, extract_answer
from service.app.answer.models import AnswerRequest, AnswerResponse, Citation, Usage
from service.app.answer.prompt import Prompt, Source, TokenCounter, TokenizerCounter, build_prompt
from service.app.answer.relevance import KeywordEvidence
from service.app.core.config import Settings
from service.app.core.errors import RagError, ServiceUnavailable, error_body
from service.app.core.metrics import ANSWERS, FAILURES
from service.app.search.models import SearchRequest, SearchResponse, SearchResult
from service.app.search.query_cache import QueryVectorCache
from service.app.store.protocols import Embedder

if TYPE_CHECKING:
    # openai (about 1 s to import) is loaded only when an LLM is configured (`attach`).
    from service.app.answer.llm import LlmClient, StreamState

logger = logging.getLogger(__name__)

NO_CONTEXT_ANSWER = "I found nothing in your documents relevant enough to answer this question."
NOT_SUPPORTED_ANSWER = "None of the retrieved passages answers this question directly."
EXTRACTIVE_MODEL = "extractive"


class Searcher(Protocol):
    async def search(self, tenant_id: str, request: SearchRequest) -> SearchResponse: ...


class QuerySide(Protocol):
    """What the search embeds queries with right now: the served index's model and the query-vector cache
    (None when QUERY_EMBEDDING_CACHE_SIZE=0). The extractive answer scores with the same model, and reads the
    query's vector from the cache the search has just filled instead of embedding the query again."""

    @property
    def embedder(self) -> Embedder: ...

    @property
    def query_cache(self) -> QueryVectorCache | None: ...


Event = dict[str, Any]  # {"event": name, "data": json-able}


def _citations(sources: list[Source], cited: list[int]) -> list[Citation]:
    """The citations of an answer whose markers were renumbered densely: ``cited[k]`` (a prompt number) is
    ``[k + 1]`` in the answer (citations.CitationFilter)."""
    by_n = {source.n: source.result for source in sources}
    return [
        Citation(
            n=k,
            document_id=by_n[n].document_id,
            chunk_index=by_n[n].chunk_index,
            text=by_n[n].text,
            score=by_n[n].score,
        )
        for k, n in enumerate(cited, start=1)
    ]


class AnswerService:
    """Grounded answers for one app: `answer` (JSON) and `open_stream` (events)."""

    def __init__(
        self,
        *,
        settings: Settings,
        search: Searcher,
        embedder: Embedder,
        llm: LlmClient | None,
        budget: TokenBudget,
        counter: TokenCounter | None = None,
        query_side: QuerySide | None = None,
    ) -> None:
        self.settings = settings
        self.search = search
        self.embedder = embedder
        self.query_side = query_side
        self.llm = llm
        self.budget = budget
        self.counter: TokenCounter = counter or (
            TokenizerCounter.from_file(settings.llm_tokenizer_path)
            if settings.llm_tokenizer_path is not None
            else TokenizerCounter(embedder.tokenizer, name=embedder.model_name)
        )

    @property
    def model(self) -> str:
        return self.llm.model if self.llm is not None else EXTRACTIVE_MODEL

    async def _relevant(
        self, tenant: str, request: AnswerRequest, evidence: KeywordEvidence
    ) -> list[SearchResult]:
        """The retrieved chunks relevant enough to be sources, best first, by the cut of the mode the search ran
        in (service.app.answer.relevance): dense, cosine >= the threshold; sparse and hybrid, that OR keyword
        evidence, in the mode's own ranking order."""
        threshold = request.min_score(self.settings.answer_min_score)
        close = await self.search.search(tenant, request.search_request(threshold))
        results = close.results
        if close.mode != "dense":
            # The same ranking without the cosine cut: its keyword-matched chunks are sources too. Pinned to the
            # mode the first search ran in (a switch in between must not mix two rankings' scores).
            ranked = await self.search.search(tenant, request.search_request(None, close.mode))
            known = {(r.document_id, r.chunk_index) for r in results}
            extra = [
                r
                for r in ranked.results
                if (r.document_id, r.chunk_index) not in known and evidence.supports(r.text)
            ]
            # Both lists are cut from one ranking, so their scores order them together (stable: ties keep the
            # cosine-passing hit first).
            results = sorted([*results, *extra], key=lambda r: -r.score)[: request.top_k]
        return [r for r in results if evidence.names_a_code(r.text)]

    async def _prompt(self, tenant: str, request: AnswerRequest) -> tuple[Prompt, KeywordEvidence]:
        evidence = await anyio.to_thread.run_sync(KeywordEvidence, request.query)
        results = await self._relevant(tenant, request, evidence)
        if self.llm is None:
            # Extractive: no context window to fit, every retrieved chunk is a candidate source.
            sources = [Source(n=i, result=r) for i, r in enumerate(results, start=1)]
            return Prompt(messages=[], sources=sources, prompt_tokens=0), evidence
        prompt = build_prompt(
            request.query,
            results,
            self.counter,
            context_tokens=self.settings.llm_context_tokens,
            max_tokens=self.settings.llm_max_tokens,
        )
        return prompt, evidence

    def _usage(
        self, prompt: Prompt, prompt_tokens: int | None, completion: str, reported: int | None
    ) -> Usage:
        estimated = prompt_tokens is None or reported is None
        p = prompt_tokens if prompt_tokens is not None else prompt.prompt_tokens
        c = reported if reported is not None else self.counter.count(completion)
        return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c, estimated=estimated)

    def _extract(self, query: str, sources: list[Source], evidence: KeywordEvidence) -> Extract:
        """The extractive answer, scored with the search's current model (blocking: run it in a thread)."""
        side = self.query_side
        embedder = side.embedder if side is not None else self.embedder
        cache = side.query_cache if side is not None else None

        def query_vector() -> list[float]:
            return cache.dense(embedder, query) if cache is not None else embedder.embed_query(query)

        try:
            return extract_answer(query_vector, sources, embedder, evidence)
        except RagError:
            raise
        except Exception as exc:  # the model failing is an outage (503), as it is for search
            FAILURES.labels(component="embedder").inc()
            logger.error("answer embedding failed", exc_info=exc)
            raise ServiceUnavailable("answer embedding failed; retry later") from exc

    async def answer(self, tenant: str, request: AnswerRequest) -> AnswerResponse:
        """A complete answer (stream=false)."""
        prompt, evidence = await self._prompt(tenant, request)
        if not prompt.sources:
            return _no_context()
        if self.llm is None:
            extract = await anyio.to_thread.run_sync(self._extract, request.query, prompt.sources, evidence)
            ANSWERS.labels(generator="extractive").inc()
            return AnswerResponse(
                answer=extract.answer or NOT_SUPPORTED_ANSWER,
                citations=_citations(prompt.sources, extract.cited),
                model=EXTRACTIVE_MODEL,
                generator="extractive",
                usage=Usage(),
            )
        await self.budget.check(tenant)
        completion = await self.llm.complete(prompt.messages, max_tokens=self.settings.llm_max_tokens)
        usage = self._usage(prompt, completion.prompt_tokens, completion.text, completion.completion_tokens)
        await self.budget.charge(tenant, usage.total_tokens)
        text, cited = clean_citations(completion.text, range(1, len(prompt.sources) + 1))
        ANSWERS.labels(generator="llm").inc()
        return AnswerResponse(
            # An empty completion is a 503 (LlmClient); this is text made only of markers naming no source.
            answer=text.strip() or NOT_SUPPORTED_ANSWER,
            citations=_citations(prompt.sources, cited),
            model=self.llm.model,
            generator="llm",
            usage=usage,
        )

    async def open_stream(self, tenant: str, request: AnswerRequest) -> AsyncIterator[Event]:
        """Events of a streamed answer; raises (for an HTTP error status) only before the first event."""
        if self.llm is None:
            response = await self.answer(tenant, request)
            return self._replay(response)
        prompt, _evidence = await self._prompt(tenant, request)
        if not prompt.sources:
            return self._replay(_no_context())
        from service.app.answer.llm import StreamState  # loaded with the client (attach)

        await self.budget.check(tenant)
        state = StreamState()
        pieces = await self.llm.open_stream(
            prompt.messages, max_tokens=self.settings.llm_max_tokens, state=state
        )
        events = self._stream_llm(tenant, prompt, pieces, state)
        # Run it to its first statement inside its try/finally: closing a generator that never started runs
        # no finally, so a client gone before the first SSE iteration left the upstream response open (and its
        # tokens uncharged) until garbage collection. Primed, its aclose() closes the upstream and charges.
        primed = await events.__anext__()
        assert primed is _PRIMED
        return events

    async def _replay(self, response: AnswerResponse) -> AsyncIterator[Event]:
        if response.answer:
            yield {"event": "token", "data": {"text": response.answer}}
        yield from_citations(response.citations)
        yield {"event": "usage", "data": usage_data(response)}

    async def _stream_llm(
        self, tenant: str, prompt: Prompt, pieces: AsyncIterator[str], state: StreamState
    ) -> AsyncIterator[Event]:
        from service.app.answer.llm import LlmUnavailable

        assert self.llm is not None
        citations = CitationFilter(range(1, len(prompt.sources) + 1))
        finished = False
        said = ""
        try:
            yield _PRIMED  # taken by open_stream, never sent
            try:
                async for piece in pieces:
                    text = citations.feed(piece)
                    if text:
                        said += text
                        yield {"event": "token", "data": {"text": text}}
            except LlmUnavailable as exc:
                # After the 200 and the first tokens: the documented `error` event ends the stream, and no
                # `citations` event claims an answer that was not produced.
                yield {"event": "error", "data": error_body(exc.code, exc.message, **exc.details)}
                return
            except Exception as exc:  # a defect here must still end the stream visibly, without a traceback
                logger.error("answer stream failed", exc_info=exc)
                yield {"event": "error", "data": error_body("internal", "internal server error")}
                return
            rest = citations.finish()
            said += rest
            if not said.strip():
                # The model's whole text was markers naming no source: nothing grounded was said.
                rest = NOT_SUPPORTED_ANSWER
            if rest:
                yield {"event": "token", "data": {"text": rest}}
            finished = True
            ANSWERS.labels(generator="llm").inc()
            yield from_citations(_citations(prompt.sources, citations.cited))
            completion = state.completion
            usage = self._usage(
                prompt, completion.prompt_tokens, completion.text, completion.completion_tokens
            )
            yield {
                "event": "usage",
                "data": {"model": self.llm.model, "generator": "llm", "usage": usage.model_dump()},
            }
        finally:
            await _close(pieces)
            completion = state.completion
            usage = self._usage(
                prompt, completion.prompt_tokens, completion.text, completion.completion_tokens
            )
            if not finished:
                logger.info("answer stream stopped early", extra={"tokens_streamed": state.pieces})
            # Shielded: when the client went away this runs inside a cancelled scope, and the tokens the
            # provider already generated must still be charged.
            with anyio.CancelScope(shield=True):
                await self.budget.charge(tenant, usage.total_tokens)


_PRIMED: Event = {"event": "primed", "data": {}}


def _no_context() -> AnswerResponse:
    ANSWERS.labels(generator="no_context").inc()
    return AnswerResponse(
        answer=NO_CONTEXT_ANSWER, citations=[], model=None, generator="no_context", usage=Usage()
    )


async def _close(pieces: AsyncIterator[str]) -> None:
    aclose = getattr(pieces, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


def from_citations(citations: list[Citation]) -> Event:
    return {"event": "citations", "data": {"citations": [c.model_dump() for c in citations]}}


def usage_data(response: AnswerResponse) -> dict[str, Any]:
    return {"model": response.model, "generator": response.generator, "usage": response.usage.model_dump()}


async def attach(services: Any) -> Any:
    """Build `services.answer` on the (possibly cache-wrapped) `services.search`; return its async closer."""
    settings: Settings = services.settings
    llm = None
    if settings.llm_base_url:
        from service.app.answer.llm import LlmClient

        llm = LlmClient(settings)
    budget = TokenBudget(settings)

    class _LiveSearch:
        # Resolved per call: production.attach may wrap services.search in the cache after this is built (the
        # wrapper forwards the attributes below), and a re-index switch changes the served model.
        async def search(self, tenant_id: str, request: SearchRequest) -> SearchResponse:
            return await services.search.search(tenant_id, request)

        @property
        def embedder(self) -> Embedder:
            return services.search.embedder  # type: ignore[no-any-return]

        @property
        def query_cache(self) -> QueryVectorCache | None:
            return getattr(services.search, "query_cache", None)

    live = _LiveSearch()
    services.answer = AnswerService(
        settings=settings, search=live, embedder=services.embedder, llm=llm, budget=budget, query_side=live
    )

    async def close() -> None:
        if llm is not None:
            await llm.close()
        await budget.close()

    return close
