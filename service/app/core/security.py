"""API-key authentication: `Authorization: Bearer <key>` -> tenant.

Keys come from API_KEYS and/or the file at API_KEYS_FILE (a mounted Kubernetes Secret). The file is re-read
whenever its modification time, size or inode changes, so a rotated Secret takes effect without a restart
(kubelet swaps the mounted file atomically through a symlink, which changes the inode).

Comparison is constant-time: the presented key is checked against every configured key with
`hmac.compare_digest` on SHA-256 digests (equal lengths), without stopping at the first match, so the
response time says nothing about which key, or how much of a key, matched.

FastAPI dependencies built on it: `get_tenant` (behind `TenantDep`, 401 unless AUTH_DISABLED) and
`rate_limit(budget)`, which every /v1 router declares so every route authenticates, then spends (before its
body is read: service.app.api.routing). `declare_bearer_scheme`, which main.py adds to the /v1 routers unless
AUTH_DISABLED, declares the `bearer` security scheme in the OpenAPI document through FastAPI's `HTTPBearer`,
so Swagger UI's "Authorize" button sends `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.app.core.config import Settings, SettingsError
from service.app.core.errors import BadRequest, RateLimited, Unauthorized
from service.app.core.ratelimit import Budget

logger = logging.getLogger(__name__)

BEARER_CHALLENGE = 'Bearer realm="rag"'

# auto_error=False: the 401s (with their RFC 6750 challenge) are ours. It declares the scheme in the OpenAPI
# document; authenticate_request parses the same header, as it is also reached through TenantDep alone.
bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="API key",
    description="An API key from API_KEYS / API_KEYS_FILE, sent as `Authorization: Bearer <key>`.",
    auto_error=False,
)


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

    def _load(self, *, keep_if_empty: bool = False) -> None:
        stamp = self._stamp()
        keys = self._settings.load_api_keys()
        if keep_if_empty and not keys and self._digests:
            # An empty file is what a half-written Secret or a truncating write (`> file`) looks like mid-way: it
            # parses, as "no keys", and would turn every tenant away. Keep the last good keys, loudly.
            self._file_stamp = stamp
            raise SettingsError(f"API_KEYS_FILE {self._settings.api_keys_file} now holds no keys")
        self._digests = [
            (hashlib.sha256(key.encode("utf-8")).digest(), tenant, key_id(key))
            for key, tenant in keys.items()
        ]
        self._file_stamp = stamp

    def _refresh(self) -> None:
        if self._settings.api_keys_file is None or self._stamp() == self._file_stamp:
            return
        with self._lock:
            if self._stamp() == self._file_stamp:
                return
            try:
                self._load(keep_if_empty=True)
                logger.info("API keys reloaded", extra={"keys": len(self._digests)})
            except SettingsError as exc:
                # A half-written or broken Secret must not lock everyone out: keep the last good keys. One line
                # naming the file and what is wrong with it (the error is the operator's, not a bug's traceback).
                logger.error("%s; keeping the previous keys", exc)
                self._file_stamp = self._stamp()

    @property
    def key_count(self) -> int:
        self._refresh()
        return len(self._digests)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal for `presented`, or None; examines every key whatever the outcome."""
        return self.identify(presented)[1]

    def identify(self, presented: str) -> tuple[str, Principal | None]:
        """(`key_id(presented)`, its principal or None) from one hash of the key: the access log names a refused
        key too. Examines every key whatever the outcome."""
        self._refresh()
        hashed = hashlib.sha256(presented.encode("utf-8"))
        digest = hashed.digest()
        found: Principal | None = None
        for candidate, tenant, kid in self._digests:
            # Bitwise & (not `and`) so compare_digest runs for every key: no early exit.
            if hmac.compare_digest(candidate, digest) & (found is None):
                found = Principal(tenant=tenant, key_id=kid)
        return hashed.hexdigest()[:12], found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class InvalidApiKey(Unauthorized):
    """401 with the RFC 6750 challenge, so clients know to send `Authorization: Bearer <key>`."""

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": f'{BEARER_CHALLENGE}, error="invalid_token"'}


class MissingApiKey(Unauthorized):
    """401 for a request without (bearer) credentials: the bare challenge, as RFC 6750 asks."""

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": BEARER_CHALLENGE}


def authenticate_request(request: Request) -> Principal:
    """The caller's principal (cached on request.state); raises 401 unless auth is disabled."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    services = request.app.state.services
    settings: Settings = services.settings
    if settings.auth_disabled:
        client = request.client.host if request.client else "unknown"
        principal = Principal(tenant=settings.default_tenant, key_id=f"client:{client}")
    else:
        presented = request.headers.getlist("authorization")
        if len(presented) > 1:
            # Proxies and frameworks disagree on which of two wins; guessing could authenticate the wrong key.
            raise BadRequest("send exactly one Authorization header")
        token = bearer_token(presented[0] if presented else None)
        if token is None:
            raise MissingApiKey("missing API key: send `Authorization: Bearer <key>`")
        # The access log names the key by its id, a refused one too: during a rotation on-call sees which
        # clients still send the old key, before and after it is removed (docs/runbooks.md).
        request.state.key_id, found = services.auth.identify(token)
        if found is None:
            raise InvalidApiKey("invalid API key")
        principal = found
    request.state.principal = principal
    request.state.tenant = principal.tenant  # read by the access log
    return principal


def get_tenant(request: Request) -> str:
    """FastAPI dependency: the tenant of the caller's API key (DEFAULT_TENANT when AUTH_DISABLED=true)."""
    return authenticate_request(request).tenant


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CHARGED = "rate_limit_charged"  # request.state key: this request's budget is spent (once per request)


async def charge(request: Request, write_budget: Budget) -> Principal:
    """Authenticate the caller (401) and spend one request of its budget (429): writes to `write_budget`, reads
    to the search budget. Once per request, however often it is called (a route that authenticates before it
    reads its body also runs its router's dependency afterwards: the second call spends nothing)."""
    principal = authenticate_request(request)
    state = request.scope.setdefault("state", {})
    if state.get(_CHARGED):
        return principal
    state[_CHARGED] = True
    budget: Budget = write_budget if request.method in WRITE_METHODS else "search"
    try:
        quota = await request.app.state.services.limiter.hit(budget, principal.key_id)
    except RateLimited as exc:
        state["rate_limit_quota"] = exc.quota
        raise
    # The middleware turns it into RateLimit-* headers on whatever response follows (200, 404, 422...).
    state["rate_limit_quota"] = quota
    return principal


def rate_limit(write_budget: Budget) -> Callable[[Request], Awaitable[None]]:
    """A router dependency charging the caller's key (`charge`): writes to `write_budget`, reads to the search
    budget. The /v1 routers declare it themselves, so each of their routes lists it among its own dependencies.

    It carries ``before_body``: the check `service.app.api.routing.AuthenticatedRoute` runs before the request
    body is read or parsed (FastAPI parses a JSON body before it resolves any dependency: malformed JSON from a
    caller without a key was a 422, not a 401, and spent no budget).
    """

    async def spend(request: Request) -> None:
        await charge(request, write_budget)

    spend.before_body = spend  # type: ignore[attr-defined]
    return spend


async def declare_bearer_scheme(
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> None:
    """Declares the `bearer` scheme on the /v1 operations in the OpenAPI document (`charge` does the checking);
    main includes the /v1 routers with it unless AUTH_DISABLED=true: the open API must not claim it needs a key."""
