"""API-key authentication: key -> tenant resolution, constant-time comparison, key-file rotation, the HTTP
contract (401 + WWW-Authenticate, every /v1 route protected) and production refusing AUTH_DISABLED."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app.core import security
from service.app.core.config import Settings
from service.app.core.security import ApiKeyAuthenticator, bearer_token, key_id
from tests.service.prod_support import KEY_A, MakeClient, bearer

pytest_plugins = ["tests.service.prod_fixtures"]  # fixtures: make_client, client, headers_a, headers_b

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_keys(path: Path, content: str, mtime_ns: int) -> None:
    # An explicit mtime makes "the file changed" independent of the filesystem's timestamp granularity.
    path.write_text(content, encoding="utf-8")
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_keys_from_settings_map_to_tenants() -> None:
    auth = ApiKeyAuthenticator(Settings(api_keys="alpha-key:tenant-a,beta-key:tenant-b"))
    principal = auth.authenticate("beta-key")
    assert principal is not None
    assert principal.tenant == "tenant-b"
    assert principal.key_id == key_id("beta-key")
    assert "beta" not in principal.key_id
    assert auth.authenticate("gamma-key") is None
    assert auth.authenticate("beta-key ") is None
    assert auth.authenticate("") is None


def test_json_keys_are_accepted() -> None:
    auth = ApiKeyAuthenticator(Settings(api_keys='{"k1": "t1", "k2": "t2"}'))
    assert auth.authenticate("k1").tenant == "t1"
    assert auth.key_count == 2


def test_every_key_is_compared_even_when_the_first_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = ApiKeyAuthenticator(Settings(api_keys="first:t1,second:t2,third:t3"))
    calls: list[tuple[bytes, bytes]] = []
    real = security.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    assert auth.authenticate("first").tenant == "t1"
    assert len(calls) == 3
    calls.clear()
    assert auth.authenticate("nope") is None
    assert len(calls) == 3
    # Digests, not raw keys, are compared: equal lengths whatever the key length.
    assert {len(a) for a, _ in calls} == {32}


def test_key_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    key_file = tmp_path / "api-keys"
    write_keys(key_file, "old-key:tenant-a\n", 1_000_000_000_000_000_000)
    auth = ApiKeyAuthenticator(Settings(api_keys="env-key:tenant-env", api_keys_file=key_file))
    assert auth.authenticate("old-key").tenant == "tenant-a"
    assert auth.authenticate("env-key").tenant == "tenant-env"

    write_keys(key_file, '{"new-key": "tenant-a"}', 1_000_000_001_000_000_000)  # a rotated Secret
    assert auth.authenticate("old-key") is None
    assert auth.authenticate("new-key").tenant == "tenant-a"
    assert auth.authenticate("env-key").tenant == "tenant-env"


def test_a_broken_key_file_keeps_the_last_good_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "api-keys"
    write_keys(key_file, "good-key:tenant-a", 1_000_000_000_000_000_000)
    auth = ApiKeyAuthenticator(Settings(api_keys_file=key_file))
    write_keys(key_file, "this is not a key list", 1_000_000_002_000_000_000)
    with caplog.at_level(logging.ERROR):
        assert auth.authenticate("good-key").tenant == "tenant-a"
    # One line naming the file (not API_KEYS, which is fine), without a traceback (EYES9 L7).
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == (
        f"API_KEYS_FILE {key_file} entries must look like key:tenant; keeping the previous keys"
    )
    assert record.exc_info is None
    caplog.clear()
    write_keys(key_file, '{"half-written": "tenant-a"', 1_000_000_002_500_000_000)
    with caplog.at_level(logging.ERROR):
        assert auth.authenticate("good-key").tenant == "tenant-a"
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage().startswith(f"API_KEYS_FILE {key_file} is not valid JSON: ")
    assert "API_KEYS is" not in record.getMessage()
    assert record.exc_info is None


def test_an_emptied_key_file_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`: > keys` or a Secret caught mid-write parses as "no keys": that must not turn every tenant away."""
    key_file = tmp_path / "api-keys"
    write_keys(key_file, "good-key:tenant-a", 1_000_000_000_000_000_000)
    auth = ApiKeyAuthenticator(Settings(api_keys_file=key_file))
    write_keys(key_file, "", 1_000_000_003_000_000_000)
    with caplog.at_level(logging.ERROR):
        assert auth.authenticate("good-key").tenant == "tenant-a"
    assert "holds no keys" in caplog.text
    # The next real rotation is taken as usual.
    write_keys(key_file, "next-key:tenant-a", 1_000_000_004_000_000_000)
    assert auth.authenticate("good-key") is None
    assert auth.authenticate("next-key").tenant == "tenant-a"


