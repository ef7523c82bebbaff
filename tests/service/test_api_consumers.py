"""What an API consumer meets: /docs that works offline (assets served by the service, rendered by a real
browser with the network cut), the Bearer scheme declared for "Authorize", request examples that succeed, and
RateLimit-* / X-RateLimit-* headers on every /v1 response, 429s included."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.app.api.routes.docs import ASSETS, STATIC_URL
from tests.service.prod_support import API_KEYS, KEY_A, MakeClient, bearer
from tests.support.processes import api_process

pytest_plugins = ["tests.service.prod_fixtures"]


def test_docs_page_references_only_assets_the_service_serves(make_client: MakeClient) -> None:
    with make_client(environment="development") as client:
        page = client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sorted(urls) == sorted(f"{STATIC_URL}/{name}" for name in ASSETS)
        assert "http" not in page.text.replace(
            "http-equiv", ""
        )  # no absolute URL anywhere, inline script too
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 500, url
        assert (
            client.get(f"{STATIC_URL}/swagger-ui-bundle.js")
            .headers["content-type"]
            .startswith(("application/javascript", "text/javascript"))
        )


def test_swagger_ui_renders_in_a_browser_with_no_network(tmp_path: Path) -> None:
    """Headless Chromium loads /docs from a real server process while every non-loopback host fails to resolve:
    the operations only appear if the bundle, the CSS and the OpenAPI document all came from the service."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: .ci/ensure-servers installs it (apt-get install chromium)"
    with api_process(
        tmp_path, api_keys=API_KEYS, environment="development", rate_limit_enabled="false"
    ) as url:
        shot = tmp_path / "docs.png"
        common = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            # The network is cut for everything but the service: a CDN asset would fail to load.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
        ]
        dom = subprocess.run(
            [*common, "--dump-dom", f"{url}/docs"], capture_output=True, text=True, timeout=120
        ).stdout
        subprocess.run(
            [*common, f"--screenshot={shot}", "--window-size=1280,1600", f"{url}/docs"],
            capture_output=True,
            timeout=120,
        )
    # Rendered by Swagger UI's JavaScript, from /openapi.json: an operation block per route and the button.
    assert "opblock" in dom
    assert "/v1/search" in dom
    assert "/v1/documents:bulk" in dom
    assert "btn authorize" in dom
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_openapi_declares_the_bearer_scheme_on_every_v1_operation(make_client: MakeClient) -> None:
    with make_client() as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "API key",
        "description": "An API key from API_KEYS / API_KEYS_FILE, sent as `Authorization: Bearer <key>`.",
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            declared = operation.get("security")
            if path.startswith("/v1/admin/"):
                assert declared == [{"admin": []}], (method, path)
            elif path.startswith("/v1/"):
                assert declared == [{"bearer": []}], (method, path)
            else:
                assert declared is None, (method, path)


def test_the_open_api_declares_no_scheme(make_client: MakeClient) -> None:
    with make_client(auth_disabled=True, api_keys="") as client:
        schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})


def _examples(operation: dict[str, Any]) -> list[tuple[str, Any]]:
    media = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    found = [(name, example["value"]) for name, example in media.get("examples", {}).items()]
    return found + [("schema", example) for example in media.get("schema", {}).get("examples", [])]


def test_every_request_example_succeeds(make_client: MakeClient) -> None:
    """Each JSON body example in the OpenAPI document, sent as Swagger UI's "Try it out" would send it (with
    its path parameters' examples and a key), is accepted; writes run before reads."""
    with make_client() as client:
        schema = client.get("/openapi.json").json()
        calls = []
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                params = {
                    p["name"]: next(iter(p.get("examples", {}).values()), {}).get("value")
                    for p in operation.get("parameters", [])
                }
                url = re.sub(r"\{(\w+)\}", lambda m, params=params: str(params[m.group(1)]), path)
                calls += [(method, url, name, body) for name, body in _examples(operation)]
        assert {(method, url) for method, url, _, _ in calls} == {
            ("put", "/v1/documents/leave-policy"),
            ("post", "/v1/documents:bulk"),
            ("post", "/v1/search"),
        }
        calls.sort(key=lambda call: call[2] != "put" and call[1] != "/v1/documents:bulk")
        for method, url, name, body in calls:
            response = client.request(method.upper(), url, json=body, headers=bearer(KEY_A))
            assert response.status_code in (200, 201), (url, name, response.text)
        hits = client.post("/v1/search", json={"query": "paid leave days"}, headers=bearer(KEY_A)).json()
        assert hits["results"][0]["document_id"] == "leave-policy"


RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "X-RateLimit-Limit")


def _quota(response: Any) -> tuple[int, int, int, int]:
    h = response.headers
    assert h["X-RateLimit-Limit"] == h["RateLimit-Limit"]
    assert h["X-RateLimit-Remaining"] == h["RateLimit-Remaining"]
    reset_in, reset_at = int(h["RateLimit-Reset"]), int(h["X-RateLimit-Reset"])
    assert 0 <= reset_in <= 60
    assert abs(reset_at - (time.time() + reset_in)) <= 2
    return int(h["RateLimit-Limit"]), int(h["RateLimit-Remaining"]), reset_in, reset_at


def test_rate_limit_headers_on_every_v1_response_including_errors_and_429(make_client: MakeClient) -> None:
    key = f"k-{uuid.uuid4().hex}"
    with make_client(
        api_keys=f"{key}:t",
        rate_limit_enabled=True,
        rate_limit_search="4/minute",
        rate_limit_ingest="10/minute",
    ) as client:
        h = bearer(key)
        ok = client.post("/v1/search", json={"query": "x"}, headers=h)
        missing = client.get("/v1/documents/nope", headers=h)
        invalid = client.post("/v1/search", json={"query": ""}, headers=h)
        last = client.get("/v1/jobs/nope", headers=h)
        limited = client.post("/v1/search", json={"query": "x"}, headers=h)
        assert [r.status_code for r in (ok, missing, invalid, last, limited)] == [200, 404, 422, 404, 429]
        assert [_quota(r)[:2] for r in (ok, missing, invalid, last, limited)] == [
            (4, 3),
            (4, 2),
            (4, 1),
            (4, 0),
            (4, 0),
        ]
        assert int(limited.headers["Retry-After"]) >= _quota(limited)[2]
        # The ingest budget is separate and reported as such.
        put = client.put("/v1/documents/d", json={"text": "hello"}, headers=h)
        assert put.status_code == 201
        assert _quota(put)[:2] == (10, 9)
        # Operational routes and unauthenticated requests have no budget to report.
        assert not any(name in client.get("/healthz").headers for name in RATE_HEADERS)
        anonymous = client.get("/v1/documents")
        assert anonymous.status_code == 401
        assert "RateLimit-Limit" not in anonymous.headers


def test_rate_limit_headers_report_the_tightest_of_several_limits(make_client: MakeClient) -> None:
    key = f"k-{uuid.uuid4().hex}"
    with make_client(
        api_keys=f"{key}:t", rate_limit_enabled=True, rate_limit_search="3/minute;100/hour"
    ) as c:
        responses = [c.get("/v1/documents", headers=bearer(key)) for _ in range(2)]
    assert [_quota(r)[:2] for r in responses] == [(3, 2), (3, 1)]


def test_cors_exposes_the_rate_limit_headers(make_client: MakeClient) -> None:
    with make_client(cors_origins="https://app.example") as client:
        response = client.get("/healthz", headers={"Origin": "https://app.example"})
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"ratelimit-remaining", "x-ratelimit-reset", "retry-after"} <= exposed


def test_no_headers_when_limits_are_off(client: TestClient) -> None:
    response = client.get("/v1/documents", headers=bearer(KEY_A))
    assert response.status_code == 200
    assert "RateLimit-Limit" not in response.headers
