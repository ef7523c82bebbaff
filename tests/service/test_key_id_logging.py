"""Every access line names the API key the request used by a non-secret id (the first 12 hex characters of its
SHA-256), never the key: during a rotation on-call sees which clients still send the old key, before its removal
(a 200) and after (a 401). docs/runbooks.md#rotate-a-tenants-or-the-admin-api-key."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.service.prod_support import KEY_A, KEY_B, MakeClient, bearer

pytest_plugins = ["tests.service.prod_fixtures"]

OLD_KEY = "key-old-00112233445566778899aabbccddeeff"


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def test_each_access_line_names_the_key_by_its_id_and_never_the_key(
    make_client: MakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    with make_client(log_json=True) as client:
        capsys.readouterr()
        calls = {
            "a-read": client.get(
                "/v1/documents/missing", headers={**bearer(KEY_A), "X-Request-ID": "a-read"}
            ),
            "a-search": client.post(  # served by FastSearch, outside the framework's routes
                "/v1/search", json={"query": "q"}, headers={**bearer(KEY_A), "X-Request-ID": "a-search"}
            ),
            "b-read": client.get("/v1/documents", headers={**bearer(KEY_B), "X-Request-ID": "b-read"}),
            "old": client.get("/v1/documents", headers={**bearer(OLD_KEY), "X-Request-ID": "old"}),
            "none": client.get("/v1/documents", headers={"X-Request-ID": "none"}),
        }
    assert [r.status_code for r in calls.values()] == [404, 200, 200, 401, 401]
    out = capsys.readouterr().out
    for key in (KEY_A, KEY_B, OLD_KEY):
        assert key not in out
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    access = {e["request_id"]: e for e in entries if e.get("logger") == "service.access"}
    assert access["a-read"]["key_id"] == fingerprint(KEY_A)
    assert access["a-search"]["key_id"] == fingerprint(KEY_A)
    assert access["b-read"]["key_id"] == fingerprint(KEY_B)
    assert access["old"]["key_id"] == fingerprint(OLD_KEY)  # a removed key still being sent shows up
    assert access["old"]["status"] == 401
    assert access["none"]["key_id"] is None


def test_the_documented_shell_command_computes_the_logged_id() -> None:
    """docs/runbooks.md tells on-call to compute a key's id with `printf %s "$KEY" | sha256sum | cut -c1-12`."""
    import subprocess

    done = subprocess.run(
        ["sh", "-c", 'printf %s "$KEY" | sha256sum | cut -c1-12'],
        env={"KEY": KEY_A, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == fingerprint(KEY_A)


def test_a_request_hashes_the_presented_key_once(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The access log's key id and the key check come from one SHA-256 of the presented key (note20: it was
    hashed twice per request), for an accepted key and a refused one alike."""
    from service.app.core import security

    real = hashlib.sha256
    hashed: list[bytes] = []

    def counting(data: bytes = b"", **kwargs: object) -> object:
        if data in (KEY_A.encode(), OLD_KEY.encode()):
            hashed.append(data)
        return real(data, **kwargs)  # type: ignore[arg-type]

    with make_client() as client:
        monkeypatch.setattr(security.hashlib, "sha256", counting)
        assert client.get("/v1/documents", headers=bearer(KEY_A)).status_code == 200
        assert hashed == [KEY_A.encode()]
        assert client.get("/v1/documents", headers=bearer(OLD_KEY)).status_code == 401
        assert hashed == [KEY_A.encode(), OLD_KEY.encode()]
