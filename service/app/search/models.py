"""Search request/response models: query, top_k, metadata filter, score threshold -> ranked chunks."""

from __future__ import annotations

import math
import unicodedata
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from service.app.core.errors import InvalidInput
from service.app.ingest.models import MAX_METADATA_KEYS, METADATA_KEY_PATTERN, validate_metadata_key
from service.app.store.vectors import MetadataCondition

MAX_QUERY_CHARS = 8192
MAX_ANY_VALUES = 100
# The mode a request without one gets: measured best on the project's evaluation set (docs/quality.md).
DEFAULT_MODE = "hybrid"
MODE_DESCRIPTION = (
    "retrieval mode: `dense` (embedding similarity; `score` is the cosine), `sparse` (BM25 keyword match; "
    "`score` is the BM25 score), `hybrid` (both, fused by reciprocal rank fusion; `score` is the fused score "
    f"1/(2+rank) summed over both rankings). Default: `{DEFAULT_MODE}`, or `dense` while the index has no "
    "sparse vectors yet (an index built before them, until it is re-indexed); asking for `sparse` or `hybrid` "
    "then is refused with 409."
)


def check_query_text(value: str) -> str:
    """``value`` unless it is blank or has nothing a model can read.

    ``str.strip`` keeps format characters (zero-width spaces and joiners, direction marks) and lone combining
    marks: a query made only of those embedded as noise and returned arbitrary chunks, while the same text as a
    document is refused. A query needs a letter, digit, punctuation mark or symbol."""
    if not value.strip():
        raise ValueError("query must not be blank")
    if not any(unicodedata.category(char)[0] in "LNPS" for char in value):
        raise ValueError(
            "query has no content the model can read (only spaces, format characters or combining marks)"
        )
    return value


class AnyOf(BaseModel):
    """``{"any": [...]}``: the field equals one of the values (for list fields: contains one of them)."""

    model_config = ConfigDict(extra="forbid")

    any: list[StrictStr] | list[StrictInt] = Field(min_length=1, max_length=MAX_ANY_VALUES)


class NumericRange(BaseModel):
    """``{"gte": 1, "lt": 5}``: numeric bounds, at least one of them."""

    model_config = ConfigDict(extra="forbid")

    gt: StrictInt | StrictFloat | None = None
    gte: StrictInt | StrictFloat | None = None
    lt: StrictInt | StrictFloat | None = None
    lte: StrictInt | StrictFloat | None = None

    def model_post_init(self, _context: Any) -> None:
        if self.gt is None and self.gte is None and self.lt is None and self.lte is None:
            raise ValueError("a range needs at least one of gt, gte, lt, lte")


_RANGE_KEYS = {"gt", "gte", "lt", "lte"}
# Stored integers are 64-bit (metadata refuses others, ingest/models.py); a filter integer outside that range
# matched nothing (an equality), or failed in the engine as a store outage (an "any" list).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_OUT_OF_INT64 = "out of the 64-bit integer range"
_FILTER_SHAPES = 'a string, number or boolean, {"any": [...]} or a range like {"gte": 1, "lt": 5}'


def _is_number(value: Any) -> bool:
    # NaN and infinities are numbers to Python's JSON parser, but no stored value can match or order against them.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _out_of_int64(value: Any) -> bool:
    return type(value) is int and not _INT64_MIN <= value <= _INT64_MAX


def _filter_value_problem(item: Any) -> str | None:
    """What is wrong with one filter value, in words (following ``filter.<key>``), or None when it is right."""
    if _out_of_int64(item):
        return f" is {_OUT_OF_INT64}"
    if isinstance(item, str | bool) or _is_number(item):
        return None
    if isinstance(item, float):
        return " must be a finite number (not NaN or Infinity)"
    if not isinstance(item, dict):
        kind = "null" if item is None else type(item).__name__
        return f' must be {_FILTER_SHAPES}, not {kind} (several values go in {{"any": [...]}})'
    keys = set(item)
    if keys == {"any"}:
        values = item["any"]
        if not isinstance(values, list) or not values or len(values) > MAX_ANY_VALUES:
            return f' needs "any": a list of 1 to {MAX_ANY_VALUES} values'
        if not (all(isinstance(v, str) for v in values) or all(type(v) is int for v in values)):
            return ' "any" must list only strings or only integers'
        if any(_out_of_int64(v) for v in values):
            return f".any has a value {_OUT_OF_INT64}"
        return None
    if keys and keys <= _RANGE_KEYS:
        if not all(_is_number(v) for v in item.values()):
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in item.values()):
                return " range bounds must be finite numbers (not NaN or Infinity)"
            return " range bounds must be numbers"
        for bound in sorted(keys):
            if _out_of_int64(item[bound]):
                return f".{bound} is {_OUT_OF_INT64} (a float like 1e30 is a valid bound)"
        return None
    return f" must be {_FILTER_SHAPES}; got an object with keys {sorted(keys)}"


