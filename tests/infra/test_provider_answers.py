"""What the offline mocks answer for a managed service, held to what its provider returns (REVIEW11).

The mocks stand in for the providers (infra/offline.py `PlatformMocks`); an answer a provider never gives, or one
that leaves out what it does give, lets a test pass that a real `up` would not (REVIEW10 F0: a read answered the way
the program assumed). Each test here pins one answer to the provider's behaviour and checks the program uses it.
"""

from __future__ import annotations

import re

from tests.infra.conftest import run

MEMORYSTORE = "gcp:redis/instance:Instance"


def test_memorystore_with_auth_puts_its_auth_string_in_the_redis_url() -> None:
    """terraform-provider-google's redis instance returns `auth_string` only with `auth_enabled` (the program turns
    AUTH on): the service's REDIS_URL must carry it, or every connection is refused with NOAUTH. The mock answered
    no auth string, so a REDIS_URL without the password passed offline."""
    result = run("prod", "gke")  # redis.mode managed: Memorystore on GKE
    [instance] = result.of_type(MEMORYSTORE)
    assert instance.inputs["authEnabled"] is True
    [secret] = [
        r
        for r in result.of_type("kubernetes:core/v1:Secret")
        if "REDIS_URL" in (r.inputs.get("stringData") or {})
    ]
    url = secret.inputs["stringData"]["REDIS_URL"]
    assert re.fullmatch(r"redis://:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}@10\.30\.0\.4:6379/0", url), url
    assert "stringData" in secret.secret_keys
