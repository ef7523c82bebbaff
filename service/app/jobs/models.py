"""Async ingestion job records: what a client polls at `GET /v1/jobs/{job_id}` and what the queue carries."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobStatus(StrEnum):
    """Lifecycle of a job: queued -> running -> succeeded | failed."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


FINISHED = frozenset({JobStatus.succeeded, JobStatus.failed})


def new_job_id() -> str:
    """A random, unguessable job id (possession of it is not authorisation: lookups are tenant-scoped too)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class IngestPayload(BaseModel):
    """Everything a worker needs to ingest one document; text is extracted before enqueueing, so workers never
    see the raw upload and the payload stays JSON."""

    job_id: str
    tenant_id: str
    document_id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    content_type: str = "text/plain"
    request_id: str | None = None  # of the submitting request, so worker logs can be correlated with it
    # The write ticket taken at the 202 (the document's write order): a write or delete acknowledged after it
    # wins, and the job ends succeeded with result status "superseded". None: a job queued by an older release.
    write_ticket: int | None = None


class JobRecord(BaseModel):
    """The state of one job as stored (in memory or Redis) and returned by the jobs API."""

    job_id: str
    tenant_id: str = Field(exclude=True)  # never echoed: the caller already is this tenant
    document_id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def queued(cls, payload: IngestPayload) -> JobRecord:
        return cls(
            job_id=payload.job_id,
            tenant_id=payload.tenant_id,
            document_id=payload.document_id,
            status=JobStatus.queued,
            created_at=utcnow(),
        )

    def to_storage(self) -> str:
        """JSON including the tenant, which the API representation leaves out."""
        data = self.model_dump(mode="json")
        data["tenant_id"] = self.tenant_id
        return json.dumps(data)

    @classmethod
    def from_storage(cls, raw: str | bytes) -> JobRecord:
        return cls.model_validate_json(raw)
