"""Property-based API fuzzing with schemathesis against the app's own OpenAPI schema, in-process over ASGI.

Every operation gets schema-valid and schema-violating requests (examples, coverage and fuzzing phases) from a
fixed seed, so a run is reproducible. The app is the real one: the real embedder, local Qdrant and SQLite in
tmp_path. Whatever comes in, the answer is never a 5xx, conforms to the schema (status documented, body shape),
and an error is always ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.app.main import create_app
from tests.service.support import make_settings

API_KEY = "fuzz-key-0123456789abcdef"
SEED = 20240611
# Per operation and phase; with the coverage phase's own deterministic cases both variants together take about
# 25 s on two shared cores (the embedder dominates: every accepted PUT/POST/search embeds for real).
MAX_EXAMPLES = 50


def _config() -> schemathesis.Config:
    config = schemathesis.Config(seed=SEED)
    project = config.projects.default
    project.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        deterministic=True,
        database="none",
    )
    project.phases.update(phases=["examples", "coverage", "fuzzing"])
    return config


# The app fixture is built once per operation and shared by its examples, on purpose: state (documents created
# by earlier examples) carrying over is part of what is fuzzed.
ONE_APP_PER_OPERATION = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _app(tmp_path: Path, embedder: Any, **overrides: Any) -> Any:
    return create_app(make_settings(tmp_path, max_document_bytes=200_000, **overrides), embedder=embedder)


# The schema is read from an app that is never started (building the OpenAPI document needs no backends); the
# requests go to a fresh, started app per test. (`schemathesis.pytest.from_fixture` would be the lazy way, but
# 4.32 reads a private pytest attribute that pytest 9 no longer has.)
schema = schemathesis.openapi.from_dict(
    create_app(make_settings(Path(tempfile.gettempdir()) / "rag-fuzz-schema-only")).openapi(),
    config=_config(),
)


@pytest.fixture
def open_app(tmp_path: Path, embedder: Any) -> Any:
    """An app with AUTH_DISABLED=true (schemathesis runs its lifespan and ends it after the test)."""
    return _app(tmp_path, embedder)


@pytest.fixture
def keyed_app(tmp_path: Path, embedder: Any) -> Any:
    """An app requiring an API key (the fuzzer sends it on every request)."""
    return _app(tmp_path, embedder, auth_disabled=False, api_keys={API_KEY: "fuzz-tenant"})


@schemathesis.check
def error_body_shape(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx/5xx carries {"error": {"code": str, "message": str}}."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    error = body.get("error")
    assert isinstance(error, dict), f"no error object: {body!r}"
    assert isinstance(error.get("code"), str), body
    assert error["code"], body
    assert isinstance(error.get("message"), str), body
    assert error["message"], body
    return True


def _run(case: schemathesis.Case, app: Any, headers: dict[str, str] | None = None) -> None:
    response = case.call_and_validate(
        app=app,
        headers=headers,
        additional_checks=[error_body_shape],
        # A schema-valid request may still be a 422 here: an opaque cursor we never issued, or text that
        # is empty once HTML is stripped, cannot be described in JSON Schema.
        excluded_checks=[positive_data_acceptance],
    )
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}"


@schema.parametrize()
@ONE_APP_PER_OPERATION
def test_no_input_makes_the_open_api_fail(case: schemathesis.Case, open_app: Any) -> None:
    """AUTH_DISABLED=true: any generated request gets a documented, non-5xx answer."""
    _run(case, open_app)


@schema.parametrize()
@ONE_APP_PER_OPERATION
def test_no_input_makes_the_keyed_api_fail(case: schemathesis.Case, keyed_app: Any) -> None:
    """With an API key required and sent: the same guarantees through the auth and rate-limit dependencies."""
    _run(case, keyed_app, headers={"Authorization": f"Bearer {API_KEY}"})
