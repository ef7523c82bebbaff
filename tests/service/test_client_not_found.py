"""`IngestClient.send` tells the service's "no such document" 404 (its error names the document) from a 404 of a
URL that is not the service's: the first is an answer GET callers use, the second NotTheService for every caller."""

from __future__ import annotations

import httpx
import pytest

from service import client as ingest_client


def client_for(handler) -> ingest_client.IngestClient:  # type: ignore[no-untyped-def]
    client = ingest_client.IngestClient("http://service", None, ingest_client.Report(), sleep=lambda _s: None)
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    return client


def service(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/documents/held":
        return httpx.Response(200, json={"document_id": "held", "content_hash": "abc"})
    if request.url.path.startswith("/v1/documents/"):
        document_id = request.url.path.rsplit("/", 1)[1]
        message = f"document {document_id!r} not found"
        return httpx.Response(
            404, json={"error": {"code": "not_found", "message": message, "document_id": document_id}}
        )
    return httpx.Response(404, json={"error": {"code": "not_found", "message": "Not Found"}})


def test_a_document_not_stored_is_an_answer_not_a_wrong_url() -> None:
    client = client_for(service)
    assert client.stored_hash("held") == "abc"
    assert client.stored_hash("missing") is None
    response = client.send("GET", "/v1/documents/missing")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(
            404, json={"error": {"code": "not_found", "message": "Not Found"}}
        ),  # the service's route 404
        httpx.Response(404, json={"detail": "Not Found"}),  # another FastAPI app
        httpx.Response(404, text="<html>404</html>"),  # a proxy's page
        httpx.Response(405, json={"error": {"code": "not_found", "document_id": "x"}}),
    ],
)
def test_any_other_404_or_405_is_not_the_service_for_every_caller(answer: httpx.Response) -> None:
    client = client_for(lambda _request: answer)
    with pytest.raises(ingest_client.NotTheService):
        client.stored_hash("missing")  # a GET caller learns the URL is wrong instead of "not stored"
    with pytest.raises(ingest_client.NotTheService):
        client.send("POST", "/v1/documents:bulk", json={"documents": []})


def test_a_base_url_ending_in_v1_is_not_the_service_even_for_a_document_read() -> None:
    client = client_for(service)
    client._http = httpx.Client(base_url="http://service/v1", transport=httpx.MockTransport(service))
    with pytest.raises(ingest_client.NotTheService):
        client.stored_hash("missing")  # /v1/v1/documents/missing: the route 404


def test_the_real_service_names_the_document_in_its_404_and_not_in_a_route_404(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    """The contract the client relies on, against the app itself."""
    from tests.service.support import make_settings, running_app

    with running_app(make_settings(tmp_path), embedder=embedder) as app:
        assert ingest_client.names_a_missing_document(app.get("/v1/documents/nope"))
        assert not ingest_client.names_a_missing_document(app.get("/v1/v1/documents/nope"))
