"""Enqueue an ingestion as a job: validate what can be validated now, then answer 202 with the job id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.app.core.errors import InvalidInput
from service.app.core.logging import request_id_var
from service.app.ingest.extract import normalize_text
from service.app.ingest.models import has_lone_surrogate, validate_metadata, validate_new_document_id
from service.app.jobs.models import IngestPayload, JobStatus, new_job_id


class JobAccepted(BaseModel):
    """Body of a 202: poll `status_url` until the status is succeeded or failed."""

    job_id: str
    status: JobStatus
    document_id: str
    status_url: str


async def submit_ingest(
    services: Any,
    tenant_id: str,
    document_id: str,
    *,
    text: str,
    metadata: dict[str, Any] | None,
    content_type: str,
) -> JSONResponse:
    """Queue the ingestion of already-extracted text; 422s for a bad id or metadata come before the 202."""
    validate_new_document_id(document_id)
    clean_metadata = validate_metadata(metadata)
    if has_lone_surrogate(text):
        # Refused now, not as a failed job: the payload could not even be serialised for the queue.
        raise InvalidInput(
            "text contains an unpaired surrogate (\\ud800-\\udfff), which is not valid Unicode"
        )
    if not normalize_text(text):
        # The synchronous path answers 422 for this; a queued job must not turn bad input into a failed job.
        raise InvalidInput("text is empty")
    # Its place in the document's write order: taken now, so a write or delete acknowledged after this 202 wins
    # over the job however long it waits in the queue (service.app.store.registry, write_order).
    ticket = await services.ingest.accept(tenant_id, document_id)
    payload = IngestPayload(
        job_id=new_job_id(),
        tenant_id=tenant_id,
        document_id=document_id,
        text=text,
        metadata=clean_metadata,
        content_type=content_type,
        request_id=request_id_var.get(),
        write_ticket=ticket,
    )
    record = await services.jobs.submit(payload)
    status_url = f"/v1/jobs/{record.job_id}"
    body = JobAccepted(
        job_id=record.job_id, status=record.status, document_id=document_id, status_url=status_url
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": status_url})


AsyncFlag = Annotated[
    bool,
    Query(
        alias="async",
        description="true: validate, queue the ingestion and answer 202 {job_id}; poll GET /v1/jobs/{job_id}",
    ),
]
ASYNC_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobAccepted, "description": "queued (with ?async=true)"}
}
