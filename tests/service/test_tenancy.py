"""Tenant isolation over HTTP: a key's tenant cannot read, list, search or delete another tenant's data, and the
same document id in two tenants is two documents. Runs on SQLite and on a real Postgres registry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.service.prod_support import MakeClient, fresh_database

pytest_plugins = ["tests.service.prod_fixtures"]

A_TEXT = "Alpine lakes freeze in winter; the ice on Lake Sils is thick enough for skating by January."
B_TEXT = (
    "Quarterly revenue grew by twelve percent, driven by subscription renewals in the enterprise segment."
)


@pytest.fixture(params=["sqlite", "postgres"])
def tenant_client(request: pytest.FixtureRequest, make_client: MakeClient) -> Iterator[TestClient]:
    if request.param == "postgres":
        url = fresh_database(request.getfixturevalue("postgres_url"), f"tenancy_{uuid.uuid4().hex[:8]}")
        with make_client(database_url=url) as client:
            yield client
    else:
        with make_client() as client:
            yield client


def put(client: TestClient, headers: dict[str, str], document_id: str, text: str) -> dict:
    response = client.put(f"/v1/documents/{document_id}", json={"text": text}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_same_document_id_in_two_tenants_is_two_documents(
    tenant_client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str]
) -> None:
    put(tenant_client, headers_a, "shared", A_TEXT)
    put(tenant_client, headers_b, "shared", B_TEXT)  # created, not "updated": B never saw A's document
    doc_a = tenant_client.get("/v1/documents/shared", headers=headers_a).json()
    doc_b = tenant_client.get("/v1/documents/shared", headers=headers_b).json()
    assert doc_a["content_hash"] != doc_b["content_hash"]

    # Deleting B's copy leaves A's untouched.
    assert tenant_client.delete("/v1/documents/shared", headers=headers_b).status_code == 204
    assert tenant_client.get("/v1/documents/shared", headers=headers_b).status_code == 404
    assert tenant_client.get("/v1/documents/shared", headers=headers_a).json() == doc_a
    hits = tenant_client.post("/v1/search", json={"query": "frozen lake skating"}, headers=headers_a).json()
    assert hits["results"]
    assert all(hit["document_id"] == "shared" for hit in hits["results"])


def test_a_tenant_cannot_read_list_search_or_delete_anothers_documents(
    tenant_client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str]
) -> None:
    put(tenant_client, headers_a, "a-lakes", A_TEXT)
    put(tenant_client, headers_b, "b-revenue", B_TEXT)

    assert tenant_client.get("/v1/documents/b-revenue", headers=headers_a).status_code == 404
    listed = tenant_client.get("/v1/documents", headers=headers_a).json()
    assert [d["document_id"] for d in listed["documents"]] == ["a-lakes"]

    # A query that matches B's document best still only returns A's chunks to A.
    query = {"query": "enterprise subscription revenue growth", "top_k": 10}
    a_hits = tenant_client.post("/v1/search", json=query, headers=headers_a).json()["results"]
    assert {hit["document_id"] for hit in a_hits} <= {"a-lakes"}
    assert all("revenue" not in hit["text"] for hit in a_hits)
    b_hits = tenant_client.post("/v1/search", json=query, headers=headers_b).json()["results"]
    assert b_hits[0]["document_id"] == "b-revenue"

    assert tenant_client.delete("/v1/documents/b-revenue", headers=headers_a).status_code == 404
    assert tenant_client.get("/v1/documents/b-revenue", headers=headers_b).status_code == 200


def test_a_tenant_cannot_see_anothers_jobs(
    make_client: MakeClient, headers_a: dict[str, str], headers_b: dict[str, str]
) -> None:
    with make_client() as client:
        accepted = client.put("/v1/documents/job-doc?async=true", json={"text": A_TEXT}, headers=headers_a)
        assert accepted.status_code == 202
        job_id = accepted.json()["job_id"]
        client.portal.call(client.app.state.services.jobs.wait_idle)
        assert client.get(f"/v1/jobs/{job_id}", headers=headers_b).status_code == 404
        assert client.get(f"/v1/jobs/{job_id}", headers=headers_a).json()["status"] == "succeeded"
        assert client.get("/v1/documents/job-doc", headers=headers_b).status_code == 404