STRONG_A = "a" * 32
STRONG_B = "b" * 64


def test_a_live_key_file_edit_is_held_to_the_production_rules(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """EYES10: under ENVIRONMENT=production a live edit adding a 4-character key was served ("API keys reloaded",
    then 200), and the next restart refused to start on it. The reload applies the start-up's rules now: the file
    is refused whole, in one line naming it and the rule, and the previous keys stay."""
    key_file = tmp_path / "api-keys"
    write_keys(key_file, f'{{"{STRONG_A}": "acme"}}', 1_000_000_000_000_000_000)
    settings = Settings(_env_file=None, environment="production", api_keys_file=key_file)
    auth = ApiKeyAuthenticator(settings)
    write_keys(
        key_file,
        f'{{"{STRONG_A}": "acme", "{STRONG_B}": "globex", "short": "acme"}}',
        1_000_000_001_000_000_000,
    )
    with caplog.at_level(logging.INFO):
        assert auth.authenticate("short") is None
        assert auth.authenticate(STRONG_B) is None  # the whole edit is refused, not just its bad line
        assert auth.authenticate(STRONG_A).tenant == "acme"
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == (
        f"API_KEYS_FILE {key_file}: 1 key(s) shorter than 32 characters are refused when ENVIRONMENT=production "
        "(generate keys with `openssl rand -hex 32`); keeping the previous keys"
    )
    assert "API keys reloaded" not in caplog.text
    # The corrected file is taken, and a restart would accept what the reload accepted.
    write_keys(key_file, f'{{"{STRONG_A}": "acme", "{STRONG_B}": "globex"}}', 1_000_000_002_000_000_000)
    assert auth.authenticate(STRONG_B).tenant == "globex"
    assert Settings(_env_file=None, environment="production", api_keys_file=key_file).load_api_keys() == {
        STRONG_A: "acme",
        STRONG_B: "globex",
    }
    # Outside production short keys stay allowed on reload, as at start-up.
    staging = ApiKeyAuthenticator(Settings(_env_file=None, environment="staging", api_keys_file=key_file))
    write_keys(key_file, "short:acme", 1_000_000_003_000_000_000)
    assert staging.authenticate("short").tenant == "acme"


def test_a_short_key_added_live_is_refused_over_http_in_production(
    tmp_path: Path, make_client: MakeClient
) -> None:
    """EYES10's reproduction through the app: `{..., "short": "acme"}` written into API_KEYS_FILE under
    ENVIRONMENT=production was then a 200 for `Bearer short`."""
    key_file = tmp_path / "api-keys"
    write_keys(key_file, json.dumps({KEY_A: "acme"}), 1_000_000_000_000_000_000)
    with make_client(environment="production", api_keys={}, api_keys_file=key_file) as client:
        assert client.get("/v1/documents", headers=bearer(KEY_A)).status_code == 200
        write_keys(key_file, json.dumps({KEY_A: "acme", "short": "acme"}), 1_000_000_001_000_000_000)
        assert client.get("/v1/documents", headers=bearer("short")).status_code == 401
        assert client.get("/v1/documents", headers=bearer(KEY_A)).status_code == 200


def test_the_production_key_error_names_where_the_short_key_came_from(tmp_path: Path) -> None:
    """EYES10: a short key in API_KEYS_FILE was reported as "API_KEYS: ..."."""
    key_file = tmp_path / "api-keys"
    key_file.write_text("short:acme\n")
    with pytest.raises(ValueError, match=rf"API_KEYS_FILE {key_file}: 1 key\(s\) shorter than 32"):
        Settings(
            _env_file=None, environment="production", api_keys=f"{STRONG_A}:acme", api_keys_file=key_file
        )
    key_file.write_text(f"{STRONG_B}:acme\n")
    with pytest.raises(ValueError, match=r"API_KEYS: 1 key\(s\) shorter than 32"):
        Settings(_env_file=None, environment="production", api_keys="short:acme", api_keys_file=key_file)


def test_an_empty_api_keys_file_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """EYES10: `API_KEYS_FILE=` (to override .env's value from the shell) was read as the path "." and the start
    refused with "Is a directory"."""
    monkeypatch.setenv("API_KEYS_FILE", "")
    monkeypatch.setenv("API_KEYS", "k:t")
    settings = Settings(_env_file=None)
    assert settings.api_keys_file is None
    assert settings.load_api_keys() == {"k": "t"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_parsing(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


def test_production_refuses_auth_disabled_at_start_up(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ENVIRONMENT": "production",
        "AUTH_DISABLED": "true",
        "API_KEYS": "k:t",
        "DATA_DIR": str(tmp_path),
    }
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "service: error: AUTH_DISABLED=true is refused when ENVIRONMENT=production"


def test_the_worker_refuses_auth_disabled_in_production_with_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ENVIRONMENT": "production",
        "AUTH_DISABLED": "true",
        "API_KEYS": "k:t",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PYTHONPATH": str(REPO_ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "service.worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("AUTH_DISABLED=true is refused when ENVIRONMENT=production")
    assert "Traceback" not in proc.stderr


def test_production_without_any_key_is_refused() -> None:
    with pytest.raises(ValueError, match="ENVIRONMENT=production needs API_KEYS or API_KEYS_FILE"):
        Settings(environment="production")


# --- over HTTP -------------------------------------------------------------------------------------------


def test_missing_key_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    response = client.get("/v1/documents")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthorized"
    assert "Bearer" in response.json()["error"]["message"]


def test_invalid_key_is_401_with_invalid_token(client: TestClient) -> None:
    response = client.get("/v1/documents", headers={"Authorization": "Bearer not-a-key"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.json()["error"]["message"] == "invalid API key"
    wrong_scheme = client.get("/v1/documents", headers={"Authorization": "Basic a2V5OnB3"})
    assert wrong_scheme.status_code == 401


def test_valid_key_is_accepted(client: TestClient, headers_a: dict[str, str]) -> None:
    response = client.get("/v1/documents", headers=headers_a)
    assert response.status_code == 200


def test_every_v1_route_requires_a_key(client: TestClient) -> None:
    v1_routes = [
        (method.upper(), path)
        for path, operations in client.app.openapi()["paths"].items()
        if path.startswith("/v1")
        for method in operations
    ]
    assert len(v1_routes) >= 5  # documents (put/post/get/list/delete), search, jobs
    for method, path in v1_routes:
        concrete = path.replace("{document_id}", "doc").replace("{job_id}", "job")
        response = client.request(method, concrete)
        assert response.status_code == 401, (method, path, response.status_code)


def test_operational_routes_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_auth_disabled_uses_the_default_tenant(make_client) -> None:
    with make_client(auth_disabled=True, default_tenant="open") as open_client:
        created = open_client.put("/v1/documents/d1", json={"text": "no key needed here"})
        assert created.status_code in (200, 201), created.text
        listed = open_client.get("/v1/documents").json()
        assert [d["document_id"] for d in listed["documents"]] == ["d1"]


def test_auth_disabled_beside_configured_keys_is_logged_at_start_up(make_client, caplog) -> None:
    """Keys in .env with AUTH_DISABLED=true from the environment (as `make serve` set it) served everyone
    unauthenticated, and nothing said so."""
    with (
        caplog.at_level("WARNING", logger="service.app.production"),
        make_client(auth_disabled=True, default_tenant="open") as open_client,
    ):
        assert open_client.get("/v1/documents").status_code == 200  # no key needed: auth is off
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.app.production"]
    assert any(
        "authentication is OFF (AUTH_DISABLED=true): every request acts as tenant 'open'" in m
        and "API_KEYS set but ignored" in m
        for m in warnings
    ), warnings
