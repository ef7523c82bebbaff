"""API-key authentication: `Authorization: Bearer <key>` -> tenant.

Keys come from API_KEYS and/or the file at API_KEYS_FILE (a mounted Kubernetes Secret). The file is re-read
whenever its modification time, size or inode changes, so a rotated Secret takes effect without a restart
(kubelet swaps the mounted file atomically through a symlink, which changes the inode).

Comparison is constant-time: the presented key is checked against every configured key with
`hmac.compare_digest` on SHA-256 digests (equal lengths), without stopping at the first match, so the
response time says nothing about which key, or how much of a key, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from dataclasses import dataclass

from service.app.core.config import Settings, SettingsError

logger = logging.getLogger(__name__)

BEARER_CHALLENGE = 'Bearer realm="rag"'


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant their key maps to and a non-secret key id (for rate limits and logs)."""

    tenant: str
    key_id: str  # first 12 hex chars of sha256(key); never the key itself


def key_id(key: str) -> str:
    """A short, stable, non-reversible identifier of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class ApiKeyAuthenticator:
    """Resolves bearer keys to tenants; thread-safe; reloads API_KEYS_FILE when the file changes."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._file_stamp: tuple[int, int, int] | None = None
        self._digests: list[tuple[bytes, str, str]] = []  # (sha256(key), tenant, key_id)
        self._load()

    def _stamp(self) -> tuple[int, int, int] | None:
        path = self._settings.api_keys_file
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return (-1, -1, -1)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> None:
        keys = self._settings.load_api_keys()
        self._digests = [
            (hashlib.sha256(key.encode("utf-8")).digest(), tenant, key_id(key))
            for key, tenant in keys.items()
        ]
        self._file_stamp = self._stamp()

    def _refresh(self) -> None:
        if self._settings.api_keys_file is None or self._stamp() == self._file_stamp:
            return
        with self._lock:
            if self._stamp() == self._file_stamp:
                return
            try:
                self._load()
                logger.info("API keys reloaded", extra={"keys": len(self._digests)})
            except SettingsError:
                # A half-written or broken Secret must not lock everyone out: keep the last good keys.
                logger.exception("API_KEYS_FILE could not be reloaded; keeping the previous keys")
                self._file_stamp = self._stamp()

    @property
    def key_count(self) -> int:
        self._refresh()
        return len(self._digests)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal for `presented`, or None; examines every key whatever the outcome."""
        self._refresh()
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        found: Principal | None = None
        for candidate, tenant, kid in self._digests:
            # Bitwise & (not `and`) so compare_digest runs for every key: no early exit.
            if hmac.compare_digest(candidate, digest) & (found is None):
                found = Principal(tenant=tenant, key_id=kid)
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
