"""The admin re-index status route never blocks the event loop: the registry reads it makes (the pointer, the
lease) run in a worker thread, so a slow or stalled registry delays that request only, never /healthz (a
liveness probe that failed there would have the kubelet restart a serving pod)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from service.app.store.embedder import FastEmbedEmbedder
from tests.service.support import make_settings, running_app, services_of

BOUND_SECONDS = 60.0  # how long the stalled registry read waits at most: bounds a broken run, asserts nothing


def test_the_status_route_reads_the_registry_off_the_event_loop(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = make_settings(tmp_path, index_pointer_ttl_seconds=0)
    with running_app(settings, embedder=embedder) as client:
        registry = services_of(client).registry
        real = registry.index_pointer
        entered, release, finished = threading.Event(), threading.Event(), threading.Event()

        def stalled(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            try:
                release.wait(BOUND_SECONDS)
                return real(*args, **kwargs)
            finally:
                finished.set()

        registry.index_pointer = stalled  # type: ignore[method-assign]
        answers: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: answers.update(status=client.get("/v1/admin/reindex")))
        reader.start()
        try:
            assert entered.wait(BOUND_SECONDS), "the status route never read the pointer"
            health = client.get("/healthz")
            # Answered while the registry read is still stalled: had the route read it on the event loop, this
            # request would only have been served after the stall ended (finished set).
            assert health.status_code == 200
            assert not finished.is_set()
        finally:
            release.set()
            reader.join(BOUND_SECONDS)
            registry.index_pointer = real  # type: ignore[method-assign]
        assert answers["status"].status_code == 200, answers["status"].text
        assert (
            answers["status"].json()["serving"]["collection"]
            == services_of(client).ingest.index.current.collection
        )
