"""Answer request/response models: a query and retrieval options in, an answer with its citations out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
)

from service.app.core.errors import InvalidInput
from service.app.search.models import MAX_QUERY_CHARS, FilterValue, SearchRequest, check_query_text

MAX_ANSWER_TOP_K = 20
# The retrieval modes search accepts, whatever they are (validated here, so a bad mode is a 422 naming `mode`).
SearchMode = SearchRequest.model_fields["mode"].annotation


class AnswerRequest(BaseModel):
    """Body of POST /v1/answer."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="the question")
    top_k: StrictInt = Field(
        5, ge=1, le=MAX_ANSWER_TOP_K, description="chunks retrieved as candidate sources (best first)"
    )
    filter: dict[str, FilterValue] | None = Field(None, description="metadata conditions, as for /v1/search")
    mode: SearchMode | None = Field(None, description="retrieval mode, as for /v1/search; default: search's")
    score_threshold: StrictFloat | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        allow_inf_nan=False,  # NaN got "less than or equal to 1": true, but not the client's mistake
        description="minimum cosine similarity of a source (default ANSWER_MIN_SCORE); in sparse and hybrid mode "
        "a chunk that matches the question's keywords is a source too (docs/answers.md)",
    )
    stream: StrictBool = Field(False, description="answer as Server-Sent Events: token*, citations, usage")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return check_query_text(value)

    def min_score(self, default: float) -> float:
        """The cosine threshold of this answer's sources: the request's, else ``default`` (ANSWER_MIN_SCORE)."""
        return float(self.score_threshold if self.score_threshold is not None else default)

    def search_request(self, threshold: float | None, mode: str | None = None) -> SearchRequest:
        """A retrieval this answer needs: same query, filter and mode (or ``mode``), cut at a cosine
        ``threshold`` (None: the ranking as it is; service.app.answer.relevance judges it)."""
        fields: dict[str, Any] = {
            "query": self.query,
            "top_k": self.top_k,
            "filter": self.filter,
            "score_threshold": threshold,
        }
        if (mode or self.mode) is not None:
            fields["mode"] = mode or self.mode
        try:
            return SearchRequest.model_validate(fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "body"
            raise InvalidInput(f"{where}: {error['msg']}") from None


class Citation(BaseModel):
    """A source the answer cites as ``[n]``."""

    n: int = Field(description="the number used in the answer's [n] markers")
    document_id: str
    chunk_index: int
    text: str
    score: float


class Usage(BaseModel):
    """Tokens spent; provider-reported unless ``estimated``."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = Field(False, description="counted locally because the provider reported no usage")


class AnswerResponse(BaseModel):
    """The answer, the sources it cites, and what generated it."""

    answer: str
    citations: list[Citation]
    model: str | None = Field(description="the LLM model, 'extractive', or null when nothing was relevant")
    generator: Literal["llm", "extractive", "no_context"]
    usage: Usage
