"""Request/response models and input rules of the document API (shared by the routes and the job worker)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.app.core.errors import InvalidInput
from service.app.core.ids import DOCUMENT_ID_PATTERN, derive_document_id

METADATA_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_METADATA_KEYS = 64
MAX_METADATA_STRING = 1024
MAX_METADATA_LIST = 100
JSON_CONTENT_TYPES = ("text/plain", "text/markdown", "text/html")

_document_id = re.compile(DOCUMENT_ID_PATTERN)
_metadata_key = re.compile(METADATA_KEY_PATTERN)
# JSON's "\ud800" escape decodes to a lone surrogate: a str Python holds but UTF-8 (hashing, Qdrant, Postgres)
# cannot encode.
_surrogate = re.compile("[\ud800-\udfff]")

MetadataValue = str | int | float | bool | list[str]


class DocumentIn(BaseModel):
    """Body of PUT /v1/documents/{document_id}."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "text": "Employees get 25 days of paid leave a year; unused days carry over until March.",
                    "metadata": {"team": "hr", "year": 2026, "tags": ["leave", "policy"]},
                    "content_type": "text/plain",
                }
            ]
        },
    )

    # Declared in the schema (bulk refuses a batch breaking it whole); the PUT path answers "text is empty".
    text: str = Field(
        description="the document text (HTML is reduced to its visible text)",
        json_schema_extra={"minLength": 1},
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="flat object: string, number, boolean or list-of-string values",
        json_schema_extra={"propertyNames": {"pattern": METADATA_KEY_PATTERN}},
    )
    content_type: str = Field("text/plain", description="text/plain, text/markdown or text/html")


class IngestResult(BaseModel):
    """Outcome of one ingest: whether anything changed, and how many chunks the active version has."""

    document_id: str
    status: Literal["created", "updated", "unchanged", "superseded"] = Field(
        description="superseded (async jobs only): a write or delete of the document acknowledged after this "
        "write was accepted took effect first; this one changed nothing"
    )
    chunks: int
    version: int | None = Field(description="the version written; null when superseded")


class BulkDocument(DocumentIn):
    """One item of POST /v1/documents/bulk: a document and its id."""

    document_id: str = Field(pattern=DOCUMENT_ID_PATTERN, description="the document's id")


class BulkItemResult(BaseModel):
    """What happened to one item, in request order: an HTTP-like status with the result or the error."""

    index: int = Field(description="position of the item in the request's `documents`")
    document_id: str
    status_code: int = Field(
        description="201 created, 200 updated/unchanged, or the 4xx/5xx its PUT would get"
    )
    result: IngestResult | None = None
    error: dict[str, Any] | None = Field(
        None, description="the error body's `error` object for a failed item"
    )


class BulkResponse(BaseModel):
    """Per-item outcomes of a bulk ingest; items that failed did not stop or undo the others."""

    succeeded: int
    failed: int
    items: list[BulkItemResult]


class DocumentOut(BaseModel):
    """A document as the registry knows it (its text lives in the chunks)."""

    document_id: str
    version: int
    content_hash: str
    content_type: str
    chunk_count: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ChunkOut(BaseModel):
    """One stored chunk: the text search matches and answers quote."""

    chunk_index: int
    text: str


class DocumentChunks(BaseModel):
    """A page of a document's stored chunks, in order; pass ``next_offset`` back as ``offset`` for the next page
    (null after the last)."""

    document_id: str
    version: int
    chunk_count: int
    chunks: list[ChunkOut]
    next_offset: int | None


class DocumentList(BaseModel):
    """One page of documents ordered by id; pass ``next_cursor`` back as ``cursor`` for the next page."""

    documents: list[DocumentOut]
    next_cursor: str | None


def validate_document_id(document_id: str) -> str:
    """The id itself, or InvalidInput naming the allowed pattern."""
    if not isinstance(document_id, str) or not _document_id.fullmatch(document_id):
        raise InvalidInput(
            f"document_id must match {DOCUMENT_ID_PATTERN} (letters, digits, . _ : -; 1 to 256 characters)"
        )
    return document_id


#: Ids a URL cannot carry: every HTTP client, browser and proxy (the Gateway's Envoy included) resolves ``.`` and
#: ``..`` as dot segments (RFC 3986 5.2.4), so ``/v1/documents/..`` reaches ``/v1/`` and the document could never
#: be read or deleted again.
DOT_SEGMENT_IDS = frozenset({".", ".."})


def validate_new_document_id(document_id: str) -> str:
    """``validate_document_id`` for an id about to be written: also refuses ``.`` and ``..``.

    Reads and deletes take them still, so a document stored under one before the rule stays reachable with a
    client that keeps dot segments (``curl --path-as-is``) and can be deleted."""
    validate_document_id(document_id)
    if document_id in DOT_SEGMENT_IDS:
        raise InvalidInput(
            f"document_id {document_id!r} is a URL dot segment: clients and proxies resolve it away, so the "
            "document could not be read or deleted; use another id"
        )
    return document_id


def document_id_from_filename(filename: str | None) -> str:
    """The document id of an upload sent without one: ``derive_document_id`` of the file's base name."""
    name = PurePath((filename or "").replace("\\", "/")).name
    if not name.strip(". "):
        raise InvalidInput("no document_id given and none can be derived from the file name")
    return derive_document_id(name)


def has_lone_surrogate(value: str) -> bool:
    """True when ``value`` holds an unpaired UTF-16 surrogate (not valid Unicode, not encodable as UTF-8)."""
    return not value.isascii() and _surrogate.search(value) is not None


def validate_metadata_key(key: str, what: str = "metadata key") -> str:
    """Metadata keys become payload paths (``metadata.<key>``): identifiers only."""
    if not isinstance(key, str) or not _metadata_key.fullmatch(key):
        raise InvalidInput(f"{what} {key!r} must match {METADATA_KEY_PATTERN}")
    return key


def validate_metadata(metadata: Any) -> dict[str, MetadataValue]:
    """A flat object of str/number/bool/list-of-str values, or InvalidInput saying which key is wrong."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be a JSON object")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(f"metadata has more than {MAX_METADATA_KEYS} keys")
    clean: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        validate_metadata_key(key)
        if isinstance(value, bool):
            clean[key] = value
        elif isinstance(value, int | float):
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidInput(f"metadata.{key} must be a finite number")
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                raise InvalidInput(f"metadata.{key} is out of the 64-bit integer range")
            clean[key] = value
        elif isinstance(value, str):
            if len(value) > MAX_METADATA_STRING:
                raise InvalidInput(f"metadata.{key} is longer than {MAX_METADATA_STRING} characters")
            if has_lone_surrogate(value):
                raise InvalidInput(f"metadata.{key} contains an unpaired surrogate (not valid Unicode)")
            clean[key] = value
        elif isinstance(value, list):
            if len(value) > MAX_METADATA_LIST or not all(isinstance(item, str) for item in value):
                raise InvalidInput(f"metadata.{key} must be a list of at most {MAX_METADATA_LIST} strings")
            if any(len(item) > MAX_METADATA_STRING for item in value):
                raise InvalidInput(f"metadata.{key} has an item longer than {MAX_METADATA_STRING} characters")
            if any(has_lone_surrogate(item) for item in value):
                raise InvalidInput(
                    f"metadata.{key} has an item with an unpaired surrogate (not valid Unicode)"
                )
            clean[key] = list(value)
        else:
            raise InvalidInput(
                f"metadata.{key} must be a string, number, boolean or list of strings (no nested objects)"
            )
    return clean
