"""An async write on a nearly full disk is refused before its 202, as the same write sent synchronously (EYES10).

The embedded store reads the real free space of its volume (statvfs of tmp_path) before each write; a threshold
above any disk's size (READY_MIN_FREE_BYTES' field on the store) makes that real reading "nearly full", as in
test_hostile_input. Before the fix an async PUT answered 202 there and its job spent JOBS_MAX_ATTEMPTS and
failed, breaking README's "nothing acknowledged is lost".
"""

from __future__ import annotations

from pathlib import Path

from service.app.store.edge import DISK_FULL_RETRY_SECONDS, EdgeVectorStore
from service.app.store.embedder import FastEmbedEmbedder
from tests.service.service_process import wait_for
from tests.service.support import make_settings, running_app


def test_async_writes_are_refused_with_a_503_and_retry_after_while_the_disk_is_nearly_full(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = make_settings(tmp_path, vector_store="edge")
    store = EdgeVectorStore.from_settings(
        settings, model_name=embedder.model_name, dimension=embedder.dimension
    )
    with running_app(settings, embedder=embedder, vectors=store) as client:
        store.min_free_bytes = 2**62  # the real statvfs reading, below this threshold
        synchronous = client.put("/v1/documents/d", json={"text": "no room for this"})
        queued = client.put("/v1/documents/d?async=true", json={"text": "no room for this"})
        uploaded = client.post(
            "/v1/documents?async=true", files={"file": ("u.txt", b"no room for this either", "text/plain")}
        )
        for refused in (synchronous, queued, uploaded):
            assert refused.status_code == 503, refused.text
            assert "READY_MIN_FREE_BYTES" in refused.json()["error"]["message"]
            assert refused.headers["Retry-After"] == str(DISK_FULL_RETRY_SECONDS)
        assert client.get("/v1/documents/d").status_code == 404
        assert client.get("/v1/documents/u.txt").status_code == 404

        store.min_free_bytes = settings.ready_min_free_bytes  # space freed: accepted and done, no restart
        accepted = client.put("/v1/documents/d?async=true", json={"text": "room again for this"})
        assert accepted.status_code == 202, accepted.text
        status_url = accepted.headers["Location"]
        done = wait_for(
            lambda: (job := client.get(status_url).json())["status"] in ("succeeded", "failed") and job,
            "the accepted job to finish",
        )
        assert done["status"] == "succeeded", done
        assert client.get("/v1/documents/d").status_code == 200
    store.close()
