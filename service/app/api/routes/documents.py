"""Document routes: create/replace (JSON, file upload, or many at once in bulk), read (its entry or its stored
chunks), list, delete.

Logic lives in IngestService; the bulk route runs each item through the same path as PUT and reports each
item's outcome with the status code its PUT would have had.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive

from service.app.api.deps import ServicesDep, TenantDep
from service.app.api.routing import AuthenticatedRoute
from service.app.core.errors import (
    InvalidInput,
    PayloadTooLarge,
    RagError,
    RateLimited,
    UnsupportedMediaType,
    error_body,
    error_responses,
    not_json,
)
from service.app.core.security import rate_limit
from service.app.ingest.extract import charset_of, detect_content_type, normalize_content_type
from service.app.ingest.models import (
    DOCUMENT_ID_PATTERN,
    JSON_CONTENT_TYPES,
    METADATA_KEY_PATTERN,
    BulkDocument,
    BulkItemResult,
    BulkResponse,
    DocumentChunks,
    DocumentIn,
    DocumentList,
    DocumentOut,
    IngestResult,
    document_id_from_filename,
    validate_document_id,
    validate_new_document_id,
)
from service.app.jobs.submit import ASYNC_RESPONSES, AsyncFlag, submit_ingest
from service.app.store.registry import MAX_PAGE_SIZE

logger = logging.getLogger(__name__)

# Writes spend the ingest budget, reads the search budget (service.app.core.security.charge).
router = APIRouter(
    prefix="/v1/documents",
    tags=["documents"],
    dependencies=[Depends(rate_limit("ingest"))],
    route_class=AuthenticatedRoute,
)
# POST /v1/documents:bulk, a custom method (Google AIP-136 style): `/v1/documents/bulk` would shadow the document
# whose id is "bulk" (ids may be any of [A-Za-z0-9._:-], but never contain "/" after "documents").
bulk_router = APIRouter(
    prefix="/v1",
    tags=["documents"],
    dependencies=[Depends(rate_limit("ingest"))],
    route_class=AuthenticatedRoute,
)

# The pattern is in the OpenAPI schema so clients and fuzzers know it; the 422 names the field and the pattern.
DocumentIdPath = Annotated[
    str,
    Path(
        pattern=DOCUMENT_ID_PATTERN,
        description=f"the document's id, matching {DOCUMENT_ID_PATTERN}",
        openapi_examples={"leave-policy": {"value": "leave-policy"}},
    ),
]

# Room for the multipart envelope (boundaries, part headers, small form fields) on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024


_JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": DocumentIn.model_json_schema(),
                "examples": {
                    "text": {
                        "summary": "plain text with metadata",
                        "value": DocumentIn.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
                    },
                    "html": {
                        "summary": "HTML (stored as its visible text)",
                        "value": {
                            "text": "<h1>Expenses</h1><p>Submit receipts within 30 days.</p>",
                            "metadata": {"team": "finance"},
                            "content_type": "text/html",
                        },
                    },
                },
            }
        },
    }
}
_BULK_EXAMPLE = {
    "documents": [
        {
            "document_id": "leave-policy",
            "text": "Employees get 25 days of paid leave a year; unused days carry over until March.",
            "metadata": {"team": "hr"},
        },
        {
            "document_id": "expenses",
            "text": "Submit receipts within 30 days through the finance portal.",
            "metadata": {"team": "finance"},
        },
    ]
}
_BULK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["documents"],
                    "additionalProperties": False,
                    "properties": {
                        "documents": {
                            "type": "array",
                            "minItems": 1,
                            "description": "at most BULK_MAX_DOCUMENTS items, BULK_MAX_BYTES in all",
                            "items": BulkDocument.model_json_schema(),
                        }
                    },
                },
                "examples": {"two documents": {"value": _BULK_EXAMPLE}},
            }
        },
    }
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": ".txt/.md/.html/.pdf"},
                        "document_id": {"type": "string", "pattern": DOCUMENT_ID_PATTERN},
                        "metadata": {"type": "string", "description": "JSON object of metadata"},
                    },
                }
            }
        },
    }
}


def _too_large(limit: int, setting: str = "MAX_DOCUMENT_BYTES") -> PayloadTooLarge:
    # ``setting`` names the limit for a client to adapt to (the folder client reads it); a bulk body over
    # BULK_MAX_BYTES was reported as over MAX_DOCUMENT_BYTES, with BULK_MAX_BYTES's number.
    return PayloadTooLarge(
        f"request body is larger than {setting} ({limit} bytes)", limit=limit, setting=setting
    )


def _check_content_length(request: Request, limit: int, setting: str) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError as exc:
        raise InvalidInput("Content-Length is not a number") from exc
    if length > limit:
        raise _too_large(limit, setting)


async def read_limited_body(request: Request, limit: int, setting: str) -> bytes:
    """The whole body, refusing (413, naming ``setting``) by Content-Length first and again while reading."""
    _check_content_length(request, limit, setting)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, setting)
        parts.append(chunk)
    return b"".join(parts)


def parse_json_field(raw: str | bytes, what: str) -> Any:
    """``json.loads`` with every way it can fail on client input reported as a 422 naming ``what``."""
    try:
        return json.loads(raw)
    # ValueError covers JSONDecodeError, bad UTF-8/UTF-16 bytes and integers over Python's 4300-digit limit;
    # RecursionError is deeply nested arrays/objects.
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInput(f"{what} is not valid JSON: {reason}") from exc


def require_json_body(request: Request, *, allow_undeclared: bool) -> None:
    """415 unless the body is declared JSON (``application/json`` or ``application/*+json``), or not declared
    and ``allow_undeclared``.

    Checked before the body is read. curl's ``-d`` sends ``application/x-www-form-urlencoded`` and a body sent
    as ``text/plain`` may be a document's text itself: taking either as JSON hid the client's mistake (a
    non-JSON text got "body is not valid JSON" instead of being pointed at the upload route). An undeclared
    body is allowed only where a browser cannot send one cross-site without a CORS preflight: a PUT is never a
    "simple" request, a POST without a Content-Type is (``fetch(url, {method: "POST", body: blob})``), so with
    authentication off a web page could write documents through ``documents:bulk``.
    """
    declared = request.headers.get("content-type")
    if declared is None:
        if allow_undeclared:
            return
        raise not_json(None)
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return
    raise not_json(declared)


def parse_document(body: bytes) -> DocumentIn:
    """The PUT body as a DocumentIn; 422 for anything that is not a JSON object of the right shape."""
    payload = parse_json_field(body, "body")
    try:
        return DocumentIn.model_validate(payload)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_input=False)]
        ) from exc


def _limited_receive(receive: Receive, limit: int, document_limit: int) -> Receive:
    """``receive`` refusing a body over ``limit`` bytes; the 413 names ``document_limit`` (MAX_DOCUMENT_BYTES),
    the setting the client can act on, not the envelope allowance added to it."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(document_limit)
        return message

    return limited


async def _json_text(services: Any, document: DocumentIn) -> str:
    """The text of a JSON document (HTML reduced to its visible text); 415 for a type JSON cannot carry."""
    if normalize_content_type(document.content_type) not in JSON_CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"content_type {document.content_type!r} cannot be sent as JSON text; "
            f"use one of {', '.join(JSON_CONTENT_TYPES)} or upload the file to POST /v1/documents",
            supported=list(JSON_CONTENT_TYPES),
        )
    if normalize_content_type(document.content_type) == "text/html":
        # Within the extraction budgets (service.app.ingest.sandbox): 422 past them, never in the event loop.
        return await services.extractor.html(document.text)
    return document.text


async def _ingest_json_document(
    services: Any, tenant: str, document_id: str, document: DocumentIn
) -> IngestResult:
    text = await _json_text(services, document)
    return await services.ingest.ingest(
        tenant, document_id, text=text, metadata=document.metadata, content_type=document.content_type
    )


@router.put(
    "/{document_id}",
    response_model=IngestResult,
    responses={
        201: {"model": IngestResult, "description": "created"},
        **ASYNC_RESPONSES,
        **error_responses(409, 413, 415, 503),
    },
    openapi_extra=_JSON_BODY,
)
async def put_document(
    document_id: DocumentIdPath,
    request: Request,
    response: Response,
    services: ServicesDep,
    tenant: TenantDep,
    async_: AsyncFlag = False,
) -> IngestResult:
    """Create or replace a document from JSON ``{text, metadata, content_type}``."""
    validate_new_document_id(document_id)
    require_json_body(request, allow_undeclared=True)
    body = await read_limited_body(request, services.settings.max_document_bytes, "MAX_DOCUMENT_BYTES")
    document = parse_document(body)
    if async_:
        text = await _json_text(services, document)
        return await submit_ingest(
            services,
            tenant,
            document_id,
            text=text,
            metadata=document.metadata,
            content_type=document.content_type,
        )
    result = await _ingest_json_document(services, tenant, document_id, document)
    response.status_code = status.HTTP_201_CREATED if result.status == "created" else status.HTTP_200_OK
    return result


@router.post(
    "",
    response_model=IngestResult,
    responses={
        201: {"model": IngestResult, "description": "created"},
        **ASYNC_RESPONSES,
        **error_responses(409, 413, 415, 503),
    },
    openapi_extra=_UPLOAD_BODY,
)
async def upload_document(
    request: Request, response: Response, services: ServicesDep, tenant: TenantDep, async_: AsyncFlag = False
) -> IngestResult:
    """Create or replace a document from a multipart file upload (.txt/.md/.html/.pdf)."""
    limit = services.settings.max_document_bytes
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType(
            "upload with Content-Type multipart/form-data and a `file` field "
            "(or PUT /v1/documents/{document_id} with JSON)"
        )
    _check_content_length(request, limit + MULTIPART_OVERHEAD, "MAX_DOCUMENT_BYTES")
    limited = Request(request.scope, _limited_receive(request.receive, limit + MULTIPART_OVERHEAD, limit))
    try:
        form = await limited.form(max_files=1, max_fields=8)
    except StarletteHTTPException as exc:
        if exc.status_code == status.HTTP_413_CONTENT_TOO_LARGE:
            # The global body limit (middleware) fired while the form streamed in: too large, not malformed.
            raise _too_large(limit) from exc
        raise InvalidInput(f"malformed multipart body: {exc.detail}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("the multipart body needs a `file` field with the document")
        if upload.size is not None and upload.size > limit:
            raise _too_large(limit)
        given_id = form.get("document_id")
        if given_id is not None and not isinstance(given_id, str):
            raise InvalidInput("document_id must be a text field")
        document_id = (
            validate_new_document_id(given_id) if given_id else document_id_from_filename(upload.filename)
        )
        metadata_field = form.get("metadata")
        metadata = None
        if metadata_field:
            if not isinstance(metadata_field, str):
                raise InvalidInput("metadata must be a text field holding a JSON object")
            metadata = parse_json_field(metadata_field, "metadata")
        content_type = detect_content_type(upload.content_type, upload.filename)
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > limit:
        raise _too_large(limit)
    text = await _extract(services, data, upload.content_type or "", content_type)
    if async_:
        return await submit_ingest(
            services, tenant, document_id, text=text, metadata=metadata, content_type=content_type
        )
    result = await services.ingest.ingest(
        tenant, document_id, text=text, metadata=metadata, content_type=content_type
    )
    response.status_code = status.HTTP_201_CREATED if result.status == "created" else status.HTTP_200_OK
    return result


@bulk_router.post(
    "/documents:bulk",
    response_model=BulkResponse,
    responses={
        207: {"model": BulkResponse, "description": "some items failed; each item says why"},
        **error_responses(413, 415),
    },
    openapi_extra=_BULK_BODY,
)
async def bulk_ingest(
    request: Request, response: Response, services: ServicesDep, tenant: TenantDep
) -> BulkResponse:
    """Create or replace many documents in one request; 200 when all succeed, else 207 with per-item errors.

    The request is checked as a whole first (shape, item count, size, repeated ids: a 4xx stores nothing). Then
    items are ingested one after another, each committed on its own: an item that fails (empty text, bad
    metadata, a conflict, a backend outage) is reported in its `items` entry and neither stops nor undoes the
    others, so resending only the failed ones is safe. Each item costs one request of the ingest rate limit.
    """
    settings = services.settings
    require_json_body(request, allow_undeclared=False)
    body = await read_limited_body(request, settings.bulk_max_bytes, "BULK_MAX_BYTES")
    documents = _bulk_documents(parse_json_field(body, "body"), settings.bulk_max_documents)
    await _charge_items(request, services, len(documents))
    items: list[BulkItemResult] = []
    state = request.scope.setdefault("state", {})
    for index, document in enumerate(documents):
        if index and await request.is_disconnected():
            # The client gave up waiting (its timeout, on a busy host): the rest would be stored for nobody
            # while the client sends them again (the folder client does, in smaller batches).
            logger.warning(
                "documents:bulk: its client left after %d of %d items; the rest were not stored",
                index,
                len(documents),
                extra={"tenant": tenant, "stored_items": index, "items": len(documents)},
            )
            break
        # For the shutdown's line if it cuts this request (service.app.api.middleware): what was done.
        state["progress"] = (
            f"documents:bulk had finished {index} of {len(documents)} items; item {index} "
            f"({document.document_id!r}) was in progress"
        )
        try:
            result = await _ingest_json_document(services, tenant, document.document_id, document)
        except RagError as exc:
            items.append(_failed_item(index, document.document_id, exc))
        except Exception:
            # An unexpected bug in one item must not cost the caller the items already stored.
            logger.exception("bulk item failed unexpectedly", extra={"index": index})
            items.append(_failed_item(index, document.document_id, RagError("internal server error")))
        else:
            code = status.HTTP_201_CREATED if result.status == "created" else status.HTTP_200_OK
            items.append(
                BulkItemResult(index=index, document_id=document.document_id, status_code=code, result=result)
            )
        # Done with it (stored or failed) before the next await: a cut from here on names no item as in
        # progress (a cancellation inside the item, a BaseException, skips this and keeps the line above).
        state["progress"] = f"documents:bulk had finished {index + 1} of {len(documents)} items"
    failed = sum(1 for item in items if item.error is not None)
    response.status_code = status.HTTP_207_MULTI_STATUS if failed else status.HTTP_200_OK
    return BulkResponse(succeeded=len(items) - failed, failed=failed, items=items)


def _bulk_documents(payload: Any, max_documents: int) -> list[BulkDocument]:
    """The batch's items, checked for shape before any is ingested (a malformed request stores nothing)."""
    if not isinstance(payload, dict) or set(payload) != {"documents"}:
        raise InvalidInput('the body must be a JSON object {"documents": [...]} and nothing else')
    raw_items = payload["documents"]
    if not isinstance(raw_items, list) or not raw_items:
        raise InvalidInput("documents must be a non-empty list")
    if len(raw_items) > max_documents:
        raise PayloadTooLarge(
            f"{len(raw_items)} documents in one request; BULK_MAX_DOCUMENTS is {max_documents}",
            limit=max_documents,
            setting="BULK_MAX_DOCUMENTS",
        )
    documents: list[BulkDocument] = []
    errors: list[Any] = []
    for index, raw in enumerate(raw_items):
        try:
            documents.append(BulkDocument.model_validate(raw))
        except ValidationError as exc:
            errors.extend(
                {**error, "loc": ("body", "documents", index, *error["loc"])}
                for error in exc.errors(include_input=False)
            )
    if errors:
        raise RequestValidationError(errors)
    # What the OpenAPI schema itself declares (text minLength, metadata key pattern) refuses the request whole,
    # like any other schema violation; the service's deeper checks (blank text, nested values...) stay per item.
    for index, document in enumerate(documents):
        if document.text == "":
            raise InvalidInput(f"documents[{index}].text is empty")
        for key in document.metadata:
            if not re.fullmatch(METADATA_KEY_PATTERN, key):
                raise InvalidInput(
                    f"documents[{index}].metadata key {key!r} is not an identifier "
                    f"(pattern {METADATA_KEY_PATTERN})"
                )
    seen: dict[str, int] = {}
    for index, document in enumerate(documents):
        if document.document_id in seen:
            raise InvalidInput(
                f"documents[{index}].document_id {document.document_id!r} repeats documents[{seen[document.document_id]}]"
            )
        seen[document.document_id] = index
    return documents


async def _charge_items(request: Request, services: Any, count: int) -> None:
    """Spend the rest of the batch's cost (the router's dependency spent one request already)."""
    limiter = services.limiter
    largest = limiter.max_cost("ingest")
    if largest is not None and count > largest:
        raise InvalidInput(
            f"{count} documents can never fit the ingest rate limit ({limiter.describe('ingest')}); "
            f"send at most {largest} per request"
        )
    if count > 1:
        principal = request.state.principal
        try:
            quota = await limiter.hit("ingest", principal.key_id, cost=count - 1)
        except RateLimited as exc:
            request.state.rate_limit_quota = exc.quota  # the 429's headers describe this refusal
            raise
        if quota is not None:
            request.state.rate_limit_quota = quota


def _failed_item(index: int, document_id: str, exc: RagError) -> BulkItemResult:
    return BulkItemResult(
        index=index,
        document_id=document_id,
        status_code=exc.status_code,
        error=error_body(exc.code, exc.message, **exc.details)["error"],
    )


async def _extract(services: Any, data: bytes, declared: str, content_type: str) -> str:
    # The detected type, with the charset parameter the part declared (text/plain; charset=latin-1), if any.
    charset = charset_of(declared)
    full_type = f"{content_type}; charset={charset}" if charset else content_type
    return await services.extractor.document(data, full_type)


@router.get("/{document_id}", response_model=DocumentOut, responses=error_responses(404))
async def get_document(document_id: DocumentIdPath, services: ServicesDep, tenant: TenantDep) -> DocumentOut:
    """One document's registry entry (version, hash, metadata, chunk count)."""
    return await services.ingest.get(tenant, document_id)


@router.get("/{document_id}/chunks", response_model=DocumentChunks, responses=error_responses(404, 503))
async def get_document_chunks(
    document_id: DocumentIdPath,
    services: ServicesDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0, le=2**31, description="next_offset of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
) -> DocumentChunks:
    """The stored text of a document's chunks (the active version, as search serves it), a page at a time."""
    return await services.ingest.chunks(tenant, document_id, offset=offset, limit=limit)


@router.get("", response_model=DocumentList)
async def list_documents(
    services: ServicesDep,
    tenant: TenantDep,
    cursor: Annotated[
        str | None, Query(max_length=1024, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
) -> DocumentList:
    """The tenant's documents ordered by id, a page at a time."""
    return await services.ingest.list(tenant, cursor=cursor, limit=limit)


@router.delete(
    "/{document_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 409, 503),
)
async def delete_document(document_id: DocumentIdPath, services: ServicesDep, tenant: TenantDep) -> Response:
    """Delete a document and its chunks (404 when unknown)."""
    await services.ingest.delete(tenant, document_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class _NotChunks(PathConvertor):
    """A path tail other than exactly ``chunks`` (the read-only resource below a document)."""

    regex = "(?!chunks$).*"


register_url_convertor("not_chunks", _NotChunks())


@router.api_route("/{head}/{tail:not_chunks}", methods=["GET", "PUT", "DELETE"], include_in_schema=False)
async def document_id_with_a_slash(head: str, tail: str) -> None:
    """A document path holding a "/" (``a%2Fb`` arrives decoded as ``a/b``): 422 naming the id pattern, as for
    any other invalid id, not a 404 the client cannot tell from an unknown document. Registered last, so it
    only takes paths no route above matched (``/v1/documents/`` still redirects to the list). Its tail is never
    ``chunks``: ``{id}/chunks`` is a read-only resource, and a PUT or DELETE of it is a 405 naming GET."""
    validate_document_id(f"{head}/{tail}")
