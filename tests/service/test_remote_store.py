"""RemoteVectorStore: every VectorStore operation through the API's /internal/vectors endpoint lands on the
API's own store, round-tripping the dataclasses; a wrong token or a down API is a ServiceUnavailable."""

from __future__ import annotations

import re
import socket
import struct
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app.core.errors import DiskFull, ServiceUnavailable
from service.app.main import create_app
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.remote import RemoteVectorStore
from service.app.store.sparse import SparseEncoder
from service.app.store.vectors import ChunkPoint, MetadataCondition
from tests.service.support import make_settings

TOKEN = "internal-token-for-tests"


class ThroughTestClient(httpx.BaseTransport):
    """The store's httpx requests, replayed through the app's TestClient. Starlette's TestClient speaks httpx2
    when that is installed (the openai package brings it), so its own transport can't serve an httpx.Client."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        return httpx.Response(
            answer.status_code, headers=list(answer.headers.items()), content=answer.content
        )


def point(document_id: str, version: int, index: int, vector: list[float]) -> ChunkPoint:
    return ChunkPoint(
        tenant_id="t",
        document_id=document_id,
        version=version,
        chunk_index=index,
        text=f"{document_id} v{version} #{index}",
        vector=vector,
        metadata={"lang": "en", "n": index},
        content_hash="h",
        model="m",
    )


def test_every_operation_reaches_the_owning_store(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    settings = make_settings(tmp_path, internal_token=TOKEN)
    with TestClient(create_app(settings, embedder=embedder)) as client:
        owner = client.app.state.services.vectors
        remote = RemoteVectorStore("http://testserver", TOKEN, transport=ThroughTestClient(client))
        vector = embedder.embed_query("rivers and fish")
        remote.ensure_collection()
        remote.upsert([point("a", 1, 0, vector), point("a", 2, 0, vector), point("a", 2, 1, vector)])
        assert owner.count("t", "a") == remote.count("t", "a") == 3
        hits = remote.search("t", vector, limit=5, conditions=[MetadataCondition(field="n", gte=1)])
        assert [(h.document_id, h.version, h.chunk_index) for h in hits] == [("a", 2, 1)]
        # The sparse vectors the worker computed travel with the points, and so do sparse and hybrid searches.
        assert remote.has_sparse
        keyword = SparseEncoder().query("v1")
        for mode in ("sparse", "hybrid"):
            hits = remote.search("t", vector, limit=5, mode=mode, sparse=keyword, score_threshold=0.5)
            assert (hits[0].document_id, hits[0].version, hits[0].chunk_index) == ("a", 1, 0)
            assert hits == owner.search("t", vector, limit=5, mode=mode, sparse=keyword, score_threshold=0.5)
        assert {(v.document_id, v.version, v.points) for v in remote.versions()} == {("a", 1, 1), ("a", 2, 2)}
        texts = remote.chunk_texts("t", "a", 2, [1, 0, 5])
        assert texts == owner.chunk_texts("t", "a", 2, [1, 0, 5])
        assert texts[2] is None
        assert texts[0] is not None
        remote.delete_versions_below("t", "a", 2)
        assert remote.count("t", "a") == 2
        remote.delete_version("t", "a", 2)
        assert remote.count("t") == 0
        remote.upsert([point("b", 1, 0, vector)])
        remote.delete_document("t", "b")
        assert owner.count("t") == 0
        remote.check_room()  # a store without a disk of its own to manage: nothing to refuse
        remote.close()

        wrong = RemoteVectorStore("http://testserver", "nope", transport=ThroughTestClient(client))
        with pytest.raises(ServiceUnavailable, match="401"):
            wrong.count("t")


def test_check_room_says_the_owning_stores_disk_is_full(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    """A worker checks the owner's room before it claims a job (service.app.jobs.queue): the owner's DiskFull
    comes back as a DiskFull (the job waits for space), room as nothing."""
    settings = make_settings(tmp_path, internal_token=TOKEN, vector_store="edge")
    with TestClient(create_app(settings, embedder=embedder)) as client:
        owner = client.app.state.services.vectors
        remote = RemoteVectorStore("http://testserver", TOKEN, transport=ThroughTestClient(client))
        remote.check_room()
        owner.min_free_bytes = 2**62  # more than any disk has: the owner's real statvfs reading is "full"
        with pytest.raises(DiskFull, match="READY_MIN_FREE_BYTES"):
            remote.check_room()
        owner.min_free_bytes = settings.ready_min_free_bytes
        remote.check_room()
        remote.close()


def test_the_endpoint_is_absent_without_a_token(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    with TestClient(create_app(make_settings(tmp_path), embedder=embedder)) as client:
        response = client.post("/internal/vectors/count", json={"tenant_id": "t"})
        assert response.status_code == 404
        assert "/internal" not in str(client.get("/openapi.json").json()["paths"])


def test_an_unreachable_owner_is_a_service_unavailable() -> None:
    from tests.support.servers import free_port

    remote = RemoteVectorStore(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2)
    with pytest.raises(ServiceUnavailable, match="did not answer"):
        remote.upsert([])


class ClosingOwner:
    """An owning API on a raw socket that closes a kept-alive connection under the next request on it, as
    uvicorn does when the API runs again after a stall longer than its keep-alive timeout: its timer runs
    before it reads the socket and closes it with the request unread, so the kernel resets it (``reset``);
    or it closes the connection after reading the request, unanswered (``closed``). A connection's first
    request is answered, except with ``every_connection`` (then each is closed under its first request)."""

    def __init__(self, how: str, *, every_connection: bool = False) -> None:
        self.how, self.every_connection = how, every_connection
        self.connections = self.answered = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        while length and len(body) < int(length.group(1)):
            body += conn.recv(65536)
        return data

    def _close_under(self, conn: socket.socket) -> None:
        if self.how == "reset":
            conn.recv(1, socket.MSG_PEEK)  # the request has arrived; left unread
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self._read_request(conn)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            self.connections += 1
            with conn:
                if self.every_connection:
                    self._close_under(conn)
                    continue
                if not self._read_request(conn):
                    continue
                self.answered += 1  # before it is sent: the test reads it once the answer has arrived
                payload = b'{"result": 7}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(payload), payload)
                )
                self._close_under(conn)  # the next request on this kept-alive connection

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not on Linux)
        self.listener.close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("how", ["reset", "closed"])
def test_a_request_on_a_connection_the_owner_closed_is_sent_again_on_a_new_one(how: str) -> None:
    # A worker gave its live job up to a retry (attempt 2) when the API, stalled past its keep-alive, reset the
    # pooled connection its write waited on (tests/service/test_job_lease_processes.py, the heartbeat part).
    owner = ClosingOwner(how)
    remote = RemoteVectorStore(owner.url, TOKEN, timeout=10)
    try:
        assert remote.count("t") == 7
        assert remote.count("t") == 7  # its connection closed under it: answered on a second connection
        assert (owner.connections, owner.answered) == (2, 2)
        assert remote.count("t") == 7
        assert (owner.connections, owner.answered) == (3, 3)
    finally:
        remote.close()
        owner.close()


@pytest.mark.parametrize("how", ["reset", "closed"])
def test_an_owner_that_closes_every_connection_is_a_service_unavailable_after_one_more_try(how: str) -> None:
    owner = ClosingOwner(how, every_connection=True)
    remote = RemoteVectorStore(owner.url, TOKEN, timeout=10)
    try:
        with pytest.raises(ServiceUnavailable, match="did not answer"):
            remote.upsert([])
        assert (owner.connections, owner.answered) == (2, 0)  # sent again once, not in a loop
    finally:
        remote.close()
        owner.close()
