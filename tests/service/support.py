"""Helpers for the service tests: isolated settings, and adapters that fail on demand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.app.core.config import Settings
from service.app.core.errors import ServiceUnavailable
from service.app.main import Services, create_app
from service.app.store.registry import DocumentRegistry


def confined_to(tmp_path: Path) -> dict[str, Any]:
    """The settings that keep a service inside tmp_path: SQLite + local Qdrant there, no Redis, no probe port."""
    return {
        "environment": "test",
        "data_dir": tmp_path,
        "database_url": f"sqlite:///{(tmp_path / 'registry.db').as_posix()}",
        "qdrant_url": None,
        "qdrant_path": tmp_path / "qdrant",
        "redis_url": None,
        "worker_metrics_port": 0,  # a worker run in a test serves no probe port unless the test asks
    }


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings that only use tmp_path: SQLite + local Qdrant there, no auth, limits or cache in the way."""
    values: dict[str, Any] = {
        **confined_to(tmp_path),
        "auth_disabled": True,
        "rate_limit_enabled": False,
        "cache_enabled": False,
        # The collector runs in the background at start-up; tests that leave garbage on purpose must not race it.
        "gc_enabled": False,
        "log_json": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


class FailingClient:
    """Wraps a QdrantClient; `fail_on(method, on_call=n)` makes the n-th next call of that method raise."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans: dict[str, list[int]] = {}
        self.calls: dict[str, int] = {}

    def fail_on(self, method: str, *, on_call: int = 1, times: int = 1) -> None:
        start = self.calls.get(method, 0) + on_call
        self._plans[method] = list(range(start, start + times))

    def clear(self) -> None:
        self._plans.clear()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] in self._plans.get(name, []):
                # What qdrant-client raises when the server is unreachable.
                raise httpx.ConnectError(f"injected failure in {name}")
            return attribute(*args, **kwargs)

        return call


class FlakyRegistry(DocumentRegistry):
    """A real registry whose methods can be made to fail, or to run a competing write first."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.fail: set[str] = set()
        self.before_activate: Callable[[], None] | None = None

    def activate(self, *args: Any, **kwargs: Any) -> Any:
        if "activate" in self.fail:
            raise ServiceUnavailable("document registry unavailable: injected")
        if self.before_activate is not None:
            hook, self.before_activate = self.before_activate, None
            hook()
        return super().activate(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        if "delete" in self.fail:
            raise ServiceUnavailable("document registry unavailable: injected")
        return super().delete(*args, **kwargs)


def create_database(server_url: str, name: str) -> str:
    """A fresh, empty database on the server of ``server_url``; returns its URL."""
    url = sa.make_url(server_url)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@contextmanager
def migrated_registry(request: Any, tmp_path_factory: Any, name: str) -> Iterator[DocumentRegistry]:
    """A migrated registry on a fresh database of the backend ``request.param`` (``sqlite`` or ``postgres``,
    the latter named ``name`` on the test server), closed afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp(name) / 'registry.db'}"
    else:
        url = create_database(request.getfixturevalue("postgres_url"), name)
    registry = DocumentRegistry(url)
    registry.migrate()
    try:
        yield registry
    finally:
        registry.close()


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (built by hand, offsets computed)."""
    objects: list[bytes] = []
    count = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(count))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    font_id = 3 + 2 * count
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypt_pdf(data: bytes, password: str = "secret") -> bytes:
    """The same PDF, encrypted with a user password."""
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(password)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@contextmanager
def running_app(settings: Settings, **adapters: Any) -> Iterator[TestClient]:
    """A started app (lifespan run) and a TestClient on it."""
    with TestClient(create_app(settings, **adapters)) as client:
        yield client


def services_of(client: TestClient) -> Services:
    """The Services container of the app behind a TestClient."""
    return client.app.state.services  # type: ignore[attr-defined,union-attr]


class CountingEmbedder:
    """Delegates to a real embedder and counts the passages it embeds."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.model_name = inner.model_name
        self.dimension = inner.dimension
        self.max_tokens = inner.max_tokens
        self.embedded: list[str] = []

    @property
    def tokenizer(self) -> Any:
        return self._inner.tokenizer

    def embed_documents(self, texts: Any) -> list[list[float]]:
        self.embedded.extend(texts)
        return self._inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._inner.embed_query(text)


FAILING_MARKER = "embedder-outage-marker"


class FailingEmbedder(CountingEmbedder):
    """A real embedder that raises (as an unreachable model server would) for passages containing FAILING_MARKER."""

    def embed_documents(self, texts: Any) -> list[list[float]]:
        if any(FAILING_MARKER in text for text in texts):
            raise RuntimeError("embedding backend unavailable")
        return super().embed_documents(texts)


def long_text(marker: str, paragraphs: int) -> str:
    """A multi-chunk text whose every sentence carries ``marker`` (to tell versions apart in results)."""
    return "\n\n".join(
        " ".join(f"{marker} paragraph {p} sentence {s} about river ecology and fish." for s in range(12))
        for p in range(paragraphs)
    )


def llm_settings(tmp_path: Path, base_url: str, api_key: str, **overrides: Any) -> Settings:
    """make_settings for an app answering with the OpenAI-compatible test provider at ``base_url``: no retries,
    a 10 s timeout (``overrides`` win)."""
    values: dict[str, Any] = {
        "llm_base_url": base_url,
        "llm_model": "test-model",
        "llm_api_key": api_key,
        "llm_max_retries": 0,
        "llm_timeout_seconds": 10.0,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)