FilterValue = StrictStr | StrictBool | StrictInt | StrictFloat | AnyOf | NumericRange


class SearchRequest(BaseModel):
    """Body of POST /v1/search."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="natural-language query")
    # Strict: lax parsing would take `true` as top_k=1 and `false` as a threshold of 0.0 (the schema says number).
    top_k: StrictInt = Field(5, ge=1, le=100, description="number of chunks to return")
    filter: dict[str, FilterValue] | None = Field(
        None,
        description='metadata conditions, all must hold: {"lang": "en"}, {"tags": {"any": ["a", "b"]}}, '
        '{"year": {"gte": 2020}}',
        json_schema_extra={"propertyNames": {"pattern": METADATA_KEY_PATTERN}},
    )
    score_threshold: StrictFloat | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        # Checked before the bounds: NaN failed "less than or equal to 1", true but no help to the client.
        allow_inf_nan=False,
        description="minimum cosine similarity of a chunk to the query, in every mode (hits below it are dropped "
        "after ranking)",
    )
    mode: Literal["dense", "sparse", "hybrid"] | None = Field(
        None,
        description=MODE_DESCRIPTION,
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return check_query_text(value)

    @field_validator("filter", mode="before")
    @classmethod
    def _filter_shapes(cls, value: Any) -> Any:
        # Without this, a bad value fails every member of the FilterValue union and the first of those errors
        # ("filter.k.str: Input should be a valid string") was the message, whatever the client meant.
        if isinstance(value, dict) and len(value) > MAX_METADATA_KEYS:
            # Checked first: 50,000 clauses (a 1 MB body) took 6 s of CPU per search. All conditions must hold
            # and a document has at most MAX_METADATA_KEYS keys, so such a filter could match nothing anyway.
            raise ValueError(
                f"filter has {len(value)} conditions; a document has at most {MAX_METADATA_KEYS} metadata keys, "
                "so no document could match more"
            )
        if isinstance(value, dict):
            # A filter already parsed by another request model (POST /v1/answer builds its search from its own
            # parsed filter) holds AnyOf/NumericRange objects: check them as the JSON they came from.
            value = {
                key: item.model_dump(exclude_none=True) if isinstance(item, AnyOf | NumericRange) else item
                for key, item in value.items()
            }
            for key, item in value.items():
                problem = _filter_value_problem(item)
                if problem:
                    raise ValueError(f"filter.{key}{problem}")
        return value

    def conditions(self) -> list[MetadataCondition]:
        """The filter as vector-store conditions; InvalidInput for a bad field name."""
        conditions = []
        for key, value in (self.filter or {}).items():
            validate_metadata_key(key, "filter field")
            if isinstance(value, AnyOf):
                conditions.append(MetadataCondition(field=key, any_of=list(value.any)))
            elif isinstance(value, NumericRange):
                conditions.append(
                    MetadataCondition(field=key, gt=value.gt, gte=value.gte, lt=value.lt, lte=value.lte)
                )
            elif isinstance(value, str | bool | int | float):
                conditions.append(MetadataCondition(field=key, equals=value))
            else:  # pragma: no cover - pydantic already restricted the types
                raise InvalidInput(f"filter.{key} has an unsupported value")
        return conditions


class SearchResult(BaseModel):
    """One matching chunk."""

    document_id: str
    chunk_index: int
    text: str
    score: float
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    """Matching chunks, best first."""

    results: list[SearchResult]
    # Defaulted: a cached response from before modes existed was dense.
    mode: Literal["dense", "sparse", "hybrid"] = Field(
        "dense", description="the retrieval mode that ranked the results"
    )
